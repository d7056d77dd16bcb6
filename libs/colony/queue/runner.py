"""The asyncio shell around ``colony.queue.outcomes``: one durable pull consumer of a
JetStream work-queue stream, bounded concurrency, ack after the durable effect.

Per job: extract the trace context from its headers into a span, keep it alive with
``in_progress()`` about every ``ack_wait / 3`` while the handler runs (at most ``job_timeout``:
then it is cancelled and the job retried), then do what ``decide`` says
(ack, ``nak(delay)``, or copy to ``DEAD_LETTERS`` and only then ack it out of the queue).
The ack of a job done is sent after the durable effect and not waited for: an ack that never
reaches the server is a redelivery after ``ack_wait``, which the idempotent handler absorbs,
exactly as an ack confirmed too late was before; a handler whose work must be known to be
acknowledged acks it itself, confirmed (``Job.ack``).  If the process dies mid-job nothing was acked: JetStream
redelivers after ``ack_wait`` to whichever runner of the same durable asks next, so handlers
must be idempotent by ``job.id``.  ``set_accepting(False)`` stops fetching (a drain);
``active_work()`` is the jobs in flight; ``stop()`` waits for them, then naks what is left.

Jobs come through ``colony.queue.pull.JobPuller`` (its docstring says why not nats-py's
``fetch``): a job is handled the moment it arrives, an idle runner keeps one long poll of
``fetch_timeout`` seconds outstanding, and outstanding requests never ask for more than the
free slots.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from colony.bus.connection import while_unavailable
from colony.queue.deadletter import H_JOB_ID, MSG_ID, DeadLetter, DeadLetters
from colony.queue.outcomes import Action, Decision, Outcome, QueuePolicy, Retry, before_handling, decide
from colony.queue.pull import JobPuller
from colony.tasks import describe
from colony.telemetry import extract_context

log = logging.getLogger("colony.queue")

_HELD_REMEMBERED = 100_000   # held jobs whose held deliveries a runner remembers


@dataclass
class Job:
    """One delivery of a work-queue message."""

    data: bytes
    subject: str
    headers: dict[str, str]
    stream: str
    sequence: int          # in its stream
    delivered: int         # 1 on the first delivery
    _msg: Msg | None = field(default=None, repr=False)
    acked: bool = field(default=False, repr=False)   # by the handler itself (``ack``)

    @property
    def id(self) -> str:
        """Stable across redeliveries and replays: ``Colony-Job-Id``, else ``Nats-Msg-Id`` (set
        it when publishing), else ``<stream>.<sequence>``.  Key idempotence on this."""
        return self.headers.get(H_JOB_ID) or self.headers.get(MSG_ID) or f"{self.stream}.{self.sequence}"

    @property
    def replayed(self) -> bool:
        return "Colony-Replayed" in self.headers

    async def in_progress(self) -> None:
        """Extra keep-alive for a handler step that may block longer than usual (the runner
        already sends one every ``ack_wait / 3``)."""
        if self._msg is not None and not self.acked:
            await self._msg.in_progress()

    async def ack(self, timeout: float = 5.0) -> None:
        """Acknowledge the job now, from inside the handler, confirmed by the server: for a
        handler whose work is complete at a moment it can name, so the ack itself is the
        record of it (the outbound queue acks the instant the remote server took a message,
        instead of writing a marker and then acking).  The runner then only counts the job,
        whatever the handler returns.  Raises when the server did not confirm: the job is
        then still the runner's to settle."""
        if self._msg is not None:
            await self._msg.ack_sync(timeout=timeout)
        self.acked = True

    @classmethod
    def from_msg(cls, msg: Msg) -> Job:
        meta = msg.metadata
        return cls(data=msg.data, subject=msg.subject, headers=dict(msg.headers or {}), stream=meta.stream,
                   sequence=meta.sequence.stream, delivered=meta.num_delivered, _msg=msg)


Handler = Callable[[Job], Awaitable[Outcome | None]]
Spawn = Callable[..., asyncio.Task]  # runtime.spawn / TaskOwner.spawn: (name, body, *, restart, context)


