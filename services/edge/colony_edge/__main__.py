"""`python -m colony_edge`: run one edge instance (configuration: COLONY_* environment, see `colony settings`)."""

from colony.cluster.idle import ListenerlessWorkload
from colony.cluster.service_main import run_service


def main() -> None:
    run_service("edge", lambda settings: ListenerlessWorkload("edge"))


if __name__ == "__main__":
    main()
