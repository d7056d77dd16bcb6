"""The ``main()`` every service module shares: settings, logging, tracing, run the node."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import threading
from collections.abc import Callable

from colony.cluster.node import NodeRuntime, Workload
from colony.settings import CONFIG_ERROR_EXIT, ConfigError, Settings, load_settings
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


def check_files(role: str, settings: Settings) -> None:
    """Load every file the settings name that this role reads, with the loaders the service
    uses later: one that is missing, unreadable, empty or of the wrong kind is a
    ``ConfigError`` naming its key and the fix, before the process joins the bus, rather than
    a traceback from the middle of a workload's start (or, worse, a fallback).  The files a
    service's own module loads (the admin API's HTTPS pair, the edge's outbound CA bundle)
    are loaded first thing in its start; ``run_service`` stops on their errors the same way."""
    from colony.bus.connection import connect_options
    from colony.contracts.handoff import load_secret
    from colony.tlsfiles import configured, sni_context

    connect_options(settings.nats_nkey_seed_file, settings.nats_tls_ca_file)
    if role in ("edge", "mailstore", "admin-api") and settings.cluster_secret_file is not None:
        load_secret(settings.cluster_secret_file)
    if role == "edge" and settings.srs_secret_file is not None:
        load_secret(settings.srs_secret_file, "COLONY_SRS_SECRET_FILE", "every edge")
    if role in ("edge", "sipfarm"):
        files = configured(settings)
        if files is not None:
            sni_context(files.cert, files.key, settings.tls_sni_dir if role == "edge" else None)
    if role in ("admin-api", "projector"):
        _ = settings.sqlalchemy_url   # reads and checks database_url_file
    if role == "edge" and settings.dkim_key_dir is not None and not settings.dkim_key_dir.is_dir():
        # Keys may also come from the dkim_keys bucket, so a missing directory let mail go out
        # unsigned without a word; one named on purpose and not there is a mistake.
        raise ConfigError(f"COLONY_DKIM_KEY_DIR: {settings.dkim_key_dir} is not a directory: create it "
                          "(keys as <dir>/<domain>/<selector>.pem), or leave the key unset for "
                          "<data_dir>/dkim and the dkim_keys bucket")


def run_service(role: str, make_workload: Callable[[Settings], Workload]) -> None:
    try:
        settings = load_settings()
        check_files(role, settings)
    except ConfigError as exc:
        print(f"colony {role}: {exc}", file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT) from None
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
        asyncio.run(_serve(runtime, settings.stop_timeout + STOP_GRACE))
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:   # a file the workload loads as it starts (see check_files)
        print(f"colony {role}: {exc}", file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT) from None


# Seconds past ``stop_timeout`` a stopping process may take before it ends itself.
STOP_GRACE = 5.0


async def _serve(runtime: NodeRuntime, exit_after: float) -> None:
    watchdog = asyncio.ensure_future(_exit_if_stop_hangs(runtime, exit_after))
    try:
        await runtime.run()
    finally:
        watchdog.cancel()


async def _exit_if_stop_hangs(runtime: NodeRuntime, exit_after: float) -> None:
    """Once asked to stop, end the process ``exit_after`` seconds later if it has not ended.

    The stop is bounded by ``stop_timeout``, but a thread blocked on a hung disk or a task
    that swallows its cancellation would still keep the process, and so its listeners and
    open files, alive; with the supervisor gone (SIGKILL; PR_SET_PDEATHSIG sent the SIGTERM),
    nobody else would end it. A thread, so that a blocked event loop cannot hold it up.
    """
    await runtime.stopping.wait()
    timer = threading.Timer(exit_after, _exit_now, args=(runtime.node_id, exit_after))
    timer.daemon = True
    timer.start()


def _exit_now(node_id: str, after: float) -> None:
    log.error("%s: still running %.0f s after it was asked to stop; exiting now", node_id, after)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)
