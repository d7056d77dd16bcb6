"""The ``main()`` every service module shares: settings, logging, tracing, run the node."""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from collections.abc import Callable

from colony.cluster.node import NodeRuntime, Workload
from colony.settings import ConfigError, Settings, load_settings
from colony.telemetry import setup_tracing


log = logging.getLogger("colony.service")

# Below this many descriptors a service says so at start: every client connection, account a
# mail store has open (its journal and index), and bus connection takes some.
FEW_DESCRIPTORS = 8192


def raise_descriptor_limit() -> tuple[int, int]:
    """Lift this process's soft limit on open descriptors to its hard limit, as nginx's
    ``worker_rlimit_nofile`` and Dovecot do: a shell's or systemd's default soft limit (1024)
    would stop a mail store at a few hundred open accounts and an edge at about a thousand
    connections, with EMFILE, although the system allows far more.  Returns (soft, hard) as
    they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):   # a container that forbids it: keep what we have
            pass
    return soft, hard


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
    soft, _ = raise_descriptor_limit()
    if soft != resource.RLIM_INFINITY and soft < FEW_DESCRIPTORS:
        log.warning("only %d open descriptors allowed (RLIMIT_NOFILE hard limit): raise it (ulimit -Hn, systemd "
                    "LimitNOFILE=, docker --ulimit nofile=) to serve many connections and accounts", soft)
    setup_tracing(settings, role)
    runtime = NodeRuntime(settings, make_workload(settings))
    try:
        asyncio.run(runtime.run())
    except KeyboardInterrupt:
        pass
