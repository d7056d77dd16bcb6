"""Shared flow-control counters on a real nats-server: two instances (as two edges) see
one cluster-wide count, nothing is lost under concurrent increments, and windows slide."""

from __future__ import annotations

import asyncio
import signal

import pytest

from cluster_harness import wait_until
from colony.bus import names
from colony.counters import WINDOW, SharedCounters
from colony.settings import Settings


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_two_instances_share_one_rate(js):
    clock = FakeClock(1000 * WINDOW)  # start of a window
    a = SharedCounters(js, "edge-a", flush_interval=0.02, clock=clock)
    b = SharedCounters(js, "edge-b", flush_interval=0.02, clock=clock)
    await a.start()
    await b.start()
    try:
        # 300 hits spread over two instances at once: every one of them is counted.
        await asyncio.gather(*(a.hit("msg", "198.51.100.7") for _ in range(150)),
                             *(b.hit("msg", "198.51.100.7") for _ in range(150)))
        await a.flush()
        await b.flush()
        # a learns b's flushed hits as soon as what it knew is older than one flush interval.
        await wait_until(lambda: _eq_async(a.rate("msg", "198.51.100.7"), 300), 5, "a to see all 300 hits")
        # b learns a's hits through its next write (or read): never fewer than the truth.
        assert await b.hit("msg", "198.51.100.7") >= 301
        await b.flush()
        await wait_until(lambda: _eq_async(a.rate("msg", "198.51.100.7"), 301), 5, "a to see b's hit")
        assert await a.hit("msg", "198.51.100.7") == 302
        # Another subject is another counter.
        assert await a.rate("msg", "198.51.100.8") == 0
        # Half a window later the previous window counts half.
        await a.flush()
        clock.t += WINDOW * 1.5
        fresh = SharedCounters(js, "edge-c", clock=clock)
        await fresh.start()
        try:
            assert await fresh.rate("msg", "198.51.100.7") == pytest.approx(302 * 0.5)
            clock.t += WINDOW
            assert await fresh.rate("msg", "198.51.100.7") == 0
        finally:
            await fresh.stop()
    finally:
        await a.stop()
        await b.stop()


async def test_concurrency_is_the_sum_of_live_shares(js):
    a = SharedCounters(js, "edge-a", flush_interval=0.02)
    b = SharedCounters(js, "edge-b", flush_interval=0.02)
    await a.start()
    await b.start()
    try:
        assert a.open("sessions", "2001:db8::/64") == 1
        a.open("sessions", "2001:db8::/64")
        b.open("sessions", "2001:db8::/64")

        async def both_see(n):
            return a.concurrent("sessions", "2001:db8::/64") == n and b.concurrent("sessions", "2001:db8::/64") == n
        await wait_until(lambda: both_see(3), 10, "both instances to see 3 sessions")
        a.close("sessions", "2001:db8::/64")
        await wait_until(lambda: both_see(2), 10, "both instances to see 2 sessions")
        # An instance that stops takes its share with it.
        await a.stop()
        await wait_until(lambda: _eq(b.concurrent("sessions", "2001:db8::/64"), 1), 10, "b to see only its own session")
    finally:
        await b.stop()


async def _eq(a, b):
    return a == b


async def _eq_async(awaitable, expected):
    return (await awaitable) == expected


async def test_exact_mode_counts_every_hit_across_instances_at_once(js):
    clock = FakeClock(2000 * WINDOW)      # one window throughout: no minute boundary mid-test
    a = SharedCounters(js, "edge-a", flush_interval=0.0, clock=clock)   # every hit is a compare-and-set
    b = SharedCounters(js, "edge-b", flush_interval=0.0, clock=clock)
    await a.start()
    await b.start()
    try:
        answers = await asyncio.gather(*(x.hit("conn", "192.0.2.77") for x in [a, b] * 50))
        # Each answer is a cluster-wide total that includes that hit; the last one is all of them.
        assert all(1 <= v <= 100 for v in answers) and max(answers) == 100
        assert await a.rate("conn", "192.0.2.77") == 100 and await b.rate("conn", "192.0.2.77") == 100
        # Sequential hits alternating between instances see each other at once.
        for i in range(101, 111):
            assert await (a if i % 2 else b).hit("conn", "192.0.2.77") == i
    finally:
        await a.stop()
        await b.stop()


