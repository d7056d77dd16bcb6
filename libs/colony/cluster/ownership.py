"""Per-account single-writer leases (``account_owners``) and where an unowned account goes.

Theory of operation
-------------------
At most one mailstore writes an account at a time (DESIGN §4).  It holds a lease on the key
``names.account_owner_key(address)`` in ``account_owners``, a bucket whose max age is the
lease length (``account_lease_ttl``): every renewal is a new revision and restarts the age,
so a holder that stops renewing loses the key without anyone deleting it.  All decisions are
compare-and-set writes (``colony.cluster.lease.Lease``); the revision of the winning
acquisition is the account's **epoch**, which the mail journal stamps on every record
(``colony.storage.journal``), so a paused old owner that wakes up cannot corrupt what the
new owner wrote.

Taking an account (``acquire``):

* ``vacant``: no key, a ``create()``;
* ``taken-over``: the holder is proven gone -- work forwarded to its delivery subject found
  *no responders* (the server dropped its subscriptions: its connection is closed), or the
  holder is an earlier incarnation of this very node id -- a CAS on the revision seen;
* ``expired``: the holder is silent (paused, partitioned) and ``TakeoverWatch`` has seen the
  same revision unrenewed for a whole lease length *on our own clock*; by then the holder has
  fenced itself (it stops ``safety_margin`` before its lease could end, measured from when it
  *sent* the renewal), so a CAS on that revision is safe without waiting for the server.

Every acquisition and release is an event on ``colony.cluster.owner`` (``AccountAcquired``,
``AccountReleased``).  An unowned account is placed with its MAIL partition, by rendezvous
hashing with bounded loads over the READY mailstores (``place``, ``partition_stores``), so
every instance that sees the same members sends it to the same one, every store takes its
share, and a membership change moves little more than it must.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.client import Client
from nats.js.kv import KeyValue
from pydantic import ValidationError

from colony.bus import names
from colony.cluster.lease import Lease, LeaseEntry, LeaseLost, read_lease
from colony.cluster.membership import NodeRecord, NodeState
from colony.cluster.view import read_nodes
from colony.events import AccountAcquired, AccountReleased, Event
from colony.hashing import rank, weight
from colony.keyed_lock import KeyedLock
from colony.settings import Role, Settings

log = logging.getLogger("colony.ownership")

Publish = Callable[[str, Event], Awaitable[None]]


def place(address: str, ready_mailstores: Iterable[str]) -> str | None:
    """The READY mailstore an unowned account belongs on: the one that consumes its mail
    partition (``partition_stores``), so its mail is stored where it is fetched, without a
    forward."""
    stores = partition_stores(ready_mailstores)
    return stores[names.mail_partition(address)] if stores else None


def consumes_partition(partition: int, node_id: str, ready_mailstores: Iterable[str]) -> bool:
    """Whether ``node_id`` fetches ``partition``'s mail (the same choice as ``place``)."""
    return partition_stores(set(ready_mailstores) | {node_id})[partition] == node_id


def partition_stores(ready_mailstores: Iterable[str]) -> tuple[str, ...]:
    """The store that fetches each MAIL partition (indexed by partition; empty without
    stores): the same for every caller that sees the same stores, in any order."""
    return _balanced(tuple(sorted(set(ready_mailstores))))


@functools.lru_cache(maxsize=64)
def _balanced(stores: tuple[str, ...]) -> tuple[str, ...]:
    """Rendezvous hashing with bounded loads, so every store fetches ``P // n`` of the ``P``
    partitions or one more: plain rendezvous hashing gave three stores 4, 3 and 1 of the 8
    (half of the cluster's mail on one store) and a fifth store none at all.

    A matching by deferred acceptance (Gale-Shapley): partitions ask stores in their
    rendezvous order, a store keeps the partitions it weighs highest (the same weights) up to
    its share and turns the rest away to ask their next choice.  Shares are filled in two
    rounds, up to the floor and then the remainder, so no store ends below the floor.  The
    outcome does not depend on the order of asking, and when a store leaves mostly its own
    partitions move (a greedy fill in partition order moved about 60 % more: each late
    partition's choice depended on every earlier one's)."""
    if not stores:
        return ()
    count = names.MAIL_PARTITIONS
    keys = [names.mail_partition_key(p) for p in range(count)]
    preferences = [rank(key, stores) for key in keys]
    owners: list[str | None] = [None] * count
    floor, extra = divmod(count, len(stores))
    for share in (floor, floor + 1) if extra else (floor,):
        settled = dict.fromkeys(stores, 0)         # partitions an earlier round gave each store
        for owner in owners:
            if owner is not None:
                settled[owner] += 1
        held: dict[str, list[int]] = {store: [] for store in stores}
        asking = [p for p in range(count) if owners[p] is None]
        asked = dict.fromkeys(asking, 0)
        while asking:
            p = asking.pop()
            while asked[p] < len(stores):
                store = preferences[p][asked[p]]
                asked[p] += 1
                if settled[store] + len(held[store]) < share:
                    held[store].append(p)
                    break
                weakest = min(held[store], key=lambda q: weight(keys[q], store), default=None)
                if weakest is not None and weight(keys[p], store) > weight(keys[weakest], store):
                    held[store].remove(weakest)
                    held[store].append(p)
                    asking.append(weakest)
                    break
        for store, partitions in held.items():
            for p in partitions:
                owners[p] = store
    return tuple(owner for owner in owners if owner is not None)


