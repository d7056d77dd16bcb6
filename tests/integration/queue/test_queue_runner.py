"""The queue runner on a real nats-server, in this process: poison jobs end in DEAD_LETTERS
after max_deliver (or at once when rejected), replay puts them back and they are handled,
`colony dlq` for operators, a drain, a hung handler, a failing fetch loop, and every role's
permissions.  Faults across processes (SIGKILL) are in test_queue_faults.py."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.js.api import RetentionPolicy, StreamConfig

from cluster_harness import wait_until
from colony.bus import names
from colony.bus.connection import connect
from colony.bus.schema import ensure_schema
from colony.metrics import Metrics
from colony.queue import DeadLetters, Job, QueueMetrics, QueuePolicy, QueueRunner, Reject
from colony.settings import Settings
from colony.tasks import TaskOwner

STREAM, SUBJECTS = "JOBS", "test.jobs.>"


@pytest.fixture
async def nc(nats_server):
    nc = await connect(Settings(nats_url=nats_server.url), name="test-queue")
    await ensure_schema(nc.jetstream(), Settings(nats_url=nats_server.url))
    await nc.jetstream().add_stream(StreamConfig(name=STREAM, subjects=[SUBJECTS],
                                                 retention=RetentionPolicy.WORK_QUEUE))
    yield nc
    await nc.close()


@pytest.fixture
def js(nc):
    return nc.jetstream()


@pytest.fixture
async def owner():
    owner = TaskOwner(logging.getLogger("test"))
    yield owner
    await owner.close()


async def queued(js) -> int:
    return (await js.stream_info(STREAM)).state.messages


async def test_a_poison_job_is_dead_lettered_after_max_deliver_and_replay_puts_it_back(nc, js, owner):
    deliveries: list[tuple[str, int, bool]] = []
    cured = asyncio.Event()

    async def handler(job: Job):
        deliveries.append((job.id, job.delivered, job.replayed))
        if not cured.is_set():
            raise ValueError("cannot parse")
        return None

    metrics = Metrics(with_process=False)
    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=5, backoff=(0.05,), concurrency=2),
                         metrics=metrics.once(QueueMetrics))
    await runner.start(owner.spawn)
    await js.publish("test.jobs.a", b"poison", headers={"Nats-Msg-Id": "job-1", "X-Trace": "t1"})

    dlq = DeadLetters(js)
    letters = await wait_until(lambda: dlq.list(), 30, "the poison job in DEAD_LETTERS")
    assert [d[:2] for d in deliveries] == [("job-1", 1), ("job-1", 2), ("job-1", 3)]
    (letter,) = letters
    assert (letter.stream, letter.subject, letter.consumer, letter.deliveries) == (STREAM, "test.jobs.a", "workers", 3)
    assert letter.reason == "failed 3 deliveries; last: ValueError: cannot parse"
    assert letter.data == b"poison" and letter.headers["X-Trace"] == "t1" and letter.sequence == 1
    assert await wait_until(lambda: _is(queued(js), 0), 10, "the job out of the work queue")
    assert await runner.dead_letters.count(STREAM) == 1
    rendered = metrics.render().decode()
    assert 'colony_queue_jobs_total{outcome="retry",queue="workers"} 2.0' in rendered
    assert 'colony_queue_jobs_total{outcome="dead_letter",queue="workers"} 1.0' in rendered
    assert 'colony_queue_handler_errors_total{queue="workers"} 3.0' in rendered

    cured.set()
    await dlq.replay(letter.dlq_sequence)
    await wait_until(lambda: _is(_handled(runner), 1), 30, "the replayed job handled")
    assert deliveries[-1] == ("job-1", 1, True), "same job id, first delivery of the replay, marked replayed"
    assert await dlq.count() == 0
    assert await wait_until(lambda: _is(queued(js), 0), 10, "the replayed job acked")
    assert 'colony_queue_jobs_total{outcome="done",queue="workers"} 1.0' in metrics.render().decode()
    await runner.stop()


async def test_a_rejected_job_goes_to_dead_letters_at_once_and_purge_empties_them(nc, js, owner):
    calls = []

    async def handler(job: Job):
        calls.append(job.delivered)
        return Reject("refers to no mailbox")

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=5, ack_wait=5, backoff=(0.05,)))
    await runner.start(owner.spawn)
    for i in range(3):
        await js.publish(f"test.jobs.{i}", b"x")
    dlq = DeadLetters(js)
    letters = await wait_until(lambda: _len(dlq.list(), 3), 30, "three rejected jobs dead-lettered")
    assert calls == [1, 1, 1], "no retries for a rejected job"
    assert {d.reason for d in letters} == {"rejected: refers to no mailbox"}
    assert await dlq.list(limit=2) == letters[:2]
    assert await dlq.purge(STREAM) == 3
    assert await dlq.list() == []
    await runner.stop()


async def test_a_job_the_handler_acked_itself_is_done_whatever_the_handler_returns(nc, js, owner):
    """Job.ack: the ack is confirmed by the server at once (the job leaves the work queue
    while the handler still runs), and what the handler returns afterwards -- even a retry
    or an exception -- does not bring it back."""
    acked = asyncio.Event()
    release = asyncio.Event()
    calls = []

    async def handler(job: Job):
        calls.append(job.delivered)
        await job.ack()
        acked.set()
        await release.wait()
        raise RuntimeError("after the ack: must not retry the job")

    metrics = Metrics(with_process=False)
    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=2, backoff=(0.05,)), metrics=metrics.once(QueueMetrics))
    await runner.start(owner.spawn)
    await js.publish("test.jobs.early", b"x", headers={"Nats-Msg-Id": "early-1"})
    await asyncio.wait_for(acked.wait(), 30)
    assert await wait_until(lambda: _is(queued(js), 0), 10, "the job out of the queue before the handler returned")
    release.set()
    await wait_until(lambda: _is(_handled(runner), 1), 10, "the job counted as done")
    assert 'colony_queue_jobs_total{outcome="done",queue="workers"} 1.0' in metrics.render().decode()
    assert await wait_until(lambda: _consumer_idle(js), 10, "nothing pending or waiting for an ack")
    assert calls == [1] and await DeadLetters(js).count() == 0
    await runner.stop()


async def _consumer_idle(js) -> bool:
    info = await js.consumer_info(STREAM, "workers")
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.num_redelivered == 0


async def _is(awaitable, value):
    return (await awaitable) == value


async def _handled(runner):
    return runner.handled


async def _len(awaitable, n):
    found = await awaitable
    return found if len(found) == n else None


async def test_the_operator_lists_shows_replays_and_purges_dead_letters_with_colony_dlq(nc, js, owner, nats_server):
    import json
    import os
    import sys
    from pathlib import Path

    colony = str(Path(sys.executable).with_name("colony"))

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(colony, "dlq", *args, "--nats", nats_server.url,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    env={**os.environ, "COLUMNS": "200"})
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        return proc.returncode, out.decode(), err.decode()

    fixed = asyncio.Event()
    handled: list[bytes] = []

    async def handler(job: Job):
        if not fixed.is_set():
            return Reject("unknown mailbox")
        handled.append(job.data)

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=5, backoff=(0.05,)))
    await runner.start(owner.spawn)
    await js.publish("test.jobs.x", b"From: a@example.com\r\n\r\nhello", headers={"Nats-Msg-Id": "m-1"})
    await js.publish("test.jobs.y", b"second", headers={"Nats-Msg-Id": "m-2"})
    dlq = DeadLetters(js)
    await wait_until(lambda: _len(dlq.list(), 2), 30, "two dead letters")

    code, out, err = await cli("list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [(d["job_id"], d["stream"], d["subject"], d["reason"]) for d in listed] == [
        ("m-1", STREAM, "test.jobs.x", "rejected: unknown mailbox"), ("m-2", STREAM, "test.jobs.y", "rejected: unknown mailbox")]
    first, second = listed[0]["seq"], listed[1]["seq"]
    code, out, err = await cli("list")
    assert code == 0 and "m-1" in out and "unknown mailbox" in out, err

    code, out, err = await cli("show", str(first))
    assert code == 0, err
    assert "test.jobs.x" in out and "hello" in out and "Nats-Msg-Id: m-1" in out
    code, out, err = await cli("show", "999")
    assert code == 1 and "no dead letter 999" in err

    fixed.set()
    code, out, err = await cli("replay", str(first))
    assert code == 0 and f"dead letter {first} replayed" in out, err
    await wait_until(lambda: _is(_handled(runner), 1), 30, "the replayed job handled")
    assert handled == [b"From: a@example.com\r\n\r\nhello"]

    await runner.stop()
    await js.delete_stream(STREAM)  # the queue is gone: the replay says so and keeps the dead letter
    code, out, err = await cli("replay", str(second))
    assert code == 1 and f"dead letter {second} could not be queued again on test.jobs.y" in err.replace("\n", " ")
    assert len(await dlq.list()) == 1
    code, out, err = await cli("purge", "--yes")
    assert code == 0 and "1 dead letter(s) dropped" in out, err
    assert await dlq.list() == []
    code, out, err = await cli("replay", str(second))
    assert code == 1 and f"no dead letter {second}" in err


async def test_a_failing_fetch_loop_is_recorded_and_comes_back_with_a_new_consumer(nc, js):
    faults = []
    owner = TaskOwner(logging.getLogger("test"), on_fault=faults.append, first_backoff=0.05)
    handled = []

    async def handler(job: Job):
        handled.append(job.data)

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=5, backoff=(0.05,)), fetch_timeout=0.2)
    await runner.start(owner.spawn)
    await js.publish("test.jobs.1", b"before")
    await wait_until(lambda: _is(_handled(runner), 1), 30, "the first job handled")
    # Its ack is sent, not waited for: let it reach the consumer before deleting that.
    await wait_until(lambda: _consumer_idle(js), 10, "the first job's ack taken")

    await js.delete_consumer(STREAM, "workers")  # an operator's mistake, or a lost stream
    await wait_until(lambda: _true(bool(faults)), 30, "the failing fetch loop recorded as a fault")
    assert faults[0].task == "queue workers" and faults[0].restarting
    await js.publish("test.jobs.2", b"after")
    await wait_until(lambda: _is(_handled(runner), 2), 30, "a job handled by the recreated consumer")
    assert handled == [b"before", b"after"]
    await runner.stop()
    await owner.close()


async def _true(value):
    return value


async def test_a_hung_handler_is_cancelled_after_job_timeout_and_the_job_retried(nc, js, owner):
    attempts = []

    async def handler(job: Job):
        attempts.append(job.delivered)
        if job.delivered == 1:
            await asyncio.Event().wait()  # hangs; the runner's keep-alive alone would hold it forever

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=30, backoff=(0.05,), job_timeout=0.5))
    await runner.start(owner.spawn)
    await js.publish("test.jobs.hang", b"x")
    await wait_until(lambda: _is(_handled(runner), 1), 30, "the job handled on its second delivery")
    assert attempts == [1, 2], "retried at once on the back-off, not after ack_wait"
    await runner.stop()


CONSUMERS = [(role, stream) for role, grant in names.GRANTS.items() if not grant.everything for stream in grant.consume]


@pytest.mark.parametrize(("role", "stream"), CONSUMERS)
async def test_every_role_that_consumes_a_work_queue_may_dead_letter_its_poison(nats_server, js, role, stream):
    """The runner under the permissions the server enforces for each role that takes jobs."""
    from colony.bus.connection import connect as bus_connect

    subjects = (await js.stream_info(stream)).config.subjects[0]  # e.g. colony.mail.>
    settings = Settings(nats_url=nats_server.url, nats_nkey_seed_file=nats_server.seed_file(role))
    nc = await bus_connect(settings, name=f"test-{role}")
    owner = TaskOwner(logging.getLogger("test"))
    try:
        runner = QueueRunner(nc, stream=stream, durable=f"{role}-test", filter_subject=subjects,
                             handler=_reject, policy=QueuePolicy(max_deliver=2, ack_wait=5, backoff=(0.05,)))
        await runner.start(owner.spawn)
        await js.publish(subjects.replace(">", "x.y"), b"poison", headers={"Nats-Msg-Id": "p-1"})
        dlq = DeadLetters(js)
        (letter,) = await wait_until(lambda: dlq.list(stream=stream), 30, f"{role}'s poison job dead-lettered")
        assert letter.job_id == "p-1" and letter.reason == "rejected: no such mailbox"
        assert (await js.stream_info(stream)).state.messages == 0
        await runner.stop()
    finally:
        await owner.close()
        await nc.close()


async def _reject(job):
    return Reject("no such mailbox")


async def test_a_draining_runner_finishes_jobs_in_flight_and_fetches_no_more(nc, js, owner):
    release = asyncio.Event()
    started: list[bytes] = []

    async def handler(job: Job):
        started.append(job.data)
        if job.data == b"first":
            await release.wait()

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=5, backoff=(0.05,), concurrency=1))
    await runner.start(owner.spawn)
    await js.publish("test.jobs.1", b"first")
    await js.publish("test.jobs.2", b"second")
    await wait_until(lambda: _is(_active(runner), 1), 30, "the first job in flight")

    runner.set_accepting(False)  # a drain
    release.set()
    await wait_until(lambda: _is(_handled(runner), 1), 30, "the job in flight finished")
    assert runner.active_work() == 0 and started == [b"first"]
    assert await queued(js) == 1, "the second job waits in the queue for another instance"

    runner.set_accepting(True)
    await wait_until(lambda: _is(_handled(runner), 2), 30, "work resumed after ready")
    assert started == [b"first", b"second"]
    await runner.stop()


async def _active(runner):
    return runner.active_work()


async def test_each_job_is_a_span_in_the_trace_of_whoever_queued_it(nc, js, owner):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from colony.telemetry import inject_headers

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")

    async def handler(job: Job):
        return None

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=5, backoff=(0.05,)), tracer=tracer, name="mail")
    await runner.start(owner.spawn)
    with tracer.start_as_current_span("smtp DATA") as parent:
        headers = inject_headers({"Nats-Msg-Id": "traced-1"})
    assert "traceparent" in headers
    await js.publish("test.jobs.t", b"x", headers=headers)
    await wait_until(lambda: _is(_handled(runner), 1), 30, "the traced job handled")
    (span,) = [s for s in exported.get_finished_spans() if s.name == "mail job"]
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.attributes["colony.job.id"] == "traced-1" and span.attributes["colony.job.action"] == "ack"
    await runner.stop()


async def test_a_job_that_arrives_during_a_long_poll_is_handled_at_once(nc, js, owner):
    """The idle runner's long poll (here a minute) hands a job over as it arrives, not when the
    poll ends: nats-py's fetch could hold one until its deadline (colony.queue.pull)."""
    handled: list[bytes] = []

    async def handler(job: Job):
        handled.append(job.data)

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=5, backoff=(0.05,)), fetch_timeout=60)
    await runner.start(owner.spawn)
    await wait_until(lambda: _waiting(js), 30, "the runner's long poll waiting on the server")
    for n in range(3):
        await js.publish("test.jobs.late", b"job %d" % n)
        await wait_until(lambda: _is(_handled(runner), n + 1), 20, f"job {n} handled before the poll expires")
    assert handled == [b"job 0", b"job 1", b"job 2"]
    assert runner._puller.statuses["408"] == 0, "no poll has expired: each job came on a request still open"
    await runner.stop()