class QueueMetrics:
    """One per registry (``runtime.metrics.once(QueueMetrics)``); every runner labels by queue."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter("colony_queue_jobs", "Jobs finished, by outcome: done, retry, dead_letter.",
                            ["queue", "outcome"], registry=registry)
        self.errors = Counter("colony_queue_handler_errors", "Handlers that raised (retried on the back-off).",
                              ["queue"], registry=registry)
        self.seconds = Histogram("colony_queue_job_seconds", "Time a handler took, per job.", ["queue"],
                                 registry=registry, buckets=(0.005, 0.02, 0.1, 0.5, 2, 10, 60, 300))
        self.in_flight = Gauge("colony_queue_jobs_in_flight", "Jobs being handled now.", ["queue"], registry=registry)


class JobBudget:
    """Jobs in flight shared by several runners (one process consuming several filters):
    each fetches at most what the budget has free, so together they hold about ``limit``
    jobs, and any one of them may use all of it while the others are idle.  A runner checks
    before it fetches and does not reserve (an idle runner's long poll must not hold slots),
    so runners fetching at the same moment may together exceed it by their batches; each
    runner's own ``policy.concurrency`` stays the hard bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[Callable[[], None]] = []  # every runner sharing it: wake them all

    def free(self) -> int:
        return self.limit - self.used

    def take(self, n: int) -> None:
        self.used += n

    def give(self, n: int = 1) -> None:
        self.used -= n
        for wake in self._waiters:
            wake()

    def on_free(self, wake: Callable[[], None]) -> None:
        self._waiters.append(wake)


class QueueRunner:
    """Handle the jobs of ``stream`` matching ``filter_subject`` through durable ``durable``.

    Every runner of the same (stream, durable) shares the work; a work-queue stream allows
    one consumer per filter, so give each kind of job its own filter.
    """

    def __init__(self, nc: Client, *, stream: str, durable: str, filter_subject: str,
                 handler: Handler, policy: QueuePolicy | None = None, metrics: QueueMetrics | None = None,
                 name: str | None = None, fetch_timeout: float = 5.0, tracer: trace.Tracer | None = None,
                 budget: JobBudget | None = None) -> None:
        self.nc = nc
        self.js = js = nc.jetstream()
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self.handler = handler
        self.policy = policy or QueuePolicy()
        self.name = name or durable
        self.metrics = metrics or QueueMetrics(CollectorRegistry(auto_describe=True))
        self.dead_letters = DeadLetters(js)
        self.fetch_timeout = fetch_timeout
        self.budget = budget
        self.accepting = True
        self._inflight: set[asyncio.Task] = set()
        self._puller: JobPuller | None = None
        self._loop_task: asyncio.Task | None = None
        if budget is not None:
            budget.on_free(self._wake)
        self.tracer = tracer or trace.get_tracer("colony.queue")
        self.handled = 0  # jobs acked by this runner (tests and benchmarks read it)
        # Stream sequence -> deliveries that ended in a held retry (outcomes.Retry.held), so
        # "redelivered past max_deliver" counts only deliveries without an outcome.  In memory:
        # a restarted runner forgets them, which costs a held job at most max_deliver more
        # deliveries, not the job.  Bounded: the oldest entries go first.
        self._held: OrderedDict[int, int] = OrderedDict()
        # Jobs being handled -> when they last told JetStream they are alive.  One timer for
        # all of them, armed while any runs: a task (or timer) per job to send a progress
        # that a job finishing in milliseconds never needs cost more than the rest of the
        # runner's bookkeeping for it.
        self._running: dict[int, tuple[Job, float]] = {}   # by id(job)
        self._progress_timer: asyncio.TimerHandle | None = None
        self._progress_sends: set[asyncio.Future] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, spawn: Spawn) -> None:
        """Create (or update) the consumer, then fetch in a task started by ``spawn`` -
        ``runtime.spawn`` or a ``TaskOwner.spawn``, so a failing fetch loop is seen and restarted.
        The consumer's creation is tried again while the bus does not answer (a time-out, or a
        503 while the stream elects its leader): a service starting on a busy cluster exited at
        the first one."""
        await while_unavailable(self._subscribe, f"queue {self.name}: consumer {self.durable}")
        self._loop_task = spawn(f"queue {self.name}", self._fetch_loop, restart=True,
                                context=lambda: f"{self.stream}/{self.durable}, {len(self._inflight)} in flight")

    async def _subscribe(self) -> None:
        config = ConsumerConfig(
            durable_name=self.durable, name=self.durable, filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=self.policy.ack_wait,
            # No server-side max_deliver: JetStream would stop delivering and leave the job in
            # the stream unseen; the runner counts deliveries and dead-letters it instead.
            max_deliver=-1, max_ack_pending=max(self.policy.concurrency * 64, 1000),
        )
        await self.js.add_consumer(self.stream, config)  # creates, or updates a changed policy
        puller = JobPuller(self.nc, self.stream, self.durable, on_job=self._dispatch, free=self._free,
                           expires=self.fetch_timeout, concurrency=self.policy.concurrency,
                           consumer_exists=lambda: self.js.consumer_info(self.stream, self.durable))
        await puller.open()
        self._puller = puller

    def _wake(self) -> None:
        # A runner that is not fetching has nothing to ask for, whatever was freed: every
        # runner sharing a JobBudget hears of every finished job, and in a mail store among
        # three most of its eight partition runners are such (5 of 8 checks per job were
        # for them: ~50 Python calls per message on the loop that one store alone never made).
        if self._puller is not None and self.accepting:
            self._puller.wake()

    def _free(self) -> int:
        """Slots that requests may ask to fill: none while draining."""
        if not self.accepting:
            return 0
        free = self.policy.concurrency - len(self._inflight)
        if self.budget is not None:
            free = min(free, self.budget.free())
        return free

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting
        self._wake()

    def active_work(self) -> int:
        return len(self._inflight)

    async def stop(self, timeout: float = 10.0) -> None:
        """Fetch no more, let jobs in flight finish for ``timeout`` s, nak the rest."""
        self.set_accepting(False)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with suppress(asyncio.CancelledError, Exception):
                    await task
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        with suppress(Exception):   # the acks sent so far reach the server before we go
            await self.nc.flush(timeout=2)
        await self._close_puller()

    async def _close_puller(self) -> None:
        puller, self._puller = self._puller, None
        if puller is not None:
            await puller.close()

    # --- fetching -------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        try:
            if self._puller is None:
                await self._subscribe()
            await self._puller.run()
        except Exception:
            # Restarted by its owner: subscribe afresh (the consumer may have been deleted).
            await self._close_puller()
            raise

    def _dispatch(self, msg: Msg) -> None:
        task = asyncio.create_task(self._run(msg), name=f"job {self.name}")
        self._inflight.add(task)
        if self.budget is not None:
            self.budget.take(1)
        task.add_done_callback(self._job_ended)

    def _job_ended(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if self.budget is not None:
            self.budget.give(1)  # wakes every runner sharing it, this one included
        else:
            self._wake()
        if not task.cancelled() and task.exception() is not None:  # _run handles everything: a bug
            log.error("%s: a job ended with an unhandled error", self.name, exc_info=task.exception())

    # --- one job --------------------------------------------------------------------------

    async def _run(self, msg: Msg) -> None:
        """Never raises (but for cancellation): every failure becomes a decision or a log line."""
        try:
            job = Job.from_msg(msg)
        except Exception as exc:  # not a JetStream delivery at all: nothing to ack
            log.error("%s: unreadable delivery on %s: %s", self.name, msg.subject, describe(exc))
            return
        pre = before_handling(job.delivered, self.policy, self._held.get(job.sequence, 0))
        if pre is not None:
            await self._dead_letter(msg, job, pre.reason)
            return
        started = time.monotonic()
        self.metrics.in_flight.labels(self.name).inc()
        try:
            with self.tracer.start_as_current_span(f"{self.name} job", context=extract_context(job.headers),
                                              kind=trace.SpanKind.CONSUMER) as span:
                span.set_attribute("messaging.destination.name", job.subject)
                span.set_attribute("colony.job.id", job.id)
                span.set_attribute("colony.job.delivered", job.delivered)
                outcome = await self._handle(job)
                decision = decide(outcome, job.delivered, self.policy)
                self._note_held(job, outcome, decision)
                span.set_attribute("colony.job.action", str(decision.action))
            await self._apply(msg, job, decision)
        finally:
            self.metrics.in_flight.labels(self.name).dec()
            self.metrics.seconds.labels(self.name).observe(time.monotonic() - started)

    def _note_held(self, job: Job, outcome: Outcome | None, decision: Decision) -> None:
        if decision.action == Action.NAK and isinstance(outcome, Retry) and outcome.held:
            self._held[job.sequence] = self._held.pop(job.sequence, 0) + 1
            while len(self._held) > _HELD_REMEMBERED:
                self._held.popitem(last=False)
        elif decision.action != Action.NAK:
            self._held.pop(job.sequence, None)

    async def _handle(self, job: Job) -> Outcome | None:
        self._running[id(job)] = (job, time.monotonic())
        if self._progress_timer is None:
            self._arm_progress()
        deadline = asyncio.timeout(self.policy.job_timeout)
        try:
            async with deadline:
                return await self.handler(job)
        except TimeoutError as exc:
            self.metrics.errors.labels(self.name).inc()
            if deadline.expired():  # ours, not a time-out of the handler's own
                log.error("%s: job %s (delivery %d) still running after %gs; cancelled", self.name, job.id,
                          job.delivered, self.policy.job_timeout)
                return Retry(reason=f"handler still running after {self.policy.job_timeout:g}s")
            log.error("%s: job %s (delivery %d) failed", self.name, job.id, job.delivered, exc_info=exc)
            return Retry(reason=describe(exc))
        except asyncio.CancelledError:
            # Stopped mid-job: hand it back at once rather than after ack_wait.
            if job._msg is not None:
                with suppress(Exception):
                    await job._msg.nak()
            raise
        except Exception as exc:
            self.metrics.errors.labels(self.name).inc()
            log.error("%s: job %s (delivery %d) failed", self.name, job.id, job.delivered, exc_info=exc)
            return Retry(reason=describe(exc))
        finally:
            self._running.pop(id(job), None)

    def _arm_progress(self) -> None:
        # Every quarter interval: a job is told alive one to one and a quarter intervals
        # after its start or its last progress, 5/12 of ack_wait at the latest.
        self._progress_timer = asyncio.get_running_loop().call_later(self.policy.progress_interval / 4,
                                                                     self._progress_due)

    def _progress_due(self) -> None:
        self._progress_timer = None
        if not self._running:
            return
        now = time.monotonic()
        for key, (job, last) in list(self._running.items()):
            if last <= now - self.policy.progress_interval:
                self._running[key] = (job, now)
                self._send_progress(job)
        self._arm_progress()

    def _send_progress(self, job: Job) -> None:
        async def send() -> None:
            try:
                await job.in_progress()
            except Exception as exc:  # the bus is away; the ack will tell whether the job is still ours
                log.warning("%s: progress for job %s not sent: %s", self.name, job.id, describe(exc))
        task = asyncio.ensure_future(send())
        self._progress_sends.add(task)   # held until sent; send() logs its own failure
        task.add_done_callback(self._progress_sends.discard)

    async def _apply(self, msg: Msg, job: Job, decision: Decision) -> None:
        if job.acked:   # the handler acked it itself (Job.ack): done, whatever it returned after
            self.handled += 1
            self.metrics.jobs.labels(self.name, "done").inc()
            return
        try:
            if decision.action == Action.ACK:
                # Not waited for: the confirmation changed nothing but a log line, and cost
                # every job a reply from the server, a future and a timer in this process.
                await msg.ack()
                self.handled += 1
                self.metrics.jobs.labels(self.name, "done").inc()
            elif decision.action == Action.NAK:
                await msg.nak(delay=decision.delay)
                self.metrics.jobs.labels(self.name, "retry").inc()
                log.info("%s: job %s retries in %.1fs (delivery %d): %s", self.name, job.id, decision.delay,
                         job.delivered, decision.reason)
            else:
                await self._dead_letter(msg, job, decision.reason)
        except Exception as exc:
            # The effect is done (or the job failed) but JetStream did not confirm: it will be
            # redelivered after ack_wait, and the idempotent handler makes that harmless.
            log.warning("%s: could not %s job %s: %s", self.name, decision.action, job.id, describe(exc))

    async def _dead_letter(self, msg: Msg, job: Job, reason: str) -> None:
        letter = DeadLetter(stream=job.stream, subject=job.subject, sequence=job.sequence, consumer=self.durable,
                            deliveries=job.delivered, reason=reason, headers=job.headers, data=job.data)
        try:
            seq = await self.dead_letters.add(letter)
            # Only now leave the queue: a crash between the two leaves a duplicate dead letter
            # (deduplicated by its Nats-Msg-Id), never a lost job.
            await msg.ack_sync(timeout=max(self.policy.ack_wait / 2, 2.0))
        except Exception as exc:
            log.error("%s: could not dead-letter job %s (%s): %s; it stays queued", self.name, job.id, reason,
                      describe(exc))
            with suppress(Exception):
                await msg.nak(delay=self.policy.retry_delay(job.delivered))
            return
        self.metrics.jobs.labels(self.name, "dead_letter").inc()
        log.warning("%s: job %s dead-lettered as %d after %d deliveries: %s", self.name, job.id, seq,
                    job.delivered, reason)
