"""`python -m colony_edge`: run one edge instance (configuration: COLONY_* environment, see `colony settings`)."""

from colony.cluster.service_main import run_service
from colony_edge.workload import EdgeWorkload


def main() -> None:
    run_service("edge", EdgeWorkload)


if __name__ == "__main__":
    main()
