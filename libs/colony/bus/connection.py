"""Connecting to NATS the same way everywhere: reconnect forever, log state changes."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from colony.settings import Settings

log = logging.getLogger("colony.bus")


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


def jetstream(nc: Client) -> JetStreamContext:
    return nc.jetstream(timeout=5.0)
