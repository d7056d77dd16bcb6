"""`python -m colony_mailstore`: run one mailstore instance (configuration: COLONY_* environment, see `colony settings`)."""

from colony.cluster.service_main import run_service
from colony_mailstore.workload import MailstoreWorkload


def main() -> None:
    run_service("mailstore", MailstoreWorkload)


if __name__ == "__main__":
    main()
