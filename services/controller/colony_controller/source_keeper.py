"""Keeps a region's cross-region sources reading (the asyncio shell of
``colony.regions.SourceRestarts``).

The server retries a source whose set-up failed on a back-off of its own -- 30 s for a
consumer request nobody answered (the link was not up), 10 s, 20 s, ... for one the other
region refused (its stream did not exist yet) -- and nothing shortens it when the other
region turns up.  Once a second the active controller reads the region's sourcing streams
(``STREAM.INFO``, the raw JSON: nats-py drops a source's ``external``, which says which region
it reads), asks each region that a stale source reads whether its stream is there, and has the
server set up afresh the stale sources whose region answers (``colony.bus.schema.restart_source``).
A stream that lacks a source it should have (a restart cut short) gets its configuration back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import StreamConfig

from colony.bus import names
from colony.bus.schema import restart_source, sourcing_stream_configs
from colony.regions import SOURCE_CHECK_INTERVAL, SourceRestarts, SourceSeen, sources_differ
from colony.settings import Settings

log = logging.getLogger("colony.controller.sources")

_ASK_TIMEOUT = 2.0


class SourceKeeper:
    def __init__(self, nc: Client, settings: Settings, restarts: SourceRestarts | None = None, clock=time.monotonic):
        self.nc = nc
        self.js = nc.jetstream()
        self.regions = settings.region_list
        self.configs: list[StreamConfig] = sourcing_stream_configs(settings)
        self.restarts = restarts or SourceRestarts()
        self.clock = clock
        self.restarted = 0  # sources set up afresh, for tests and the log

    async def run(self, active=lambda: True, interval: float = SOURCE_CHECK_INTERVAL) -> None:
        while True:
            if active():
                try:
                    await self.step()
                except (NatsError, NatsTimeout) as exc:  # the bus is busy or reconnecting
                    log.info("checking the cross-region sources: %s", exc or type(exc).__name__)
            await asyncio.sleep(interval)

    async def step(self) -> list[SourceSeen]:
        """One look at every sourcing stream; returns the sources restarted."""
        stale: list[tuple[StreamConfig, SourceSeen]] = []
        for config in self.configs:
            info = await self._ask(f"$JS.API.STREAM.INFO.{config.name}")
            if info is None:
                continue  # not created yet: ensure_schema's business
            if sources_differ(StreamConfig.from_response(info["config"]), config):
                log.warning("stream %s lacks some of its sources; applying its configuration again", config.name)
                await self.js.update_stream(config)
                continue
            seen = [SourceSeen.from_info(config.name, s, self.regions) for s in info.get("sources") or []]
            stale += [(config, s) for s in self.restarts.stale(seen, self.clock())]
        if not stale:
            return []
        answering = set()
        for config, source in stale:
            if source.region not in answering and await self._ask(
                    f"{names.js_api_prefix(source.region)}.STREAM.INFO.{config.name}", timeout=1.0) is not None:
                answering.add(source.region)
        due = self.restarts.due([s for _, s in stale], answering, self.clock())
        for config, source in stale:
            if source in due:
                log.info("stream %s: the source reading %s has heard nothing for %s although %s answers; "
                         "setting it up afresh", config.name, source.region,
                         "ever" if source.active is None else f"{source.active:.1f}s", source.region)
                await restart_source(self.js, config, names.js_api_prefix(source.region))
                self.restarted += 1
        return due

    async def _ask(self, subject: str, timeout: float = _ASK_TIMEOUT) -> dict | None:
        """A JetStream API answer, or None when there is none or it is an error (no such stream)."""
        try:
            reply = await self.nc.request(subject, b"", timeout=timeout)
        except (NatsTimeout, NatsError):
            return None
        try:
            body = json.loads(reply.data)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("error"):
            return None
        return body
