"""`python -m colony_sipfarm`: run one sipfarm instance (configuration: COLONY_* environment, see `colony settings`)."""

from colony.cluster.idle import ListenerlessWorkload
from colony.cluster.service_main import run_service


def main() -> None:
    run_service("sipfarm", lambda settings: ListenerlessWorkload("sipfarm"))


if __name__ == "__main__":
    main()
