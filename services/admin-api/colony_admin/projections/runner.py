"""Run a projection: follow a stream from a checkpoint and hand batches to a sync apply function.

Each admin-api instance follows the stream with its own ephemeral pull consumer starting
right after the checkpoint stored in the database, applies a batch in one transaction (in
a worker thread: SQLAlchemy is synchronous here), and wakes whoever waits for a sequence
(read-your-writes: a command answers only once the read model shows its event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from colony import events as ev
from colony.tasks import keep_running

from colony_admin.db import write_tx
from colony_admin.projections.fastpull import fetch, speed_up, stream_seq
from colony_admin.projections.readmodel import Batch, checkpoint, skip_to

log = logging.getLogger("colony.admin.projection")

ApplyFn = Callable[[Connection, Batch], int]

# What a bad event (rather than a bad moment) raises while being applied.
BAD_DATA = (IntegrityError, DataError, ValueError, TypeError, KeyError)


class PositionTracker:
    """A stream position that only moves forward, and a wait for it (read-your-writes)."""

    def __init__(self) -> None:
        self.position = 0  # last stream sequence known to be applied
        self._moved = asyncio.Condition()

    async def _advance_to(self, seq: int) -> None:
        async with self._moved:
            if seq > self.position:
                self.position = seq
                self._moved.notify_all()

    async def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Wait until the read model includes stream sequence ``seq``."""
        async with self._moved:
            try:
                await asyncio.wait_for(self._moved.wait_for(lambda: self.position >= seq), timeout)
            except TimeoutError:
                return False
        return True


class StreamProjection(PositionTracker):
    def __init__(self, *, js: JetStreamContext, engine: Engine, stream: str, subjects: str, name: str,
                 apply: ApplyFn, batch: int = 1000,
                 on_advance: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.js, self.engine, self.stream, self.subjects, self.name = js, engine, stream, subjects, name
        self._apply = apply
        self._batch = batch
        self._on_advance = on_advance  # told every new position (a child process reports it)
        super().__init__()

    async def run(self) -> None:
        await keep_running(lambda: f"projection {self.name} at seq {self.position} (restarts from its checkpoint)",
                           self._follow, log)

    async def _follow(self) -> None:
        start = await asyncio.to_thread(self._load_checkpoint)
        await self._advance_to(start)
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
            opt_start_seq=start + 1 if start else None,
            inactive_threshold=60.0,
            max_waiting=1,
        )
        sub = speed_up(await self.js.pull_subscribe(self.subjects, stream=self.stream, config=config))
        try:
            while True:
                msgs = await fetch(sub, self._batch)
                batch: list[tuple[int, ev.Event]] = []
                for msg in msgs:
                    seq = stream_seq(msg)
                    try:
                        batch.append((seq, ev.decode(msg.data)))
                    except ev.UnknownEvent as exc:
                        # A newer producer's event: say so and skip rather than guess its meaning.
                        log.error("projection %s: skipping seq %d: %s", self.name, seq, exc)
                if batch:
                    await asyncio.to_thread(self._apply_in_tx, batch)
                if msgs:
                    await self._advance_to(stream_seq(msgs[-1]))
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone; the consumer expires by itself
                pass

    def _load_checkpoint(self) -> int:
        with self.engine.connect() as conn:
            return checkpoint(conn, self.name)

    def _apply_in_tx(self, batch: Batch) -> None:
        try:
            with write_tx(self.engine) as conn:
                self._apply(conn, batch)
            return
        except BAD_DATA:
            log.exception("projection %s: batch %d..%d failed; applying it event by event",
                          self.name, batch[0][0], batch[-1][0])
        # Find the event the database refuses and skip it, loudly: a read model that stopped
        # at one bad event would stop every list and search of the cluster.  Transient errors
        # (database unreachable) are not BAD_DATA: they propagate and the run loop retries.
        for item in batch:
            try:
                with write_tx(self.engine) as conn:
                    self._apply(conn, [item])
            except BAD_DATA:
                log.exception("projection %s: SKIPPING seq %d (%s); the read model lacks it until "
                              "rebuilt by a fixed version", self.name, item[0], item[1].type)
                with write_tx(self.engine) as conn:
                    skip_to(conn, self.name, item[0])

    async def _advance_to(self, seq: int) -> None:
        await super()._advance_to(seq)
        if self._on_advance is not None:
            await self._on_advance(self.position)

