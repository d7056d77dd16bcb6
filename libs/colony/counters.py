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

With ``flush_interval > 0`` (the deployed default, ``rate_counter_flush_interval``) an
instance counts hits locally, summed per key, and adds them to the bus in batches: a write
per key and instance at most every half interval, not one per hit (the bucket is
``sync_interval: always``, so every write is an fsync).  ``hit`` answers the total it last
learnt from the bus plus its own pending hits, so an instance never under-counts what it
has seen itself, and it re-reads a total older than half an interval before answering: a
hit at one instance is in every other instance's answers at most one interval later.  A
write that fails stays pending (its hits are not lost) and is retried; one that timed out
but was applied (a frozen server that resumed) is recognised by its ``Nats-Msg-Id`` on the
key's last entry, so its hits are not added twice.  A read that fails (the bus restarting,
frozen, unreachable) fails open: ``hit`` answers from what the instance knows -- its own hits
and the totals it last read -- and asks the bus again only after ``READ_BACKOFF`` (exact mode's
write of a hit fails open the same way, the hit left pending for the flush loop); a limit
that turned every client away, or made each connection wait out a bus timeout, while the bus
is away would take the whole service down with it (``read_failures`` counts them, and a
warning says so once per backoff).  ``stop`` flushes what is pending.  With ``flush_interval = 0`` every hit is added at once with a
compare-and-set (create, or update on the last revision it read; a conflict re-reads and
retries), and ``hit`` answers the cluster-wide total that write returned: exact across
instances, at one synced bus write per hit.  Either way the stored count is never below
the truth, and every add to a key goes through one lock per key, so a batch and a hit never
carry the same increments twice.

**Concurrency** ("sessions open from this IP") is a sum of per-instance shares: each
instance writes its own share ``conc.<kind>.<token>.<node>`` (single writer: plain puts,
batched like the rates) and watches ``conc.>`` to know everyone else's.  A live instance
rewrites its non-zero shares well within the bucket's max age; the shares of an instance
that died expire with it.

Memory is bounded: pending hits are one integer per key, windows older than the previous
one are forgotten (with any hits still pending for them: no instance reads those windows
any more, so no decision can miss them), and at most ``max_keys`` flushed counters are
kept (the oldest are dropped first).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import suppress

from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError, KeyNotFoundError
from nats.js.kv import KeyValue

from colony.bus import names
from colony.bus.tokens import from_token
from colony.tasks import TaskOwner

log = logging.getLogger("colony.counters")

WINDOW = 60.0
READ_BACKOFF = 2.0      # seconds without reads after one failed: answered from what is known


