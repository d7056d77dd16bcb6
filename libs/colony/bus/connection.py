"""Connecting to NATS the same way everywhere: the process's own bus identity, TLS when the
URLs say so, reconnect forever (a restarted server is found again at the same URL), log
state changes."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from colony.bus.permissions import inbox_prefix, public_key_of
from colony.settings import ConfigError, Settings

log = logging.getLogger("colony.bus")

# The bus did not answer this time, and will once it has settled: the client is reconnecting,
# or a NATS server died and the stream asked has no leader yet ("no response from stream"
# while nobody serves its subjects, 503 "JetStream system temporarily unavailable" while its
# group elects one, or a time-out).  Seen for 4-10 s after a server of a 3-node cluster is
# killed, and on a fresh cluster whose servers are starved of CPU.  A loop that writes on a
# schedule tries again at its next turn; a step of a start, with ``while_unavailable``.
BUS_UNAVAILABLE: tuple[type[Exception], ...] = (
    NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)

# A 503 that is the bus's configuration, not its state: JetStream is not enabled for the
# account the identity belongs to (10039) or on the server (10076).  Trying again cannot help,
# and a wait until the deadline would end in a message about something else.
JETSTREAM_NOT_ENABLED = (10039, 10076)


def jetstream_not_enabled(exc: BaseException) -> bool:
    return isinstance(exc, ServiceUnavailableError) and exc.err_code in JETSTREAM_NOT_ENABLED


T = TypeVar("T")


async def while_unavailable(step: Callable[[], Awaitable[T]], what: str, deadline: float = 60.0,
                            also: tuple[type[Exception], ...] = (), pause: float = 0.5,
                            logger: logging.Logger = log) -> T:
    """``step()``, tried again every ``pause`` seconds while it fails with ``BUS_UNAVAILABLE``
    (or ``also``), for at most ``deadline`` seconds; then that error is raised.  For the steps
    of a start, each of which may be repeated (a create of what exists, a put of our own
    record): an instance that gave up at the first time-out would exit, and on a busy cluster
    every instance starting together meets the same one.  JetStream not enabled
    (``jetstream_not_enabled``) is raised at once."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while True:
        try:
            return await step()
        except (*BUS_UNAVAILABLE, *also) as exc:
            if loop.time() >= until or jetstream_not_enabled(exc):
                raise
            logger.info("%s: %s; trying again", what, str(exc) or type(exc).__name__)
            await asyncio.sleep(pause)


async def connect(settings: Settings, name: str = "colony", persistent: bool = True) -> Client:
    """A service connection (``persistent``) reconnects forever; a CLI one fails fast."""
    async def on_error(exc: Exception) -> None:
        (log.warning if persistent else log.debug)("nats error: %s", exc)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # our own close() is not news
            log.warning("nats disconnected; reconnecting")

    async def on_reconnect() -> None:
        log.info("nats reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

    nc = await nats.connect(
        servers=settings.nats_servers,
        name=name,
        **connect_options(settings.nats_nkey_seed_file, settings.nats_tls_ca_file),
        connect_timeout=settings.nats_connect_timeout,
        max_reconnect_attempts=-1 if persistent else 1,  # 0 would mean "forever" in nats-py
        reconnect_time_wait=0.5,
        allow_reconnect=persistent,
        # drain() waits for every subscription (KV watchers, consumers) to settle; a process
        # that is stopping must not hang on that for nats-py's default 30 s.
        drain_timeout=3,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    return nc


async def unsubscribe_all(subs: Iterable[Subscription | None]) -> None:
    """Unsubscribe each of ``subs`` (``None`` stands for one never made), for a stop or a
    restart. A failure is no error: at shutdown the connection may be closed or draining
    already, and the server forgets a closed connection's subscriptions by itself."""
    for sub in subs:
        if sub is None:
            continue
        try:
            await sub.unsubscribe()
        except Exception as exc:  # noqa: BLE001 - see above; the next one must still go
            log.debug("unsubscribing from %s failed: %s", sub.subject, exc)


def jetstream(nc: Client) -> JetStreamContext:
    return nc.jetstream(timeout=5.0)


def connect_options(seed_file: Path | str | None, ca_file: Path | str | None = None) -> dict:
    """``nats.connect`` keyword arguments for an identity: its nkey, its private inbox, TLS.

    Takes paths rather than ``Settings`` so a child process that got them as arguments
    (the admin API's projection workers) connects exactly as its parent does."""
    options: dict = {}
    if seed_file:
        path = Path(seed_file)
        try:
            key = public_key_of(path)
        except FileNotFoundError:
            raise ConfigError(f"COLONY_NATS_NKEY_SEED_FILE={path}: no such file; run `colony bus init` "
                              f"or point it at this role's .nk file") from None
        except OSError as exc:   # a directory, no permission: the file is not the trouble
            raise ConfigError(f"COLONY_NATS_NKEY_SEED_FILE={path}: cannot read it ({exc.strerror}); point it at "
                              f"this role's .nk file, readable by the user the service runs as") from None
        except Exception as exc:  # nkeys raises its own error classes for a malformed seed
            raise ConfigError(f"COLONY_NATS_NKEY_SEED_FILE={path}: not an nkey seed ({type(exc).__name__}); "
                              f"use a file written by `colony bus init`") from None
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"COLONY_NATS_NKEY_SEED_FILE={path}: readable by other users; `chmod 600 {path}`")
        options["nkeys_seed"] = str(path)
        options["inbox_prefix"] = inbox_prefix(key)
    if ca_file:
        try:
            options["tls"] = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"COLONY_NATS_TLS_CA_FILE={ca_file}: cannot load it ({exc}); "
                              f"point it at the CA certificate of the NATS servers") from None
    return options
