"""The lease primitive against a real JetStream KV bucket."""

from __future__ import annotations

import pytest

from colony.bus.connection import connect
from colony.bus.schema import ensure_schema
from colony.cluster.lease import Lease, LeaseLost, read_lease
from colony.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def leases(nats_server):
    settings = Settings(nats_url=nats_server.url, controller_lease_ttl=3)
    nc = await connect(settings)
    js = nc.jetstream()
    await ensure_schema(js, settings)
    yield await js.key_value("cluster_leases")
    await nc.close()


async def test_only_one_of_two_contenders_wins_and_the_loser_cannot_renew(leases):
    a = Lease(leases, "controller", "a", ttl=3, safety_margin=1)
    b = Lease(leases, "controller", "b", ttl=3, safety_margin=1)
    assert await a.try_acquire() is True
    assert await b.try_acquire() is False
    assert a.held and not b.held
    await a.renew()
    entry = await read_lease(leases, "controller")
    assert entry.record.holder == "a" and entry.epoch == a.epoch


async def test_takeover_needs_the_revision_the_taker_saw(leases):
    a = Lease(leases, "controller", "a", ttl=3, safety_margin=1)
    b = Lease(leases, "controller", "b", ttl=3, safety_margin=1)
    await a.try_acquire()
    seen = (await read_lease(leases, "controller")).revision
    await a.renew()  # a is alive after all: the revision b saw is stale
    assert await b.try_acquire(take_over_revision=seen) is False
    seen = (await read_lease(leases, "controller")).revision
    assert await b.try_acquire(take_over_revision=seen) is True
    assert b.epoch > a.epoch
    with pytest.raises(LeaseLost):
        await a.renew()
    assert not a.held


async def test_holder_stops_acting_before_the_lease_can_expire(leases):
    clock = FakeClock()
    a = Lease(leases, "controller", "a", ttl=3, safety_margin=1, clock=clock)
    await a.try_acquire()
    clock.now += 1.9
    assert a.held
    clock.now += 0.2  # 2.1 s after the write was sent: inside the 1 s safety margin
    assert not a.held
    with pytest.raises(LeaseLost, match="deadline"):
        await a.renew()


async def test_a_late_renewal_keeps_the_epoch_only_if_nobody_took_the_lease(leases):
    """Past our own deadline (renewals ran behind) ``late_ok`` still tries the CAS on our last
    revision: it wins while nobody took the lease (same epoch, acting again), and loses --
    dropping the lease -- once a successor's CAS on that revision landed first."""
    clock = FakeClock()
    a = Lease(leases, "controller", "a", ttl=3, safety_margin=1, clock=clock)
    await a.try_acquire()
    epoch = a.epoch
    clock.now += 2.5
    assert not a.held
    await a.renew(late_ok=True)
    assert a.held and a.epoch == epoch
    assert (await read_lease(leases, "controller")).record.holder == "a"

    clock.now += 2.5
    seen = (await read_lease(leases, "controller")).revision
    b = Lease(leases, "controller", "b", ttl=3, safety_margin=1)
    assert await b.try_acquire(take_over_revision=seen) is True   # b saw it lapse first
    with pytest.raises(LeaseLost):
        await a.renew(late_ok=True)
    assert not a.held and a.epoch == 0


async def test_release_lets_a_successor_in_at_once(leases):
    a = Lease(leases, "controller", "a", ttl=3, safety_margin=1)
    b = Lease(leases, "controller", "b", ttl=3, safety_margin=1)
    await a.try_acquire()
    first_epoch = a.epoch
    await a.release()
    assert await read_lease(leases, "controller") is None
    assert await b.try_acquire() is True
    assert b.epoch > first_epoch, "epochs only grow, even across a release"