class SharedCounters:
    def __init__(self, js: JetStreamContext, node_id: str, *, flush_interval: float = 0.0,
                 share_refresh: float = 30.0, max_keys: int = 200_000,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.js, self.node_id = js, node_id
        self.flush_interval, self.share_refresh, self.max_keys = flush_interval, share_refresh, max_keys
        # clock: wall time, for the one-minute windows every instance must agree on;
        # monotonic: how old a learnt total is.  Both injectable for tests.
        self.clock, self.monotonic = clock, monotonic
        # Half the interval to reach the bus, half for others' learnt totals to age out:
        # an increment is in every instance's answers at most one interval later.
        self._half = flush_interval / 2
        self.flush_failures = 0
        self.read_failures = 0
        self._reads_paused_until = 0.0    # monotonic: a read failed, answer from what is known
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
        # rate key -> a write that failed without an answer: (known, revision, n, message id)
        self._in_doubt: dict[str, tuple[int, int, int, str]] = {}
        # Message ids are unique per process (a restarted instance must not be deduplicated
        # against its previous life's ids within the stream's duplicate window).
        self._writes, self._nonce = 0, secrets.token_hex(6)
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

    async def stop(self, flush_timeout: float = 5.0) -> None:
        # Pending hits go to the bus before we do, retried for a while if the bus is slow.
        deadline = self.monotonic() + flush_timeout
        while True:
            try:
                await asyncio.wait_for(self.flush(), max(deadline - self.monotonic(), 0.01))
                break
            except Exception as exc:  # noqa: BLE001 - a bus failure; retried until the deadline
                if self.monotonic() >= deadline:
                    lost = sum(state[2] for state in self._rates.values())
                    log.warning("rate counters: %d pending hits not flushed at stop: %s", lost, exc)
                    break
                await asyncio.sleep(min(0.2, max(self._half, 0.01)))
        with suppress(Exception):
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
            fresh_after = self.monotonic() - max(self._half, 0.001)
        for key in (current, previous):
            if key not in self._rates:
                self._track(key)
                await self._read_or_go_on(key)
            elif self._rates[key][3] < fresh_after:
                # What we knew is older than one flush of anyone else: ask again, so an
                # instance that was quiet for a while does not answer from an old total.
                await self._read_or_go_on(key)
        if current not in self._rates:   # forgotten while we awaited (the clock moved on): count anyway
            self._track(current)
        self._rates[current][2] += n
        if n and self.flush_interval <= 0:
            # Exact: one compare-and-set in flight per key; a hit that arrives meanwhile rides
            # along with the next one, and the total answered always includes this hit.
            await self._write_or_go_on(current)
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

    async def _read_or_go_on(self, key: str) -> None:
        """``_read``, failing open (module doc): a read that fails pauses reads for
        ``READ_BACKOFF`` and the caller answers from what is known."""
        if self.monotonic() < self._reads_paused_until:
            return
        try:
            await self._read(key)
        except Exception as exc:  # noqa: BLE001 - any bus failure: a timeout, no responders, closed
            self.read_failures += 1
            self._reads_paused_until = self.monotonic() + READ_BACKOFF
            log.warning("rate counters: cannot read the bus (%s); answering from what this instance "
                        "knows for %.0f s", exc.__class__.__name__, READ_BACKOFF)

    async def _write_or_go_on(self, key: str) -> None:
        """Exact mode's write of a hit at once, failing open as a read does: a write that
        fails (or would wait out a bus timeout within ``READ_BACKOFF`` of a failure) leaves
        the hit pending, and the flush loop writes it once the bus is back."""
        if self.monotonic() >= self._reads_paused_until:
            try:
                await self._flush_key(key)
            except Exception as exc:  # noqa: BLE001 - any bus failure: a timeout, no responders, closed
                self.flush_failures += 1
                self._reads_paused_until = self.monotonic() + READ_BACKOFF
                log.warning("rate counters: cannot write to the bus (%s); answering from what this instance "
                            "knows for %.0f s", exc.__class__.__name__, READ_BACKOFF)
        state = self._rates.get(key)
        if state is not None and state[2]:
            self._wake.set()

    async def _read(self, key: str) -> None:
        assert self._kv is not None
        state = self._rates.get(key)
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            if state is not None:
                state[3] = self.monotonic()
            return
        if state is not None and entry.value:
            state[0], state[1], state[3] = int(entry.value), entry.revision, self.monotonic()

    async def flush(self) -> None:
        """Add every pending hit to the shared counts (compare-and-set; retried on conflict).
        Raises the first bus failure after trying every key; what failed stays pending."""
        pending = [key for key, state in self._rates.items() if state[2]]
        results = await asyncio.gather(*(self._flush_key(key) for key in pending), return_exceptions=True)
        self._forget_old()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _flush_key(self, key: str) -> None:
        # One add per key at a time: the amount is taken under the lock, so hits that arrive
        # while a write is in flight wait for the next one instead of being written twice.
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            state = self._rates.get(key)
            if state is not None and state[2]:
                await self._add(key, state[2])

    async def _add(self, key: str, n: int) -> None:
        """Add ``n`` to ``key`` with a compare-and-set (caller holds the key's lock).

        A write that times out may still have been applied (a frozen server resumes and
        stores it): its exact publish, message id included, is what the next attempt sends,
        so the stream's duplicate detection answers it instead of adding ``n`` twice."""
        assert self._kv is not None
        state = self._rates[key]
        doubt = self._in_doubt.pop(key, None)
        for _ in range(20):
            if doubt is not None:
                known, revision, n, msg_id = doubt
            else:
                known, revision = state[0], state[1]
                self._writes += 1
                msg_id = f"{self.node_id}.{self._nonce}.{self._writes}"
            headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision), Header.MSG_ID: msg_id}
            try:
                ack = await self.js.publish(names.kv_subject(names.BUCKET_RATE_COUNTERS, key),
                                            str(known + n).encode(), headers=headers)
            except APIError as err:
                if err.err_code not in (10071, 10164):    # not "wrong last sequence"
                    self._in_doubt[key] = (known, revision, n, msg_id)
                    raise
                if doubt is not None and await self._applied(key, msg_id):
                    # The doubtful write was applied and is still the last: take it as done.
                    # (Applied but already overwritten by another instance cannot be told
                    # with one entry of history: it is added again, counting more, never less.)
                    await self._read(key)
                    state[2] -= n
                    if state[2]:
                        self._wake.set()
                    return
                # Someone else added first (or the key expired, or our doubtful write was not
                # applied): learn their total and retry.
                doubt = None
                state[0], state[1] = 0, 0
                await self._read(key)
                continue
            except BaseException:
                self._in_doubt[key] = (known, revision, n, msg_id)
                raise
            state[0], state[1], state[3] = known + n, ack.seq, self.monotonic()
            state[2] -= n
            if doubt is not None and state[2]:
                self._wake.set()     # what arrived meanwhile goes with the next flush
            return
        log.warning("rate counter %s: gave up adding %d after repeated conflicts; kept pending", key, n)
        self._wake.set()   # tried again on the next flush

    async def _applied(self, key: str, msg_id: str) -> bool:
        assert self._kv is not None
        try:
            msg = await self.js.get_last_msg(f"KV_{names.BUCKET_RATE_COUNTERS}",
                                             names.kv_subject(names.BUCKET_RATE_COUNTERS, key),
                                             direct=getattr(self._kv, "_direct", False))
        except Exception:  # noqa: BLE001 - gone or unreadable: not provably ours
            return False
        return bool(msg.headers) and msg.headers.get(Header.MSG_ID) == msg_id

    def _forget_old(self, force: bool = False) -> None:
        window, _ = self._window()
        for key in list(self._rates):
            state = self._rates[key]
            if int(key.rsplit(".", 1)[1]) < window - 1:
                lock = self._locks.get(key)
                if lock is not None and lock.locked():
                    continue  # its write is in flight: forget it next time
                if state[2]:
                    # Two windows old: no instance reads it any more, so no decision misses
                    # these hits; keeping them while the bus is down would grow without bound.
                    log.warning("rate counter %s: dropped %d hits not flushed in time", key, state[2])
                del self._rates[key]
                self._in_doubt.pop(key, None)
                lock = self._locks.get(key)
                if lock is not None:
                    del self._locks[key]
        if force and len(self._rates) >= self.max_keys:
            for key in list(self._rates)[: max(1, self.max_keys // 10)]:
                if not self._rates[key][2]:
                    del self._rates[key]

    async def _flush_loop(self) -> None:
        backoff = max(self._half, 0.01)
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(max(self._half, 0.01))
            try:
                await self.flush()
                await self._flush_shares()
            except Exception as exc:  # noqa: BLE001 - the bus is down or slow: keep it all pending
                # Nothing is lost (pending hits and dirty shares stay), and the loop must not
                # wait for the next hit to try again: wake itself after a growing pause.
                self.flush_failures += 1
                log.warning("rate counters: flush failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max(self.flush_interval, 0.01) * 5, 10.0)
                self._wake.set()
            else:
                backoff = max(self._half, 0.01)

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
        stale = self.monotonic() - self.share_max_age
        others = sum(n for node, (n, seen) in self._shares.get(key, {}).items()
                     if node != self.node_id and seen >= stale)
        return others + self._my_shares.get(key, 0)

    async def _flush_shares(self) -> None:
        assert self._kv is not None
        dirty, self._dirty_shares = self._dirty_shares, set()
        try:
            while dirty:
                kind, subject = share = dirty.pop()
                n = self._my_shares.get(share, 0)
                key = names.concurrency_key(kind, subject, self.node_id)
                try:
                    if n:
                        await self._kv.put(key, str(n).encode())
                    else:
                        with suppress(KeyNotFoundError):
                            await self._kv.delete(key)
                        if not self._my_shares.get(share):
                            self._my_shares.pop(share, None)
                except BaseException:
                    dirty.add(share)
                    raise
        finally:
            self._dirty_shares |= dirty   # what was not written is written on the retry

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.share_refresh)
            self._dirty_shares.update(k for k, n in self._my_shares.items() if n)
            stale = self.monotonic() - self.share_max_age
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
                    shares[node] = (int(entry.value), self.monotonic())
        finally:
            with suppress(Exception):
                await watcher.stop()
