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

Batches are pipelined (``depth``, 2): while one batch commits in the projection's thread and
waits for its directory acks, the next is fetched, decoded and handed on.  Order holds where
it matters: the transactions run one at a time in stream order, each with its checkpoint (one
that fails stops those queued behind it); a key's directory writes only move its ``seq``
forward, so overlapping batches cannot take it back; and each position -- the announced one
and the directory's checkpoint -- moves past a batch only after every batch before it is
done.  A SIGKILL at any point therefore resumes exactly: from the database's checkpoint for
the rows, from the bucket's for the directory.  Why: with one batch at a time the projector
spent most of a bulk import waiting on round trips (fetch, commit, acks) rather than working
(``bench/README.md``, "Provisioning").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from colony import events as ev
from colony.eventstore import EXPECTED_LAST_SUBJECT_SEQUENCE
from colony.tasks import keep_running
from colony.telemetry import extract_context

from colony_admin.db import write_tx
from colony_admin.projections.directory import DirectoryProjection
from colony_admin.projections.position import PositionTracker
from colony_admin.projections.pull import PullBatches, stream_seq
from colony_admin.projections.readmodel import Batch, checkpoint, skip_to

log = logging.getLogger("colony.admin.projection")

ApplyFn = Callable[[Connection, Batch], int]