class TakeoverWatch:
    """Pure: when did we first see each lease revision?  A revision unchanged for a whole
    lease length (on our clock) belongs to a holder that has stopped acting.  Bounded: the
    oldest sightings are forgotten first (we only watch accounts we have work for)."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def lapsed(self, key: str, revision: int, now: float) -> bool:
        prior = self._seen.get(key)
        if prior is None or prior[0] != revision:
            self._seen[key] = (revision, now)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return False
        return now - prior[1] >= self.ttl

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)


class AccountOwnership:
    """The leases this instance holds, and the writes that take, renew and release them."""

    def __init__(self, kv: KeyValue, node_id: str, settings: Settings, publish: Publish,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settings.account_lease_safety_margin >= settings.account_lease_ttl:
            raise ValueError("COLONY_ACCOUNT_LEASE_SAFETY_MARGIN must be shorter than COLONY_ACCOUNT_LEASE_TTL")
        self.kv = kv
        self.node_id = node_id
        self.ttl = settings.account_lease_ttl
        self.margin = settings.account_lease_safety_margin
        self.publish = publish
        self.clock = clock
        self.leases: dict[str, Lease] = {}
        self.watch = TakeoverWatch(self.ttl)
        self._gates = KeyedLock()

    @contextlib.asynccontextmanager
    async def deciding(self, address: str):
        """One ownership decision per account at a time in this process: without it, two
        deliveries racing for a vacant account would see our own fresh lease and "take it
        over" from ourselves."""
        async with self._gates.hold(address):
            yield

    def holding(self, address: str) -> Lease | None:
        """Our lease on ``address`` if we may write it now (by our own clock)."""
        lease = self.leases.get(address)
        return lease if lease is not None and lease.held else None

    def still_holds(self, address: str, lease: Lease) -> bool:
        """``lease`` is still our lease on ``address``: not released, lost or replaced since it
        was taken (a release drops it from ``leases`` before its write to the bus ends)."""
        return self.leases.get(address) is lease

    async def owner(self, address: str) -> LeaseEntry | None:
        return await read_lease(self.kv, names.account_owner_key(address))

    async def acquire(self, address: str, seen: LeaseEntry | None = None, how: str = "vacant") -> Lease | None:
        """Take ``address``: create the key (``seen`` None) or replace revision ``seen``.
        None if someone else won the race."""
        lease = Lease(self.kv, names.account_owner_key(address), self.node_id, self.ttl, self.margin, clock=self.clock)
        if not await lease.try_acquire(None if seen is None else seen.revision):
            return None
        self.leases[address] = lease
        self.watch.forget(address)
        previous = seen.record.holder if seen is not None else None
        log.info("acquired %s (epoch %d, %s%s)", address, lease.epoch, how, f" from {previous}" if previous else "")
        await self.publish(names.cluster_event_subject(names.OWNER_EVENTS), AccountAcquired(
            address=address, node_id=self.node_id, epoch=lease.epoch, how=how, previous=previous))
        return lease

    async def rotate(self, address: str) -> Lease | None:
        """A new epoch for an account we hold (a CAS on our own revision, so nobody else can
        slip in): the journal starts a fresh segment and drops the old one.  None if the
        lease turned out not to be ours any more."""
        lease = self.leases.get(address)
        if lease is None or not lease.held:
            return None
        previous = lease.epoch
        if not await lease.try_acquire(take_over_revision=lease.revision):
            return None
        log.info("rotated %s to epoch %d (was %d)", address, lease.epoch, previous)
        await self.publish(names.cluster_event_subject(names.OWNER_EVENTS), AccountAcquired(
            address=address, node_id=self.node_id, epoch=lease.epoch, how="rotated", previous=self.node_id))
        return lease

    def lapsed(self, address: str, seen: LeaseEntry) -> bool:
        """True once ``seen``'s revision has stayed unrenewed for a lease length (see module doc)."""
        return self.watch.lapsed(address, seen.revision, self.clock())

    async def renew_all(self) -> list[str]:
        """Renew every lease; returns the addresses lost (their handles must be closed now)."""
        lost = []
        epochs = {a: lease.epoch for a, lease in self.leases.items()}

        async def one(address: str, lease: Lease) -> None:
            epoch = lease.epoch
            late = not lease.held
            try:
                # Late (our renewals ran behind on a loaded machine): still ours if nobody
                # took it -- the CAS says so -- and then without a new epoch (Lease.renew).
                await lease.renew(late_ok=True)
                if late:
                    log.warning("renewed %s after our own deadline (epoch %d kept: nobody had taken it)",
                                address, epoch)
            except LeaseLost as exc:
                log.warning("lost %s (epoch %d): %s", address, epoch, exc)
                lost.append(address)
            except Exception as exc:  # the bus is away: our tenure still bounds how long we write
                log.warning("could not renew %s: %s", address, exc)
                if not lease.held:
                    lost.append(address)

        renewing = list(self.leases.items())
        await asyncio.gather(*(one(a, lease) for a, lease in renewing))
        # A lease released (or replaced) meanwhile was not lost: it was given up on purpose.
        renewed = dict(renewing)
        lost = [a for a in lost if self.leases.get(a) is renewed[a]]
        for address in lost:
            self.leases.pop(address, None)
            await self.publish(names.cluster_event_subject(names.OWNER_EVENTS), AccountReleased(
                address=address, node_id=self.node_id, epoch=epochs.get(address, 0), reason="lost"))
        return lost

    async def release(self, address: str, reason: str) -> None:
        lease = self.leases.pop(address, None)
        if lease is None:
            return
        epoch = lease.epoch
        await lease.release()
        await self.publish(names.cluster_event_subject(names.OWNER_EVENTS), AccountReleased(
            address=address, node_id=self.node_id, epoch=epoch, reason=reason))


