"""The ``main()`` every service module shares: settings, logging, tracing, run the node."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

from colony.cluster.node import NodeRuntime, Workload
from colony.settings import ConfigError, Settings, load_settings
from colony.telemetry import setup_tracing


def run_service(role: str, make_workload: Callable[[Settings], Workload]) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"colony {role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s [{settings.node_id or role}] %(name)s: %(message)s",
    )
    logging.getLogger("nats").setLevel(logging.ERROR)  # reconnect noise; the bus logger says what matters
    setup_tracing(settings, role)
    runtime = NodeRuntime(settings, make_workload(settings))
    try:
        asyncio.run(runtime.run())
    except KeyboardInterrupt:
        pass