# What a bad event (rather than a bad moment) raises while being applied.  OverflowError:
# SQLite's driver refuses an integer beyond 64 bits with it (PostgreSQL's says DataError);
# taken for a bad moment, one such event stopped the projection for good.
BAD_DATA = (IntegrityError, DataError, ValueError, TypeError, KeyError, OverflowError)


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
        # An event skipped is an object the read model lacks (never listed, missed by deletion
        # checks) until a rebuild: only an error log said so, which no alert watches.
        self.skipped = Counter("colony_projection_skipped_events",
                               "Events skipped as unreadable (a newer producer's) or refused by the database; "
                               "the read model lacks them until rebuilt.", ["projection"], registry=registry)
        self.seconds = Histogram("colony_projection_batch_seconds", "Time to apply one batch.", ["projection"],
                                 registry=registry,
                                 buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.position = Gauge("colony_projection_position", "Stream sequence a projection has applied.",
                              ["projection"], registry=registry)

    def known(self, projection: str) -> None:
        # Series at 0 from the start: a dashboard shows "none failed", not "no data".
        self.events.labels(projection)
        self.failures.labels(projection)
        self.skipped.labels(projection)


Item = tuple[int, str, ev.Event]  # stream sequence, subject, the event decoded


class _Chain:
    """The transactions of one run of a projection, run in order in its thread: once one has
    raised, those queued behind it refuse to start (their checkpoint would jump the gap)."""

    def __init__(self) -> None:
        self.broken = False

    def run(self, fn: Callable[[Batch], None], batch: Batch) -> None:
        if self.broken:
            raise RuntimeError("an earlier batch of this run failed")
        try:
            fn(batch)
        except BaseException:
            self.broken = True
            raise


class StreamProjection(PositionTracker):
    def __init__(self, *, nc: Client, js: JetStreamContext, engine: Engine, stream: str, subjects: str, name: str,
                 apply: ApplyFn, batch: int = 1000, depth: int = 2,
                 on_advance: Callable[[int], Awaitable[None]] | None = None,
                 gate: asyncio.Event | None = None, directory: DirectoryProjection | None = None,
                 metrics: ProjectionMetrics | None = None) -> None:
        self.nc, self.js, self.engine, self.stream, self.subjects, self.name = nc, js, engine, stream, subjects, name
        self.in_flight = 0  # events of the batches being applied (a projector's active work)
        self._apply = apply
        self._batch = batch
        self._depth = depth  # batches applied at once: one committing while the next is prepared
        self._executor: ThreadPoolExecutor | None = None  # one thread: transactions in stream order
        self._on_advance = on_advance  # told every new position (a projector announces it)
        self._gate = gate  # cleared: finish the batch in hand, take no new one (a drained projector)
        self.directory = directory  # fed the same batches (PROVISIONING only)
        self.metrics = metrics
        if metrics is not None:
            metrics.known(name)
        super().__init__()

    async def run(self) -> None:
        try:
            await keep_running(lambda: f"projection {self.name} at seq {self.position} (restarts from its checkpoint)",
                               self.follow, log)
        finally:
            await self._finish_thread()

    async def _finish_thread(self) -> None:
        """Let the transaction already in the projection's thread end (it cannot be cancelled)
        and drop those queued behind it, so that whoever stopped us may dispose of the engine --
        or drop the database -- without a write still running into it."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.shield(asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True))

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
        chain = _Chain()  # this run's transactions: one failed, those queued behind it refuse
        pending: deque[asyncio.Task[None]] = deque()  # batches being applied, oldest first
        await pull.open()
        try:
            while True:
                # A batch that failed ends the run (the caller restarts from the checkpoints);
                # the ones behind it will not move the position (see _apply_batch).
                while pending and pending[0].done():
                    pending.popleft().result()
                ask = self._gate is None or self._gate.is_set()
                if not ask and not pull.busy:
                    await self._gate.wait()
                    continue
                msgs = await pull.next(ask)
                if not msgs:
                    continue
                items: list[Item] = []
                opened: set[int] = set()
                for msg in msgs:
                    seq = stream_seq(msg)
                    try:
                        items.append((seq, msg.subject, ev.decode(msg.data)))
                    except ev.UnknownEvent as exc:
                        # A newer producer's event: say so and skip rather than guess its meaning.
                        log.error("projection %s: skipping seq %d: %s", self.name, seq, exc)
                        self._skipped()
                        continue
                    if msg.headers and msg.headers.get(EXPECTED_LAST_SUBJECT_SEQUENCE) == "0":
                        opened.add(seq)
                # Bounded pipeline: at most ``depth`` batches in hand (and one more arriving).
                while len(pending) >= self._depth:
                    await pending.popleft()
                before = pending[-1] if pending else None
                pending.append(asyncio.create_task(
                    self._apply_batch(items, opened, stream_seq(msgs[-1]), before, chain, traced_spans(self.name, msgs)),
                    name=f"projection-{self.name}-{stream_seq(msgs[-1])}"))
        except asyncio.CancelledError:
            for task in pending:
                task.cancel()
            raise
        finally:
            # Nothing of this run outlives it: a restart never overlaps a batch still writing.
            # (A transaction already in its thread finishes there; the next run's queue behind it.)
            await asyncio.gather(*pending, return_exceptions=True)
            await pull.close()
            try:
                await self.js.delete_consumer(self.stream, consumer)
            except Exception:  # noqa: BLE001 - the connection may be gone; it expires by itself (inactive_threshold)
                pass

    async def _apply_batch(self, items: list[Item], opened: set[int], last: int, before: asyncio.Task[None] | None,
                           chain: _Chain, spans: list) -> None:
        """Apply one batch while the batches before it may still be committing or writing; move
        the position past it only once they and it are done.

        Ordering: the SQL transactions run one at a time in submission order (one thread per
        projection), each with the checkpoint in it; the directory's writes of consecutive
        batches may overlap (each only moves its key forward) and its position is written in
        order (``before`` first).  A batch whose predecessor failed moves neither position."""
        self.in_flight += len(items)
        started = time.perf_counter()
        failure: BaseException | None = None  # this batch's own, not one passed on from ``before``
        try:
            if items:
                # A batch the database holds already (the directory catching up from further
                # back) needs no transaction; the checkpoint, checked in the transaction, decides.
                work = []
                if items[-1][0] > self.position:
                    work.append(self._in_thread(chain, [(seq, event) for seq, _, event in items]))
                if self.directory is not None:
                    work.append(self.directory.write(items, opened))
                # Both at once: sqlite3 and psycopg release the GIL while the loop writes the
                # directory; both finish before either failure is raised.
                for result in await asyncio.gather(*work, return_exceptions=True):
                    if isinstance(result, BaseException) and failure is None:
                        failure = result
            if before is not None:
                await before  # raises if it failed: then neither position moves past it
            if failure is not None:
                raise failure
            if self.directory is not None and items:
                try:
                    await self.directory.advance(items[-1][0])
                except Exception as exc:
                    failure = exc
                    raise
            if self.metrics is not None:
                self.metrics.events.labels(self.name).inc(len(items))
        finally:
            if self.metrics is not None:
                if failure is not None:
                    self.metrics.failures.labels(self.name).inc()
                self.metrics.seconds.labels(self.name).observe(time.perf_counter() - started)
            self.in_flight -= len(items)
            for span in spans:
                span.end()
        await self._advance_to(last)

    async def _in_thread(self, chain: _Chain, batch: Batch) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"projection-{self.name}")
        await asyncio.get_running_loop().run_in_executor(self._executor, chain.run, self._apply_in_tx, batch)

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
                self._skipped()

    def _skipped(self) -> None:
        if self.metrics is not None:
            self.metrics.skipped.labels(self.name).inc()

    async def _advance_to(self, seq: int) -> None:
        await super()._advance_to(seq)
        if self.metrics is not None:
            self.metrics.position.labels(self.name).set(self.position)
        if self._on_advance is not None:
            await self._on_advance(self.position)