class MailstoreMembers:
    """The READY mailstores that are still heartbeating, from ``cluster_nodes``.

    A member whose heartbeat has not changed for ``stale_after`` seconds on *our* clock is
    left out even while its record still says READY (no controller has marked it FAILED yet,
    or none runs): each store fetches the MAIL partitions rendezvous hashing gives it among
    these, so a paused store's partitions must pass to the others without waiting for anyone.

    Records arrive by a watch of the bucket (``watch``, run by the owner: every instance's
    heartbeat is pushed to us) and ``update()`` recomputes the set from what was seen, without
    a bus round trip.  Reading every record every second instead (a stream listing and one
    get per instance, per mail store) was a cost each added store paid again.  ``refresh()``
    reads them all at once: at start, and now and then in case the watch missed something.
    """

    def __init__(self, nc: Client, stale_after: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.nc = nc
        self.stale_after = stale_after
        self.clock = clock
        self.ready: tuple[str, ...] = ()
        self._records: dict[str, NodeRecord] = {}          # id -> latest record of a mailstore
        self._heard: dict[str, tuple[object, float]] = {}  # id -> (last heartbeat seen, when it changed)

    def observe(self, record: NodeRecord) -> None:
        """One record as written (any role; only mail stores are kept)."""
        if record.role != Role.MAILSTORE:
            return
        known = self._records.get(record.id)
        if known is not None and record.heartbeat_at < known.heartbeat_at:
            return  # older than what a full read already showed us (the watch lagging behind it)
        self._records[record.id] = record
        last = self._heard.get(record.id)
        if last is None or last[0] != record.heartbeat_at:
            self._heard[record.id] = (record.heartbeat_at, self.clock())

    def forget(self, node_id: str) -> None:
        """The record was deleted (or expired from the bucket)."""
        self._records.pop(node_id, None)
        self._heard.pop(node_id, None)

    def update(self) -> tuple[str, ...]:
        """The READY, still-heartbeating mail stores among the records seen so far."""
        now = self.clock()
        self.ready = tuple(sorted(
            r.id for r in self._records.values()
            if r.state == NodeState.READY and now - self._heard[r.id][1] <= self.stale_after))
        return self.ready

    async def refresh(self) -> tuple[str, ...]:
        """Read every record now (start, and a safety net beside the watch)."""
        records = await read_nodes(self.nc)
        seen = set()
        for r in records:
            self.observe(r)
            seen.add(r.id)
        for node_id in [n for n in self._records if n not in seen]:
            self.forget(node_id)
        return self.update()

    async def watch(self) -> None:
        """Follow ``cluster_nodes`` (runs until cancelled; restart it if it raises)."""
        kv = await self.nc.jetstream().key_value(names.BUCKET_NODES)
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the initial values have all been delivered
                    continue
                if not entry.value or entry.operation in ("DEL", "PURGE"):
                    for node_id in [n for n in self._records if names.node_key(n) == entry.key]:
                        self.forget(node_id)
                    continue
                try:
                    self.observe(NodeRecord.decode(entry.value))
                except ValidationError:
                    continue
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
