"""`python -m colony_sipfarm`: run one SIP farm member (configuration: COLONY_* environment, see `colony settings`)."""

from colony.cluster.service_main import run_service

from colony_sipfarm.workload import SipWorkload


def main() -> None:
    run_service("sipfarm", SipWorkload)


if __name__ == "__main__":
    main()
