"""SharedCounters in batched mode (the default), against an in-memory KV with injected clocks:
an instance's own answers include its unflushed hits, others see them within one flush
interval, a failed flush loses nothing and is retried, stop flushes, and exact mode (0)
still writes every hit at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

from colony.bus import names
from colony.counters import WINDOW, SharedCounters
from colony.settings import Settings


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class MemoryKV:
    """The compare-and-set surface of a nats-py KeyValue, and the stream's own publish
    (expected last subject sequence, Nats-Msg-Id kept on the entry); ``fail`` makes writes time
    out, ``lose_acks`` applies them and then times out (a frozen server that resumed)."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.seq = 0
        self.writes = 0
        self.fail = False
        self.lose_acks = False
        self.msg_ids: dict[str, int] = {}

    async def publish(self, subject, value, headers):
        await asyncio.sleep(0)
        key = subject.split(".", 2)[2]
        last = int(headers["Nats-Expected-Last-Subject-Sequence"])
        if self.fail:
            raise NatsTimeoutError
        # nats-server checks the expected sequence before the message id (as 2.15 does)
        if (self.data[key][1] if key in self.data else 0) != last:
            raise APIError(code=400, err_code=10071, description="wrong last sequence")
        if headers["Nats-Msg-Id"] in self.msg_ids:
            return SimpleNamespace(seq=self.msg_ids[headers["Nats-Msg-Id"]], duplicate=True)
        seq = self._write(key, value)
        self.msg_ids[headers["Nats-Msg-Id"]] = seq
        if self.lose_acks:
            raise NatsTimeoutError
        return SimpleNamespace(seq=seq, duplicate=False)

    def _write(self, key: str, value: bytes) -> int:
        if self.fail:
            raise NatsTimeoutError
        self.seq += 1
        self.writes += 1
        self.data[key] = (value, self.seq)
        return self.seq

    async def get(self, key):
        await asyncio.sleep(0)
        if key not in self.data:
            raise KeyNotFoundError
        value, revision = self.data[key]
        return SimpleNamespace(key=key, value=value, revision=revision)

    async def create(self, key, value):
        await asyncio.sleep(0)
        if key in self.data:
            raise KeyWrongLastSequenceError("wrong last sequence")
        return self._write(key, value)

    async def update(self, key, value, last):
        await asyncio.sleep(0)
        if key not in self.data or self.data[key][1] != last:
            raise KeyWrongLastSequenceError("wrong last sequence")
        return self._write(key, value)

    async def put(self, key, value):
        return self._write(key, value)

    async def delete(self, key):
        self.data.pop(key, None)

    async def watch(self, _):
        return Watcher()

    def count(self, kind: str, subject: str, window: int) -> int:
        value = self.data.get(names.rate_counter_key(kind, subject, window))
        return int(value[0]) if value else 0


class Watcher:
    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.Event().wait()

    async def stop(self):
        pass


class JS:
    def __init__(self, kv: MemoryKV) -> None:
        self.kv = kv

    async def key_value(self, _):
        return self.kv

    async def publish(self, subject, value, headers):
        return await self.kv.publish(subject, value, headers)

    async def get_last_msg(self, stream, subject, direct=False):
        key = subject.split(".", 2)[2]
        if key not in self.kv.data:
            raise KeyNotFoundError
        seq = self.kv.data[key][1]
        ids = [i for i, s in self.kv.msg_ids.items() if s == seq]
        return SimpleNamespace(headers={"Nats-Msg-Id": ids[0]} if ids else None)


W = 1000
SUBJECT = "198.51.100.7"


async def pair(kv: MemoryKV, interval: float, wall: Clock, mono: Clock):
    a = SharedCounters(JS(kv), "edge-a", flush_interval=interval, clock=wall, monotonic=mono)
    b = SharedCounters(JS(kv), "edge-b", flush_interval=interval, clock=wall, monotonic=mono)
    await a.start()
    await b.start()
    return a, b


def test_batching_is_the_default_and_bounded():
    assert 0 < Settings().rate_counter_flush_interval <= 5


