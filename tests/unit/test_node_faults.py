"""NodeRuntime's part of the task owner, without sockets: a fault reaches the record, the
metrics and the CLUSTER stream; a failed drain is reported and can be asked for again; a
heartbeat the bus did not take is tried again at the next beat, not restarted with back-off."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from colony.cluster.membership import NodeRecord, NodeState
from colony.cluster.node import NodeRuntime
from colony.events import decode
from colony.settings import Settings
from colony.tasks import FAULTS_KEPT


class FakeKV:
    def __init__(self) -> None:
        self.revision = 1
        self.written: list[NodeRecord] = []
        self.refusals: list[Exception] = []  # raised by the next writes, one each
        self.attempted = asyncio.Event()

    async def update(self, key, value, last):
        self.attempted.set()
        if self.refusals:
            raise self.refusals.pop(0)
        self.revision += 1
        self.written.append(NodeRecord.decode(value))
        return self.revision

    async def put(self, key, value):
        return await self.update(key, value, None)


class FakeJS:
    def __init__(self) -> None:
        self.published: list[tuple[str, object]] = []

    async def publish(self, subject, data, headers=None):
        self.published.append((subject, decode(data)))


class StuckWorkload:
    role = "edge"

    def __init__(self) -> None:
        self.accepting = True

    async def start(self, runtime):
        return {}

    def set_accepting(self, accepting):
        self.accepting = accepting

    def active_work(self):
        return 1  # a session that never ends

    async def hand_over(self):
        raise ConnectionError("goodbye refused")

    async def stop(self):
        return None


def runtime(**settings) -> tuple[NodeRuntime, FakeKV, FakeJS]:
    rt = NodeRuntime(Settings(node_id="edge-1", drain_timeout=0.01, **settings), StuckWorkload())
    kv, js = FakeKV(), FakeJS()
    rt._nodes, rt._js = kv, js
    rt._record = NodeRecord(id="edge-1", role="edge", state=NodeState.READY, host="h", pid=1, version="0",
                            started_at=datetime.now(UTC))
    rt.state = NodeState.READY
    return rt, kv, js


async def test_a_failed_task_is_on_the_record_in_the_metrics_and_on_the_cluster_stream():
    rt, kv, js = runtime()

    async def boom():
        raise RuntimeError("watch lost")

    for _ in range(FAULTS_KEPT + 2):
        await rt.spawn("watch-directory", boom, context=lambda: "rev 9")
    assert rt.record.fault_count == FAULTS_KEPT + 2
    assert len(rt.record.faults) == FAULTS_KEPT, "bounded on the record"
    assert rt.record.faults[-1].error == "RuntimeError: watch lost" and rt.record.faults[-1].context == "rev 9"
    assert b'colony_task_failures_total{task="watch-directory"} 7.0' in rt.metrics.render()
    subjects = {s for s, _ in js.published}
    assert subjects == {"colony.cluster.task"}
    event = js.published[-1][1]
    assert (event.type, event.task, event.count, event.restarting) == ("cluster.task_failed", "watch-directory", 7, False)
    assert rt._wake_heartbeat.is_set(), "the record is written at once, not at the next heartbeat"
    await rt.task_owner.close()


async def test_a_drain_whose_hand_over_fails_is_reported_and_may_be_asked_for_again():
    rt, kv, js = runtime()
    await rt.begin_drain()
    await asyncio.wait_for(rt._drain_task, 10)
    assert rt.state == NodeState.NOT_READY and not rt.record.drained
    assert rt.record.drain_error == "ConnectionError: goodbye refused"
    assert rt.record.reason == "drain failed: ConnectionError: goodbye refused"
    assert kv.written[-1].drain_error == "ConnectionError: goodbye refused", "written to the bucket"
    kinds = [(s, e.type) for s, e in js.published]
    assert ("colony.cluster.drain", "cluster.drain_failed") in kinds
    assert ("colony.cluster.task", "cluster.task_failed") in kinds
    assert [f.task for f in rt.record.faults] == ["drain"]

    first = rt._drain_task
    await rt.begin_drain()  # the operator asks again: a new attempt, the old error cleared first
    assert rt._drain_task is not first
    await asyncio.wait_for(rt._drain_task, 10)
    assert rt.record.drain_error and rt.record.fault_count == 2

    await rt.make_ready()
    assert rt.state == NodeState.READY and rt.record.drain_error == "" and rt.workload.accepting
    await rt.task_owner.close()


async def test_a_heartbeat_the_bus_did_not_take_is_tried_again_at_the_next_beat():
    # After a NATS server dies, the nodes bucket's stream answers nothing for seconds.  The
    # task owner's restart back-off (here an hour) would outlast node_ttl; beats must go on.
    rt, kv, js = runtime(heartbeat_interval=3600)  # it beats when woken here
    rt.task_owner.first_backoff = rt.task_owner.max_backoff = 3600
    kv.refusals = [NatsTimeout(), NoRespondersError(), NoStreamResponseError(),
                   ServiceUnavailableError(code=503, err_code=10008, description="JetStream system temporarily unavailable")]
    rt.spawn("heartbeat", rt._heartbeat_loop, restart=True)
    for beat in range(5):
        kv.attempted.clear()
        rt._wake_heartbeat.set()
        await asyncio.wait_for(kv.attempted.wait(), 10)
    assert not kv.refusals and len(kv.written) == 1, "the fifth beat was taken"
    assert rt.task_owner.fault_count == 0 and rt.record.faults == [], "a bus that did not answer is no fault"
    await rt.task_owner.close()
