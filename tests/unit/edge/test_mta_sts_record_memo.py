"""The MTA-STS TXT record is looked up at most once a second per domain while the resolver
caches answers: a memo in front of dnspython's cache, never longer than it would serve."""

from __future__ import annotations

import dns.exception
import dns.resolver
import pytest

from colony.settings import Settings
from colony_edge.mta_sts import MtaSts


class _Record:
    def __init__(self, text: str) -> None:
        self.strings = [text.encode()]


class _Answer(list):
    def __init__(self, texts: list[str], ttl: int) -> None:
        super().__init__(_Record(t) for t in texts)
        self.rrset = type("RRset", (), {"ttl": ttl})()


class Resolver:
    """What MtaSts asks of dnspython's resolver: ``resolve(name, "TXT")`` and ``cache``."""

    def __init__(self, outcome, cache=True) -> None:
        self.outcome, self.cache, self.asked = outcome, (object() if cache else None), []

    async def resolve(self, name: str, rdtype: str):
        self.asked.append((name, rdtype))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sts(resolver: Resolver, memo: float = 0.2, clock: Clock | None = None) -> MtaSts:
    sts = MtaSts(Settings(), resolver, clock=clock or Clock())
    sts.RECORD_MEMO_SECONDS = memo
    return sts


@pytest.mark.parametrize("outcome, expected", [
    (_Answer(["v=STSv1; id=abc;"], 300), "abc"),
    (dns.resolver.NXDOMAIN(), None),
    (dns.resolver.NoAnswer(), None),
])
async def test_a_record_and_its_absence_are_remembered_for_a_moment(outcome, expected):
    resolver, clock = Resolver(outcome), Clock()
    sts = _sts(resolver, clock=clock)
    assert [await sts._record_id("remote.test") for _ in range(50)] == [expected] * 50
    assert resolver.asked == [("_mta-sts.remote.test", "TXT")]
    assert await sts._record_id("other.test") == expected and len(resolver.asked) == 2   # per domain
    clock.now += 0.19
    assert await sts._record_id("remote.test") == expected and len(resolver.asked) == 2  # still remembered
    clock.now += 0.02
    assert await sts._record_id("remote.test") == expected and len(resolver.asked) == 3   # then asked again


async def test_nothing_is_remembered_without_a_resolver_cache_or_with_ttl_zero():
    for resolver in (Resolver(_Answer(["v=STSv1; id=abc;"], 300), cache=False),
                     Resolver(dns.resolver.NXDOMAIN(), cache=False),
                     Resolver(_Answer(["v=STSv1; id=abc;"], 0))):
        sts = _sts(resolver, memo=60)
        for _ in range(3):
            await sts._record_id("remote.test")
        assert len(resolver.asked) == 3


async def test_a_failed_lookup_is_not_remembered():
    resolver = Resolver(dns.exception.Timeout())
    sts = _sts(resolver, memo=60)
    for _ in range(3):
        with pytest.raises(dns.exception.Timeout):
            await sts._record_id("remote.test")
    assert len(resolver.asked) == 3
    resolver.outcome = _Answer(["v=STSv1; id=abc;"], 300)
    assert await sts._record_id("remote.test") == "abc"