async def test_own_hits_count_at_once_and_reach_others_within_one_interval():
    kv, wall, mono = MemoryKV(), Clock(W * WINDOW), Clock(100.0)
    a, b = await pair(kv, 60.0, wall, mono)    # long interval: only explicit flushes write
    try:
        # (1) a never under-counts what it has seen itself, with nothing on the bus yet.
        for i in range(1, 51):
            assert await a.hit("conn", SUBJECT) == i
        assert kv.count("conn", SUBJECT, W) == 0 and kv.writes == 0
        assert await b.hit("conn", SUBJECT) == 1         # b has not been told yet
        await a.flush()
        assert kv.count("conn", SUBJECT, W) == 50 and kv.writes == 1   # one write for 50 hits
        # (2) b's learnt total is fresh for half an interval, then re-read.
        mono.t += 29.0
        assert await b.rate("conn", SUBJECT) == 1
        mono.t += 2.0
        assert await b.rate("conn", SUBJECT) == 51         # a's 50 + b's own pending 1
        await b.flush()
        assert kv.count("conn", SUBJECT, W) == 51
        # a learns b's hit through its next write's conflict, or its next re-read.
        await a.hit("conn", SUBJECT)
        await a.flush()
        assert kv.count("conn", SUBJECT, W) == 52
        assert await a.rate("conn", SUBJECT) == 52
    finally:
        await a.stop()
        await b.stop()


async def test_the_flush_loop_writes_within_half_an_interval():
    kv, wall = MemoryKV(), Clock(W * WINDOW)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=0.2, clock=wall)
    await a.start()
    try:
        await asyncio.gather(*(a.hit("rcpt", SUBJECT) for _ in range(30)))
        deadline = asyncio.get_running_loop().time() + 5
        while kv.count("rcpt", SUBJECT, W) != 30:
            assert asyncio.get_running_loop().time() < deadline, "the loop never flushed"
            await asyncio.sleep(0.01)
        assert kv.writes <= 2      # batched: not one write per hit
    finally:
        await a.stop()


async def test_a_failed_flush_keeps_its_hits_and_is_retried_without_a_new_hit():
    kv, wall = MemoryKV(), Clock(W * WINDOW)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=0.05, clock=wall)
    await a.start()
    try:
        kv.fail = True
        for _ in range(7):
            await a.hit("sip", SUBJECT)
        with pytest.raises(NatsTimeoutError):
            await a.flush()
        assert await a.rate("sip", SUBJECT) == 7     # still counted locally, one summed entry
        assert a._rates[names.rate_counter_key("sip", SUBJECT, W)][2] == 7
        deadline = asyncio.get_running_loop().time() + 5
        while a.flush_failures < 2:                  # the loop keeps trying on its own
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        kv.fail = False
        while kv.count("sip", SUBJECT, W) != 7:
            assert asyncio.get_running_loop().time() < deadline, "never retried"
            await asyncio.sleep(0.01)
        assert await a.rate("sip", SUBJECT) == 7     # not counted twice after the retry
    finally:
        await a.stop()


async def test_stop_flushes_pending_hits_and_retries_a_failing_bus():
    kv, wall = MemoryKV(), Clock(W * WINDOW)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=5.0, clock=wall)
    await a.start()
    for _ in range(3):
        await a.hit("conn", SUBJECT)
    kv.fail = True
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, setattr, kv, "fail", False)   # the bus comes back during the drain
    await a.stop(flush_timeout=5)
    assert kv.count("conn", SUBJECT, W) == 3


async def test_a_hit_during_a_write_in_flight_is_written_once():
    """Every add to a key takes one lock, and its amount under it: a batch and an exact hit
    (or two batches) never carry the same increments."""
    kv, wall, mono = MemoryKV(), Clock(W * WINDOW), Clock(100.0)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=60.0, clock=wall, monotonic=mono)
    await a.start()
    try:
        await a.hit("conn", SUBJECT)
        flushing = asyncio.ensure_future(a.flush())
        await asyncio.sleep(0)
        await asyncio.gather(a.hit("conn", SUBJECT), a.flush(), a.flush())
        await flushing
        await a.flush()
        assert kv.count("conn", SUBJECT, W) == 2
        assert a._rates[names.rate_counter_key("conn", SUBJECT, W)][2] == 0
    finally:
        await a.stop()


async def test_pending_hits_of_a_window_nobody_reads_any_more_are_dropped():
    kv, wall = MemoryKV(), Clock(W * WINDOW)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=60.0, clock=wall)
    await a.start()
    try:
        kv.fail = True
        await a.hit("conn", SUBJECT)
        wall.t += 2 * WINDOW              # two minutes of a dead bus
        await a.rate("conn", "other")     # a new minute forgets the old windows
        assert names.rate_counter_key("conn", SUBJECT, W) not in a._rates
        kv.fail = False
    finally:
        await a.stop()


