"""`python -m colony_admin`: run one admin-api instance."""

from colony.cluster.service_main import run_service
from colony_admin.service import AdminApiWorkload


def main() -> None:
    run_service("admin-api", AdminApiWorkload)


if __name__ == "__main__":
    main()
