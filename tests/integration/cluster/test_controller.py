"""Controller election and fencing with real processes on a real nats-server."""

from __future__ import annotations

import json
import signal
import time

import pytest
from cluster_harness import wait_until
from nats.errors import TimeoutError as NatsTimeout

from colony.bus import names
from colony.cluster.commands import NodeCommand
from colony.cluster.decisions import NodeFailed, read_decision

pytestmark = pytest.mark.slow


async def test_sigkill_of_the_controller_hands_over_to_the_backup_with_a_higher_epoch(cluster):
    for i in (1, 2, 3):
        cluster.start("controller", f"controller-{i}")
    first = await cluster.wait_controller()
    for i in (1, 2, 3):
        await cluster.wait_state(f"controller-{i}", "READY")
    views = await cluster.view()
    backups = [v for v in views.values() if v.backup]
    assert len(backups) == 1 and backups[0].id != first.id

    killed_at = time.monotonic()
    cluster.nodes[first.id].signal(signal.SIGKILL)
    second = await cluster.wait_controller(not_id=first.id, min_epoch=first.epoch)
    took = time.monotonic() - killed_at
    print(f"\nfailover after SIGKILL took {took * 1000:.0f} ms")

    assert second.epoch > first.epoch
    assert second.id == backups[0].id, "the Backup Controller shown is the one that takes over"
    # The dead one is declared FAILED once its heartbeats are overdue, by the new controller.
    failed = await cluster.wait_state(first.id, "FAILED", timeout=30)
    assert failed.controller is False
    # And there is a new backup among the survivors.
    views = await cluster.view()
    assert [v.id for v in views.values() if v.backup] == [v for v in ("controller-1", "controller-2", "controller-3") if v not in (first.id, second.id)]


async def test_a_command_with_a_stale_epoch_is_refused(cluster):
    cluster.start("controller", "controller-1")
    cluster.start("controller", "controller-2")
    cluster.start("edge", "edge-1")
    first = await cluster.wait_controller()
    await cluster.wait_state("edge-1", "READY")
    cluster.nodes[first.id].signal(signal.SIGKILL)
    second = await cluster.wait_controller(not_id=first.id, min_epoch=first.epoch)
    nc = await cluster.client()

    async def send(epoch: int, command: str = "drain") -> dict:
        msg = await nc.request(names.node_command_subject("edge-1"),
                               NodeCommand(command=command, epoch=epoch).model_dump_json().encode(), timeout=10)
        return json.loads(msg.data)

    # The edge learns the new epoch by watching the lease bucket, a moment after the status
    # shows it: ask with a harmless command ("ready" on a READY instance changes nothing)
    # until the old epoch is refused, instead of hoping the watch was quicker than we were.
    async def refuses_old_epoch():
        return (await send(first.epoch, "ready"))["ok"] is False
    await wait_until(refuses_old_epoch, 30, "edge-1 to learn the new epoch from the lease bucket")

    stale = await send(first.epoch)
    assert stale["ok"] is False and stale["status"] == 409 and "older" in stale["error"]
    assert (await cluster.view())["edge-1"].state == "READY", "a refused command changes nothing"

    current = await send(second.epoch)
    assert current["ok"] is True
    await cluster.wait_state("edge-1", "NOT_READY")


async def test_sigstopped_instance_is_declared_failed_and_rejoins_after_sigcont(cluster):
    cluster.start("controller", "controller-1")
    mailstore = cluster.start("mailstore", "mailstore-1")
    await cluster.wait_controller()
    await cluster.wait_state("mailstore-1", "READY")

    mailstore.signal(signal.SIGSTOP)
    failed = await cluster.wait_state("mailstore-1", "FAILED", timeout=30)
    assert failed.incarnation == 1

    mailstore.signal(signal.SIGCONT)
    back = await cluster.wait_state("mailstore-1", "READY", timeout=30, incarnation=2)
    assert "re-registered" in back.reason and "FAILED" in back.reason

    # Both transitions are events in the CLUSTER stream, the FAILED one decided by the
    # controller (the instance publishes its event just after writing its record: wait for it).
    async def both_events():
        events = await cluster_events(cluster, "mailstore-1")
        rejoined = any(e.old == "FAILED" and e.new == "READY" and e.by == "mailstore-1" for e in events)
        return events if rejoined else None
    events = await wait_until(both_events, 30, "the FAILED and the re-registration events")
    failed_events = [e for e in events if e.new == "FAILED"]
    assert len(failed_events) == 1 and failed_events[0].by == "controller-1" and failed_events[0].epoch > 0

    # The marking went through the controller's fenced decision log first.
    kv = await (await cluster.client()).jetstream().key_value(names.BUCKET_LEASES)
    decision, _ = await read_decision(kv, NodeFailed.KIND, "mailstore-1")
    assert decision.by == "controller-1" and decision.epoch == failed_events[0].epoch


async def cluster_events(cluster, node_id: str):
    """Every node event about ``node_id`` in the stream, read up to its end (``num_pending``
    says when), not "until nothing arrived for a second"."""
    from colony.events import NodeStateChanged, decode

    js = (await cluster.client()).jetstream()
    sub = await js.subscribe(names.cluster_event_subject("node"), ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=5)
            except NatsTimeout:
                break  # nothing at all yet: the caller's wait_until asks again
            event = decode(msg.data)
            if isinstance(event, NodeStateChanged) and event.node_id == node_id:
                found.append(event)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


async def test_a_frozen_controller_is_replaced_and_steps_down_when_it_wakes(cluster):
    for i in (1, 2):
        cluster.start("controller", f"controller-{i}")
    first = await cluster.wait_controller()
    other = "controller-2" if first.id == "controller-1" else "controller-1"
    await cluster.wait_state(other, "READY")

    frozen = cluster.nodes[first.id]
    frozen.signal(signal.SIGSTOP)  # keeps its connection: nobody can prove it gone
    second = await cluster.wait_controller(not_id=first.id, min_epoch=first.epoch, timeout=30)
    assert second.id == other

    frozen.signal(signal.SIGCONT)
    # It rejoins as a standby (new incarnation) and never acts as controller again.
    await cluster.wait_state(first.id, "READY", timeout=30, controller=False, backup=True)
    await wait_until_log(frozen, "stops acting as controller")
    views = await cluster.view()
    assert [v.id for v in views.values() if v.controller] == [other]


async def wait_until_log(node, text: str, timeout: float = 30.0) -> None:
    async def probe():
        return text in node.log()
    await wait_until(probe, timeout, f"{node.node_id} to log {text!r}")