async def test_exact_mode_writes_every_hit_at_once():
    kv, wall, mono = MemoryKV(), Clock(W * WINDOW), Clock(100.0)
    a, b = await pair(kv, 0.0, wall, mono)
    try:
        for i in range(1, 11):
            assert await (a if i % 2 else b).hit("conn", SUBJECT) == i
            assert kv.count("conn", SUBJECT, W) == i
    finally:
        await a.stop()
        await b.stop()


async def test_a_write_applied_but_unanswered_is_not_added_twice():
    """A timed-out write the server did apply: the retry finds its message id on the key's
    last entry and takes it as done instead of adding the hits again."""
    kv, wall = MemoryKV(), Clock(W * WINDOW)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=60.0, clock=wall)
    await a.start()
    try:
        for _ in range(5):
            await a.hit("conn", SUBJECT)
        kv.lose_acks = True
        with pytest.raises(NatsTimeoutError):
            await a.flush()
        kv.lose_acks = False
        assert kv.count("conn", SUBJECT, W) == 5
        await a.hit("conn", SUBJECT)            # one more while the first write was in doubt
        await a.flush()                         # the doubtful write, found applied
        await a.flush()                         # and the hit that came meanwhile
        assert kv.count("conn", SUBJECT, W) == 6
        assert await a.rate("conn", SUBJECT) == 6
    finally:
        await a.stop()


class UnreadableKV(MemoryKV):
    """Reads time out while ``down`` (the bus restarting or frozen); ``reads`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.reads = 0

    async def get(self, key):
        self.reads += 1
        if self.down:
            raise NatsTimeoutError
        return await super().get(key)


async def test_a_read_that_fails_answers_from_what_is_known_and_pauses_reads():
    """Fail open: with the bus away each hit raised, and the edge's gate and the farm's
    connection rate turned every new client away with a traceback (or made each wait out a bus
    timeout).  Now the instance answers from its own hits and the totals it last read, asks
    the bus again only after READ_BACKOFF, and counts the failures."""
    from colony import counters as module

    kv, wall, mono = UnreadableKV(), Clock(W * WINDOW), Clock(100.0)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=60.0, clock=wall, monotonic=mono)
    await a.start()
    try:
        assert await a.hit("conn", SUBJECT) == 1
        kv.down = True
        mono.t += 31.0                                   # what a knows is stale: it asks, and fails
        assert await a.hit("conn", SUBJECT) == 2
        assert a.read_failures == 1
        reads = kv.reads
        for n in range(3, 10):                           # within the backoff: no read at all
            assert await a.hit("conn", SUBJECT) == n
        assert kv.reads == reads
        kv.down = False
        mono.t += module.READ_BACKOFF + 31.0
        await a.flush()                                  # the bus is back: the pending hits go
        assert await a.rate("conn", SUBJECT) == 9 and kv.reads > reads
    finally:
        await a.stop()


async def test_exact_mode_fails_open_too_when_the_bus_cannot_be_written():
    """Exact mode (0) writes each hit at once: with the bus away that write raised out of
    ``hit``, so the edge's gate turned every new client away with a traceback (and a login's
    connection refund left the store's session behind) -- the failure the reads' fail-open
    was there to stop.  Now the hit stays pending for the flush loop, the answer includes it,
    and within READ_BACKOFF no hit waits on the bus."""
    from colony import counters as module

    kv, wall, mono = MemoryKV(), Clock(W * WINDOW), Clock(100.0)
    a = SharedCounters(JS(kv), "edge-a", flush_interval=0.0, clock=wall, monotonic=mono)
    await a.start()
    try:
        assert await a.hit("conn", SUBJECT) == 1
        kv.fail = True
        assert await a.hit("conn", SUBJECT) == 2            # answered from what is known
        assert await a.hit("conn", SUBJECT, -1) == 1
        assert a.flush_failures >= 1
        kv.fail = False
        mono.t += module.READ_BACKOFF + 1.0

        async def written() -> bool:
            return kv.count("conn", SUBJECT, W) == 1
        async with asyncio.timeout(5):
            while not await written():
                await asyncio.sleep(0.01)
        assert await a.hit("conn", SUBJECT) == 2 and kv.count("conn", SUBJECT, W) == 2
    finally:
        kv.fail = False          # (stop retries its flush until a deadline on the fake clock)
        await a.stop()
