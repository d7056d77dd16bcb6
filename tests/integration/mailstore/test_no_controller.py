"""Both controllers SIGKILLed, then a mail store: mail keeps being stored, exactly once, with
no controller at all (the surviving store takes the dead one's accounts and partitions from
the bus itself: no responders, lapsed leases, stale heartbeats); and the first controller
that comes back declares the dead store FAILED, through its fenced decision."""

from __future__ import annotations

import signal
import uuid

import pytest

from cluster_harness import wait_progress, wait_until
from mailworld import DOMAIN, publish_many, world  # noqa: F401  (world is a fixture)

from colony.bus import names
from colony.cluster.decisions import NodeFailed, read_decision

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
async def test_mail_is_stored_without_any_controller_and_the_dead_store_is_failed_once_one_returns(world):
    cluster = world.cluster
    await world.domain()
    users = [f"user{i}@{DOMAIN}" for i in range(8)]
    for u in users:
        await world.account(u)
    for i in (1, 2):
        cluster.start("controller", f"controller-{i}")
    await world.start_ready("mailstore-1", "mailstore-2", timeout=60)
    before = await cluster.wait_controller(timeout=60)
    first = [await world.publish([u]) for u in users]
    await wait_until(lambda: _has(world, {u: {m} for u, m in zip(users, first)}), 60, "a first message each")
    owned = {u: await world.owner(u) for u in users}
    assert set(owned.values()) == {"mailstore-1", "mailstore-2"}, owned   # both stores hold accounts

    for i in (1, 2):
        cluster.nodes[f"controller-{i}"].signal(signal.SIGKILL)
    for i in (1, 2):
        cluster.nodes[f"controller-{i}"].process.wait(10)
    cluster.nodes["mailstore-1"].signal(signal.SIGKILL)
    cluster.nodes["mailstore-1"].process.wait(10)

    jobs = [([users[n % len(users)]], uuid.uuid4().hex) for n in range(200)]
    await publish_many(world, jobs, connections=4)
    expected = {u: {m} for u, m in zip(users, first)}
    for rcpts, mid in jobs:
        expected[rcpts[0]].add(mid)

    async def left():
        missing = sum(len(expected[u] - set(world.stored_ids(u))) for u in users)
        return missing, f"{missing} messages not stored"
    # Stall deadline from the mechanisms' timers: node_ttl 3 s, ack_wait 6 s, lease 4 s,
    # forward timeout 2 s; four times their sum for a loaded machine.
    await wait_progress(left, 4 * (3 + 6 + 4 + 2), "every message stored with no controller")
    for u in users:
        counts = world.stored_ids(u)
        assert set(counts) == expected[u] and set(counts.values()) == {1}, u
        assert await world.owner(u) == "mailstore-2"
    # Nobody may declare the dead store FAILED while there is no controller: it still shows
    # its last state.
    assert (await cluster.view())["mailstore-1"].state != "FAILED"

    back = cluster.start("controller", "controller-1")
    # A later epoch than the killed one's: the dead controller's own record still says it
    # leads (nobody is left to say otherwise) until the one that comes back takes the lease.
    ctl = await cluster.wait_controller(timeout=60, min_epoch=before.epoch)
    assert ctl.id == "controller-1" and back.process.poll() is None
    await cluster.wait_state("mailstore-1", "FAILED", timeout=60)
    kv = await (await cluster.client()).jetstream().key_value(names.BUCKET_LEASES)
    decision, _ = await read_decision(kv, NodeFailed.KIND, "mailstore-1")
    assert decision.by == "controller-1" and decision.epoch == ctl.epoch


async def _has(world, expected: dict[str, set[str]]) -> bool:
    return all(expected[u] <= set(world.stored_ids(u)) for u in expected)
