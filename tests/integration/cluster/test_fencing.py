"""Server-enforced fencing of controller decisions, against a real nats-server.

The refusals here come from the server (error 10071 on the lease subject's expected last
sequence), not from the writer's own idea of whether it still leads.
"""

from __future__ import annotations

import asyncio

import pytest
from cluster_harness import wait_until

from colony.bus import names
from colony.bus.connection import connect
from colony.bus.schema import ensure_schema
from colony.cluster.decisions import NodeFailed, publish_decision, read_decision
from colony.cluster.lease import FencedWriteRefused, Lease, LeaseLost, read_lease
from colony.settings import Settings


class FrozenClock:
    """A holder that believes no time passes: only the server can stop it."""

    def __call__(self) -> float:
        return 1000.0


@pytest.fixture
async def bus(nats_server):
    settings = Settings(nats_url=nats_server.url, controller_lease_ttl=3)
    nc = await connect(settings)
    js = nc.jetstream()
    await ensure_schema(js, settings)
    yield js, await js.key_value(names.BUCKET_LEASES)
    await nc.close()


def controller_lease(bus, holder: str, clock=None) -> Lease:
    js, kv = bus
    extra = {"clock": clock} if clock else {}
    return Lease(kv, names.CONTROLLER_LEASE_KEY, holder, ttl=3, safety_margin=1,
                 js=js, bucket=names.BUCKET_LEASES, **extra)


def failed(lease: Lease, node: str, by: str) -> NodeFailed:
    return NodeFailed(epoch=lease.epoch, by=by, node_id=node, role="edge", judged_revision=1, reason="test")


async def test_a_deposed_controllers_decision_is_refused_by_the_server(bus):
    _, kv = bus
    old = controller_lease(bus, "c1", clock=FrozenClock())  # by its own clock it still leads
    new = controller_lease(bus, "c2")
    assert await old.try_acquire()
    await publish_decision(old, failed(old, "edge-1", "c1"))

    seen = await read_lease(kv, names.CONTROLLER_LEASE_KEY)
    assert await new.try_acquire(take_over_revision=seen.revision)
    assert old.held, "the deposed holder has not noticed: nothing local can stop it"
    old_epoch = old.epoch

    with pytest.raises(FencedWriteRefused, match="10071|wrong last sequence"):
        await publish_decision(old, failed(old, "edge-2", "c1"))
    assert not old.held, "a refusal drops the lease"
    assert await read_decision(kv, NodeFailed.KIND, "edge-2") is None, "nothing was written"

    await publish_decision(new, failed(new, "edge-2", "c2"))
    decision, _ = await read_decision(kv, NodeFailed.KIND, "edge-2")
    assert decision.by == "c2" and decision.epoch == new.epoch > old_epoch


async def test_a_lease_that_expired_on_the_server_fences_a_holder_that_slept(bus):
    """SIGSTOP in miniature: the holder's clock stood still, the server's did not."""
    _, kv = bus
    sleeper = controller_lease(bus, "c1", clock=FrozenClock())
    assert await sleeper.try_acquire()
    seq = await publish_decision(sleeper, failed(sleeper, "edge-1", "c1"))

    async def lease_gone():
        return await read_lease(kv, names.CONTROLLER_LEASE_KEY) is None
    await wait_until(lease_gone, 30, "the lease to expire by its per-message TTL")

    with pytest.raises(FencedWriteRefused):
        await publish_decision(sleeper, failed(sleeper, "edge-2", "c1"))
    # Decisions outlive the lease that fenced them: the bucket's max age is not the lease's.
    decision, revision = await read_decision(kv, NodeFailed.KIND, "edge-1")
    assert revision == seq and decision.node_id == "edge-1"


async def test_a_holder_past_its_own_deadline_does_not_even_try(bus):
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    lease = controller_lease(bus, "c1", clock=clock)
    assert await lease.try_acquire()
    clock.now += 2.0  # ttl 3 - margin 1
    with pytest.raises(LeaseLost) as refused:
        await publish_decision(lease, failed(lease, "edge-1", "c1"))
    assert not isinstance(refused.value, FencedWriteRefused), "refused locally, before any write"
    assert await read_decision(bus[1], NodeFailed.KIND, "edge-1") is None


async def test_a_released_lease_fences_its_former_holder(bus):
    lease = controller_lease(bus, "c1", clock=FrozenClock())
    assert await lease.try_acquire()
    epoch = lease.epoch
    await lease.release()
    stale = NodeFailed(epoch=epoch, by="c1", node_id="edge-1", role="edge", judged_revision=1, reason="x")
    with pytest.raises(LeaseLost):
        await publish_decision(lease, stale)
    # And a successor can create it again over the delete marker.
    successor = controller_lease(bus, "c2")
    assert await successor.try_acquire() and successor.epoch > epoch


async def test_renewals_never_invalidate_a_decision_in_flight(bus):
    lease = controller_lease(bus, "c1")
    assert await lease.try_acquire()
    work = []
    for i in range(20):
        work.append(lease.renew())
        work.append(publish_decision(lease, failed(lease, f"edge-{i}", "c1")))
    await asyncio.gather(*work)  # any refusal would raise here
    assert lease.held
    for i in range(20):
        assert await read_decision(bus[1], NodeFailed.KIND, f"edge-{i}") is not None


async def test_the_lease_write_carries_a_whole_second_ttl_and_renewals_keep_it_alive(bus):
    js, kv = bus
    lease = controller_lease(bus, "c1")
    assert await lease.try_acquire()
    msg = await js.get_msg(f"KV_{names.BUCKET_LEASES}", subject=lease.subject)
    assert msg.headers.get("Nats-TTL") == "3"
    await lease.renew()
    msg = await js.get_msg(f"KV_{names.BUCKET_LEASES}", subject=lease.subject)
    assert msg.headers.get("Nats-TTL") == "3" and msg.seq == lease.revision
