"""`python -m colony_controller`: run one controller instance (one is elected active)."""

from colony.cluster.service_main import run_service
from colony_controller.controller import Controller


def main() -> None:
    run_service("controller", lambda settings: Controller())


if __name__ == "__main__":
    main()
