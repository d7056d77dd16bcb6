"""Flow-control counters shared by every edge and SIP farm member, kept on the bus.

A client that spreads its connections over several edges must meet the same limits as one
that talks to a single edge, so the counts live in the ``rate_counters`` KV bucket, not in
one process (DESIGN §10: "an approximate counter that never under-counts is fine").

Theory of operation
-------------------
**Rates** ("messages per minute from this IP") use one-minute windows.  Window ``w`` of a
counter is the key ``rate.<kind>.<token>.<w>`` (``names.rate_counter_key``); the rate is
the sliding-window estimate

    estimate = count(w) + count(w - 1) * (1 - elapsed_in_w / window)

With ``flush_interval = 0`` (the default) every hit is added to the key at once with a
compare-and-set (create, or update on the last revision it read; a conflict re-reads and
retries), and ``hit`` answers the cluster-wide total that write returned: exact across
instances, at one bus round trip per hit.  With ``flush_interval > 0`` an instance counts
hits locally and adds them in batches every interval (for counters too busy for a round
trip each); ``hit`` then answers the last total it learnt plus its own pending hits, so the
slack is what *other* instances counted within their last interval.  Either way no
increment is ever lost: the stored count is never below the truth.

**Concurrency** ("sessions open from this IP") is a sum of per-instance shares: each
instance writes its own share ``conc.<kind>.<token>.<node>`` (single writer: plain puts,
batched like the rates) and watches ``conc.>`` to know everyone else's.  A live instance
rewrites its non-zero shares well within the bucket's max age; the shares of an instance
that died expire with it.

Memory is bounded: windows older than the previous one are forgotten, and at most
``max_keys`` counters are tracked (the oldest are flushed and dropped first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from colony.bus import names
from colony.bus.tokens import from_token
from colony.tasks import TaskOwner

log = logging.getLogger("colony.counters")

WINDOW = 60.0


class SharedCounters:
    def __init__(self, js: JetStreamContext, node_id: str, *, flush_interval: float = 0.0,
                 share_refresh: float = 30.0, max_keys: int = 200_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.js, self.node_id = js, node_id
        self.flush_interval, self.share_refresh, self.max_keys = flush_interval, share_refresh, max_keys
        self.clock = clock
        self._kv: KeyValue | None = None
        # rate key -> [known cluster total, revision (0: absent), pending local hits,
        #              monotonic time the total was learnt]
        self._rates: dict[str, list] = {}
        # (kind, subject) -> this instance's share; and everyone's shares as last seen
        self._my_shares: dict[tuple[str, str], int] = {}
        self._dirty_shares: set[tuple[str, str]] = set()
        # everyone's shares as last seen: (kind, subject) -> {node: (count, monotonic time seen)}
        self._shares: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        self.share_max_age = 4 * share_refresh
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._own_tasks: TaskOwner | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_window = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, owner: TaskOwner | None = None) -> None:
        """``owner``: the instance's task owner (``runtime.task_owner``), so a failing loop shows
        in ``colony status``; without one the counters own their loops themselves."""
        self._kv = await self.js.key_value(names.BUCKET_RATE_COUNTERS)
        if owner is None:
            owner = self._own_tasks = TaskOwner(log)
        self._tasks = [owner.spawn("rate-counter flush", self._flush_loop, restart=True),
                       owner.spawn("concurrency watch", self._watch_shares, restart=True),
                       owner.spawn("concurrency refresh", self._refresh_loop, restart=True)]

    async def stop(self) -> None:
        with suppress(Exception):
            await self.flush()
            # Our shares end with us: remove them rather than let them count until they expire.
            for key in list(self._my_shares):
                self._my_shares[key] = 0
                self._dirty_shares.add(key)
            await self._flush_shares()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- rates ------------------------------------------------------------------------------

    def _window(self) -> tuple[int, float]:
        now = self.clock()
        return int(now // WINDOW), (now % WINDOW) / WINDOW

    async def hit(self, kind: str, subject: str, n: int = 1) -> float:
        """Count ``n`` events now and return the sliding one-minute rate including them."""
        window, elapsed = self._window()
        if window != self._last_window:
            self._last_window = window
            self._forget_old()      # a new minute: windows older than the previous one go
        current = names.rate_counter_key(kind, subject, window)
        previous = names.rate_counter_key(kind, subject, window - 1)
        if n == 0 and self.flush_interval <= 0:
            # An exact-mode query has no write of its own to learn the total from: always ask,
            # or a total learnt a moment ago misses another instance's batched write since.
            fresh_after = float("inf")
        else:
            fresh_after = time.monotonic() - max(self.flush_interval, 0.001)
        for key in (current, previous):
            if key not in self._rates:
                self._track(key)
                await self._read(key)
            elif self._rates[key][3] < fresh_after:
                # What we knew is older than one flush of anyone else: ask again, so an
                # instance that was quiet for a while does not answer from an old total.
                await self._read(key)
        if current not in self._rates:   # forgotten while we awaited (the clock moved on): count anyway
            self._track(current)
        self._rates[current][2] += n
        if n and self.flush_interval <= 0:
            # Exact: one compare-and-set in flight per key; a hit that arrives meanwhile rides
            # along with the next one, and the total answered always includes this hit.
            lock = self._locks.setdefault(current, asyncio.Lock())
            async with lock:
                if self._rates[current][2]:
                    await self._add(current, self._rates[current][2])

        elif n:
            self._wake.set()
        return self._total(current) + self._total(previous) * (1.0 - elapsed)

    async def rate(self, kind: str, subject: str) -> float:
        """The sliding one-minute rate without counting anything."""
        return await self.hit(kind, subject, 0)

    def _total(self, key: str) -> int:
        # A hit that started just before a minute boundary may find its previous window
        # forgotten when it resumes: a concurrent hit in the new minute dropped it as two
        # windows old.  It then counts nothing, as it would a moment later anyway.
        state = self._rates.get(key)
        if state is None:
            return 0
        known, _, pending, _ = state
        return known + pending

    def _track(self, key: str) -> None:
        if len(self._rates) >= self.max_keys:
            self._forget_old(force=True)
        self._rates[key] = [0, 0, 0, 0.0]

    async def _read(self, key: str) -> None:
        assert self._kv is not None
        state = self._rates.get(key)
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            if state is not None:
                state[3] = time.monotonic()
            return
        if state is not None and entry.value:
            state[0], state[1], state[3] = int(entry.value), entry.revision, time.monotonic()

    async def flush(self) -> None:
        """Add every pending hit to the shared counts (compare-and-set; retried on conflict)."""
        pending = [(key, state[2]) for key, state in self._rates.items() if state[2]]
        await asyncio.gather(*(self._add(key, n) for key, n in pending))
        self._forget_old()

    async def _add(self, key: str, n: int) -> None:
        assert self._kv is not None
        state = self._rates[key]
        for _ in range(20):
            known, revision = state[0], state[1]
            value = str(known + n).encode()
            try:
                if revision:
                    state[1] = await self._kv.update(key, value, last=revision)
                else:
                    state[1] = await self._kv.create(key, value)
                state[0] = known + n
                state[2] -= n
                state[3] = time.monotonic()
                return
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                # Someone else added first (or the key expired): learn their total and retry.
                state[0], state[1] = 0, 0
                await self._read(key)
            except Exception as exc:
                if "wrong last sequence" in str(exc):  # create() on an existing key, as nats-py reports it
                    await self._read(key)
                    continue
                raise
        log.warning("rate counter %s: gave up adding %d after repeated conflicts; kept pending", key, n)

    def _forget_old(self, force: bool = False) -> None:
        window, _ = self._window()
        for key in list(self._rates):
            state = self._rates[key]
            if state[2]:
                continue  # never drop an unflushed hit
            if int(key.rsplit(".", 1)[1]) < window - 1:
                del self._rates[key]
                lock = self._locks.get(key)
                if lock is not None and not lock.locked():
                    del self._locks[key]
        if force and len(self._rates) >= self.max_keys:
            for key in list(self._rates)[: max(1, self.max_keys // 10)]:
                if not self._rates[key][2]:
                    del self._rates[key]

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(max(self.flush_interval, 0.01))
            await self.flush()
            await self._flush_shares()

    # --- concurrency ------------------------------------------------------------------------

    def open(self, kind: str, subject: str) -> int:
        """One more (e.g. session) from ``subject``; returns the cluster-wide count including it."""
        key = (kind, subject)
        self._my_shares[key] = self._my_shares.get(key, 0) + 1
        self._dirty_shares.add(key)
        self._wake.set()
        return self.concurrent(kind, subject)

    def close(self, kind: str, subject: str) -> None:
        key = (kind, subject)
        left = self._my_shares.get(key, 0) - 1
        if left > 0:
            self._my_shares[key] = left
        else:
            self._my_shares[key] = 0
        self._dirty_shares.add(key)
        self._wake.set()

    def concurrent(self, kind: str, subject: str) -> int:
        key = (kind, subject)
        # Expiry is silent to watchers: a share not rewritten for several refresh periods
        # belongs to an instance that is gone.
        stale = time.monotonic() - self.share_max_age
        others = sum(n for node, (n, seen) in self._shares.get(key, {}).items()
                     if node != self.node_id and seen >= stale)
        return others + self._my_shares.get(key, 0)

    async def _flush_shares(self) -> None:
        assert self._kv is not None
        dirty, self._dirty_shares = self._dirty_shares, set()
        for kind, subject in dirty:
            n = self._my_shares.get((kind, subject), 0)
            key = names.concurrency_key(kind, subject, self.node_id)
            if n:
                await self._kv.put(key, str(n).encode())
            else:
                self._my_shares.pop((kind, subject), None)
                with suppress(KeyNotFoundError):
                    await self._kv.delete(key)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.share_refresh)
            self._dirty_shares.update(k for k, n in self._my_shares.items() if n)
            stale = time.monotonic() - self.share_max_age
            for key in list(self._shares):
                shares = {node: v for node, v in self._shares[key].items() if v[1] >= stale}
                if shares:
                    self._shares[key] = shares
                else:
                    del self._shares[key]
            self._wake.set()

    async def _watch_shares(self) -> None:
        assert self._kv is not None
        watcher = await self._kv.watch("conc.>")
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                try:
                    _, kind, subject_token, node_token = entry.key.split(".")
                    key, node = (kind, from_token(subject_token)), from_token(node_token)
                except ValueError:
                    continue
                shares = self._shares.setdefault(key, {})
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    shares.pop(node, None)
                    if not shares:
                        del self._shares[key]
                else:
                    shares[node] = (int(entry.value), time.monotonic())
        finally:
            with suppress(Exception):
                await watcher.stop()