async def _waiting(js) -> bool:
    return (await js.consumer_info(STREAM, "workers")).num_waiting > 0


async def test_the_server_never_hands_out_more_jobs_than_the_runner_has_slots(nc, js, owner):
    release = asyncio.Event()

    async def handler(job: Job):
        await release.wait()

    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                         policy=QueuePolicy(max_deliver=3, ack_wait=30, backoff=(0.05,), concurrency=2))
    await runner.start(owner.spawn)
    for n in range(6):
        await js.publish(f"test.jobs.{n}", b"x")
    await wait_until(lambda: _is(_active(runner), 2), 30, "two jobs in flight")

    async def two_out_four_waiting():
        # Polled: the server counts a just-stored message into the consumer's num_pending a
        # moment after the publish was acknowledged (seen 3 of 4 on a busy machine). A third
        # job handed out would stay in num_ack_pending, so this still fails on one.
        info = await js.consumer_info(STREAM, "workers")
        return (info.num_ack_pending, info.num_pending) == (2, 4)

    await wait_until(two_out_four_waiting, 15, "two jobs out and the rest waiting on the server, not in this process")
    assert runner.active_work() == 2
    release.set()
    await wait_until(lambda: _is(_handled(runner), 6), 30, "every job handled, two at a time")
    assert await queued(js) == 0
    await runner.stop()