async def test_a_hit_across_a_minute_boundary_survives_a_concurrent_hit_of_the_next_minute(js):
    """Seen as 451 at RCPT in a burst: a hit awaiting its read of the bus at the end of a
    minute resumed after another hit of the new minute had forgotten its previous window
    (KeyError).  It must count and answer."""
    clock = FakeClock(2000 * WINDOW + WINDOW * 0.999)
    counters = SharedCounters(js, "edge-a", clock=clock)
    await counters.start()
    try:
        await counters.hit("rcpt", "burst.example")
        real_read = counters._read
        moved = False

        async def read_then_the_minute_ends(key: str) -> None:
            nonlocal moved
            await real_read(key)
            if not moved and key.endswith(f".{2000 - 1}"):   # its previous window, the last it reads
                moved = True
                clock.t += WINDOW       # the next minute: a concurrent hit forgets old windows
                await counters.hit("rcpt", "burst.example")

        counters._read = read_then_the_minute_ends
        clock.t -= WINDOW * 0.0005           # still the old minute when this hit starts
        total = await counters.hit("rcpt", "other.example")
        assert total >= 1
        counters._read = real_read
        assert await counters.rate("rcpt", "burst.example") >= 1
    finally:
        await counters.stop()


async def test_the_default_batched_limit_holds_across_instances_within_one_interval(js):
    """With the deployed default (batched), a client that spreads its requests over two
    instances meets one limit: each instance answers its own hits at once, sees the other's
    at most one flush interval later, and the bus gets a few writes, not one per hit."""
    interval = Settings().rate_counter_flush_interval
    assert interval > 0
    limit, subject = 40, "203.0.113.9"
    clock = FakeClock(3000 * WINDOW)      # one window throughout: no minute boundary mid-test
    a = SharedCounters(js, "edge-a", flush_interval=interval, clock=clock)
    b = SharedCounters(js, "edge-b", flush_interval=interval, clock=clock)
    await a.start()
    await b.start()
    stream = f"KV_{names.BUCKET_RATE_COUNTERS}"
    try:
        before = (await js.stream_info(stream)).state.last_seq
        loop = asyncio.get_running_loop()
        # 30 hits at a: each answer includes all of a's own, nothing on the bus yet needed.
        assert [await a.hit("conn", subject) for _ in range(30)] == list(range(1, 31))
        counted_at = loop.time()
        # b sees them at most one interval later (plus a round trip each way).
        await wait_until(lambda: _eq_async(b.rate("conn", subject), 30), interval + 2, "b to see a's 30 hits")
        assert loop.time() - counted_at <= interval + 2
        # b's hits then run into the shared limit on the 11th: 30 + 11 > 40.
        answers = [await b.hit("conn", subject) for _ in range(11)]
        assert answers[-1] > limit and answers[-2] <= limit
        await a.stop()      # stop flushes what is pending
        await b.stop()
        entry = await (await js.key_value(names.BUCKET_RATE_COUNTERS)).get(
            names.rate_counter_key("conn", subject, 3000))
        assert int(entry.value) == 41
        writes = (await js.stream_info(stream)).state.last_seq - before
        assert writes <= 6, f"{writes} bus writes for 41 hits: not batched"
    finally:
        await a.stop()
        await b.stop()


async def test_hits_counted_while_the_bus_is_frozen_reach_it_when_it_is_back(js, nats_server):
    """SIGSTOP the nats-server: the flush times out, the instance keeps answering with its own
    hits, and once the server runs again the loop's retry writes every one of them."""
    clock = FakeClock(4000 * WINDOW)
    quick = js._nc.jetstream(timeout=1.0)     # a frozen server costs 1 s per attempt, not 5
    a = SharedCounters(quick, "edge-a", flush_interval=0.2, clock=clock)
    await a.start()
    kv = await js.key_value(names.BUCKET_RATE_COUNTERS)
    key = names.rate_counter_key("conn", "198.51.100.99", 4000)
    try:
        assert await a.hit("conn", "198.51.100.99") == 1       # read once while the bus runs
        nats_server.process.send_signal(signal.SIGSTOP)
        try:
            for i in range(2, 26):
                assert await a.hit("conn", "198.51.100.99") == i   # answered from what it has seen
            await wait_until(lambda: _eq(a.flush_failures >= 1, True), 15, "a flush to fail")
        finally:
            nats_server.process.send_signal(signal.SIGCONT)

        async def stored() -> int:
            try:
                return int((await kv.get(key)).value)
            except Exception:
                return 0

        async def flushed() -> bool:
            return not a._rates[key][2] and await stored() >= 25
        await wait_until(flushed, 20, "the retried flush to write all 25 hits")
        # The write that timed out was applied when the server resumed: the retry found it
        # (its message id on the key's last entry) rather than adding the 24 hits twice.
        assert await stored() == 25
        assert await a.rate("conn", "198.51.100.99") == 25
    finally:
        await a.stop()
