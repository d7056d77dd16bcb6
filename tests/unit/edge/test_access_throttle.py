"""Login-failure throttling at the edge: per address (trusted networks exempt) and per account."""

from __future__ import annotations

from colony.settings import Settings
from colony_edge.access_proxy import LoginThrottle


class FakeCounters:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    async def hit(self, kind: str, subject: str, n: int = 1) -> float:
        self.counts[(kind, subject)] = self.counts.get((kind, subject), 0) + n
        return self.counts[(kind, subject)]

    async def rate(self, kind: str, subject: str) -> float:
        return self.counts.get((kind, subject), 0)


class FakeGate:
    def trusted(self, ip: str) -> bool:
        return ip.startswith("127.")


async def test_failures_per_address_block_that_address_only():
    counters = FakeCounters()
    t = LoginThrottle(Settings(access_login_failures_per_ip=3, access_login_failures_per_account=100), counters,
                      FakeGate())
    for i in range(3):
        assert not await t.blocked("198.51.100.7", f"user{i}@acme.example")
        await t.failed("198.51.100.7", f"user{i}@acme.example")
    assert await t.blocked("198.51.100.7", "other@acme.example")
    assert not await t.blocked("198.51.100.8", "other@acme.example")


async def test_failures_on_an_account_block_it_from_everywhere_trusted_networks_included():
    counters = FakeCounters()
    t = LoginThrottle(Settings(access_login_failures_per_ip=100, access_login_failures_per_account=2), counters,
                      FakeGate())
    await t.failed("198.51.100.7", "Alice@acme.example")
    await t.failed("203.0.113.9", "alice@acme.example")
    assert await t.blocked("127.0.0.1", "alice@acme.example")
    assert not await t.blocked("127.0.0.1", "bob@acme.example")


async def test_trusted_networks_skip_the_address_limit_and_ipv6_counts_by_64():
    counters = FakeCounters()
    t = LoginThrottle(Settings(access_login_failures_per_ip=2, access_login_failures_per_account=100), counters,
                      FakeGate())
    for i in range(5):
        await t.failed("127.0.0.1", f"u{i}@a.example")
    assert not await t.blocked("127.0.0.1", "x@a.example")
    await t.failed("2001:db8:1:2::1", "a@a.example")
    await t.failed("2001:db8:1:2::99", "b@a.example")
    assert await t.blocked("2001:db8:1:2:ffff::5", "c@a.example")