async def test_a_job_queued_after_a_runner_stopped_goes_to_the_next_runner_at_once(nc, js, owner):
    """A stopped runner's long poll may still be open on the server; it has no subscriber any
    more, so the server passes it over (no interest) and the job is not held for ack_wait."""
    handled: list[str] = []

    def runner(name: str) -> QueueRunner:
        async def handler(job: Job):
            handled.append(name)
        return QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=handler,
                           policy=QueuePolicy(max_deliver=3, ack_wait=120, backoff=(0.05,)), fetch_timeout=60)

    first = runner("first")
    await first.start(owner.spawn)
    await wait_until(lambda: _waiting(js), 30, "the first runner's long poll open on the server")
    await first.stop()
    second = runner("second")
    await second.start(owner.spawn)
    await js.publish("test.jobs.after", b"x")
    await wait_until(lambda: _is(_handled(second), 1), 30, "the job handled by the second runner, long before ack_wait")
    assert handled == ["second"]
    await second.stop()


async def test_a_backlog_larger_than_the_slots_is_worked_off_without_waiting_for_polls_to_expire(nc, js, owner):
    """Forty jobs queued, four slots, a long poll of a minute: each batch that ends makes room
    for the next request at once.  (A job comes under its own subject, not its request's, so a
    ledger that looked for the request in the job's subject kept the first request owed until
    its deadline and took one batch per long poll.)"""
    for n in range(40):
        await js.publish(f"test.jobs.backlog.x{n}", b"%d" % n)
    runner = QueueRunner(nc, stream=STREAM, durable="workers", filter_subject=SUBJECTS, handler=_done,
                         policy=QueuePolicy(max_deliver=3, ack_wait=30, backoff=(0.05,), concurrency=4),
                         fetch_timeout=60)
    await runner.start(owner.spawn)
    await wait_until(lambda: _is(_handled(runner), 40), 30, "the backlog handled, four at a time")
    assert runner._puller.statuses["408"] == 0
    await runner.stop()


async def _done(job: Job):
    return None
