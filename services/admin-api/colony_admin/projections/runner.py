"""Run a projection: follow a stream from a checkpoint and hand batches to a sync apply function.

A projection follows the stream with its own ephemeral pull consumer starting right after
the checkpoint stored in the database, applies a batch in one transaction (in
a worker thread: SQLAlchemy is synchronous here), and wakes whoever waits for a sequence
(read-your-writes: a command answers only once the read model shows its event).

The read model of PROVISIONING carries the directory projection on the same consumer
(``directory=``): each event is taken off the bus and decoded once, and each batch goes to
the SQL transaction (worker thread) and to the directory's KV writes (event loop) at the same
time.  The consumer starts after the lower of the two checkpoints; each side skips what it
holds already.  The position a projection announces moves only once both have the batch, so
a command that answers (read-your-writes) is in the directory the edges read as well.  Why
one consumer for both: reading and decoding every event twice was the largest share of the
projector's time in a bulk import (``bench/README.md``, "Provisioning").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from colony import events as ev
from colony.tasks import keep_running
from colony.telemetry import extract_context

from colony_admin.db import write_tx
from colony_admin.projections.directory import DirectoryProjection
from colony_admin.projections.position import PositionTracker
from colony_admin.projections.pull import PullBatches, stream_seq
from colony_admin.projections.readmodel import Batch, checkpoint, skip_to

log = logging.getLogger("colony.admin.projection")

ApplyFn = Callable[[Connection, Batch], int]

# What a bad event (rather than a bad moment) raises while being applied.
BAD_DATA = (IntegrityError, DataError, ValueError, TypeError, KeyError)


TRACED_PER_BATCH = 100  # spans per batch at most: a bulk import's batch is one transaction anyway
_tracer = trace.get_tracer("colony.admin.projection")  # a proxy: follows the provider setup_tracing installs


def traced_spans(name: str, msgs) -> list:
    """A CONSUMER span per event that carries a trace context (set by ``EventStore.append``),
    a child of the request that appended it, covering the transaction that makes it visible:
    one provisioning command is one trace from the HTTP request to its projection."""
    spans = []
    for msg in msgs:
        if len(spans) >= TRACED_PER_BATCH:
            break
        headers = msg.headers or {}
        if "traceparent" in headers:
            spans.append(_tracer.start_span(f"project {name}", context=extract_context(headers),
                                            kind=SpanKind.CONSUMER,
                                            attributes={"messaging.destination.name": msg.subject or "",
                                                        "colony.seq": stream_seq(msg)}))
    return spans


class ProjectionMetrics:
    """RED metrics of the projections, the stream consumers that make the read model:
    events applied, batches that failed (the projection restarts from its checkpoint), time
    per batch, and the stream position reached. ``projection`` is one of a fixed few names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("colony_projection_events", "Events applied by a projection.", ["projection"],
                              registry=registry)
        self.failures = Counter("colony_projection_batch_failures",
                                "Batches that raised (the projection restarts from its checkpoint).", ["projection"],
                                registry=registry)
        self.seconds = Histogram("colony_projection_batch_seconds", "Time to apply one batch.", ["projection"],
                                 registry=registry,
                                 buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.position = Gauge("colony_projection_position", "Stream sequence a projection has applied.",
                              ["projection"], registry=registry)

    def known(self, projection: str) -> None:
        # Series at 0 from the start: a dashboard shows "none failed", not "no data".
        self.events.labels(projection)
        self.failures.labels(projection)


class StreamProjection(PositionTracker):
    def __init__(self, *, nc: Client, js: JetStreamContext, engine: Engine, stream: str, subjects: str, name: str,
                 apply: ApplyFn, batch: int = 1000,
                 on_advance: Callable[[int], Awaitable[None]] | None = None,
                 gate: asyncio.Event | None = None, directory: DirectoryProjection | None = None,
                 metrics: ProjectionMetrics | None = None) -> None:
        self.nc, self.js, self.engine, self.stream, self.subjects, self.name = nc, js, engine, stream, subjects, name
        self.in_flight = 0  # events of the batch being applied (a projector's active work)
        self._apply = apply
        self._batch = batch
        self._on_advance = on_advance  # told every new position (a projector announces it)
        self._gate = gate  # cleared: finish the batch in hand, take no new one (a drained projector)
        self.directory = directory  # fed the same batches (PROVISIONING only)
        self.metrics = metrics
        if metrics is not None:
            metrics.known(name)
        super().__init__()

    async def run(self) -> None:
        await keep_running(lambda: f"projection {self.name} at seq {self.position} (restarts from its checkpoint)",
                           self.follow, log)

    async def follow(self) -> None:
        start = await asyncio.to_thread(self._load_checkpoint)
        await self._advance_to(start)
        if self.directory is not None:
            start = min(start, await self.directory.open())
        config = ConsumerConfig(
            filter_subject=self.subjects,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
            opt_start_seq=start + 1 if start else None,
            inactive_threshold=60.0,
            max_waiting=1,
        )
        consumer = (await self.js.add_consumer(self.stream, config=config)).name
        pull = PullBatches(self.nc, self.js, self.stream, consumer, self._batch)
        await pull.open()
        try:
            while True:
                ask = self._gate is None or self._gate.is_set()
                if not ask and not pull.busy:
                    await self._gate.wait()
                    continue
                msgs = await pull.next(ask)
                items: list[tuple[int, str, ev.Event]] = []
                for msg in msgs:
                    seq = stream_seq(msg)
                    try:
                        items.append((seq, msg.subject, ev.decode(msg.data)))
                    except ev.UnknownEvent as exc:
                        # A newer producer's event: say so and skip rather than guess its meaning.
                        log.error("projection %s: skipping seq %d: %s", self.name, seq, exc)
                if items:
                    self.in_flight = len(items)
                    spans = traced_spans(self.name, msgs)
                    started = time.perf_counter()
                    try:
                        await self._apply_batch(items)
                    except BaseException:
                        if self.metrics is not None:
                            self.metrics.failures.labels(self.name).inc()
                        raise
                    else:
                        if self.metrics is not None:
                            self.metrics.events.labels(self.name).inc(len(items))
                    finally:
                        if self.metrics is not None:
                            self.metrics.seconds.labels(self.name).observe(time.perf_counter() - started)
                        self.in_flight = 0
                        for span in spans:
                            span.end()
                if msgs:
                    await self._advance_to(stream_seq(msgs[-1]))
        finally:
            await pull.close()
            try:
                await self.js.delete_consumer(self.stream, consumer)
            except Exception:  # noqa: BLE001 - the connection may be gone; it expires by itself (inactive_threshold)
                pass

    async def _apply_batch(self, items: list[tuple[int, str, ev.Event]]) -> None:
        # A batch the database holds already (the directory catching up from further back)
        # needs no transaction; the checkpoint, checked in the transaction, decides the rest.
        sql = (asyncio.to_thread(self._apply_in_tx, [(seq, event) for seq, _, event in items])
               if items[-1][0] > self.position else None)
        if self.directory is None:
            if sql is not None:
                await sql
            return
        # Both at once: the SQL runs in its thread (sqlite3 and psycopg release the GIL) while
        # the loop writes the directory; both finish before either failure is raised, so a
        # restart never overlaps a transaction still running.
        results = await asyncio.gather(*(c for c in (sql, self.directory.handle(items)) if c is not None),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

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
        if self.metrics is not None:
            self.metrics.position.labels(self.name).set(self.position)
        if self._on_advance is not None:
            await self._on_advance(self.position)

