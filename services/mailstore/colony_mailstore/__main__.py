"""`python -m colony_mailstore`: run one mailstore instance (configuration: COLONY_* environment, see `colony settings`)."""

from colony.cluster.idle import ListenerlessWorkload
from colony.cluster.service_main import run_service


def main() -> None:
    run_service("mailstore", lambda settings: ListenerlessWorkload("mailstore"))


if __name__ == "__main__":
    main()
