"""Registrations in the ``sip_bindings`` bucket, seen alike by every farm member.

One key per account (``names.sip_binding_key``) holds all its registered contacts, so finding
where to send a call is one read, and a REGISTER changes them with one compare-and-set (two
members registering two phones of one account at once both land: the loser re-reads and
retries).  Each contact carries its own expiry: expired ones are ignored by readers and
dropped by the next write, so a phone that stops refreshing disappears without any member
having to notice.  (The bucket's streams have no per-message TTL: a key holds several
lifetimes at once.)

Each member remembers the binding sets it read or wrote lately (``cache_size`` accounts, each
for ``trust_seconds`` after it was last read, written or seen changing), kept current by a
watch of every ``b.>`` write (``watch``): a phone's refresh, or a call to it, then costs no
bus read -- that read was the largest bus cost of a REGISTER.  Nothing is remembered while
the watch is not running, and an entry older than ``trust_seconds`` is read again, which
bounds what a stalled watch could hide.  Writes stay compare-and-set on the revision the
member knows: a stale entry costs one failed write and a fresh read, never a lost change.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable

from nats.js import JetStreamContext, api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from colony.bus import names
from colony.bus.connection import unsubscribe_all

CAS_ATTEMPTS = 32


class Binding(BaseModel):
    """One registered contact::

        {"contact": "sip:alice@192.0.2.7:5062;transport=udp", "q": 1.0, "expires_at": 1732550000.0,
         "call_id": "a84b4c76e66710", "cseq": 12, "registered_at": 1732546400.0,
         "member": "sipfarm-1", "transport": "UDP", "source": "192.0.2.7:5062", "nat": false,
         "user_agent": "...", "instance": "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>", "reg_id": ""}

    ``member`` holds the phone's flow: for TCP the connection lives on that member only, so
    requests to the phone go out through it (``transport``/``source`` say where).  ``nat``: the
    phone is behind NAT (it asked for rport, or its packets came from elsewhere than its Via
    says), so UDP requests to it go to ``source`` rather than to its Contact.
    """

    contact: str = Field(max_length=1024)
    q: float = Field(1.0, ge=0, le=1)
    expires_at: float
    call_id: str = Field("", max_length=256)
    cseq: int = 0
    registered_at: float = 0.0
    member: str = ""
    transport: str = "UDP"
    source: str = ""
    nat: bool = False
    user_agent: str = Field("", max_length=256)
    # The device's ``+sip.instance`` (RFC 5626 §4.1, RFC 5627; unquoted, as sent) and its
    # ``reg-id``: with an instance the binding is the device's (and flow's), whatever its
    # Contact URI -- a REGISTER of the same instance and reg-id replaces it (RFC 5626 §6).
    instance: str = Field("", max_length=256)
    reg_id: str = Field("", max_length=16)


class BindingSet(BaseModel):
    """Value of ``b.<account>``: ``{"account": "alice@acme.example", "bindings": [<Binding>, ...]}``"""

    account: str
    bindings: list[Binding] = Field(default_factory=list)

    def live(self, now: float) -> list[Binding]:
        return [b for b in self.bindings if b.expires_at > now]


CACHE_SIZE = 50_000     # accounts whose binding sets a member remembers


class BindingStore:
    def __init__(self, kv: KeyValue, clock: Callable[[], float], *, js: JetStreamContext | None = None,
                 trust_seconds: float = 0.0, cache_size: int = CACHE_SIZE,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``js`` and ``trust_seconds`` > 0: remember binding sets, kept current by ``watch``."""
        self.kv, self.clock, self.js = kv, clock, js
        self.trust_seconds, self.cache_size, self.monotonic = trust_seconds, cache_size, monotonic
        # One change per account at a time in this member: its REGISTERs queue here instead
        # of failing each other's compare-and-set.  Weak: a lock lives while someone waits.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # key -> (binding set, revision (0: no key), monotonic time last confirmed)
        self._cache: OrderedDict[str, tuple[BindingSet, int, float]] = OrderedDict()
        self._watching = False

    async def watch(self) -> None:
        """Keep the remembered binding sets current (runs until cancelled; the shell restarts it).
        Only writes made after it started are delivered, and only remembered keys are read."""
        if self.js is None or self.trust_seconds <= 0 or self.cache_size <= 0:
            await asyncio.Event().wait()        # remembering is off: nothing to watch
        # The bucket's own subjects and stream (the KV layout every NATS client shares, ADR-8),
        # from now on only: nats-py's kv.watch would first deliver every account's bindings.
        prefix = f"$KV.{names.BUCKET_SIP_BINDINGS}."
        sub = await self.js.subscribe(prefix + names.SIP_BINDING_KEYS, stream=f"KV_{names.BUCKET_SIP_BINDINGS}",
                                      cb=functools.partial(self._seen, prefix=prefix),
                                      ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW)
        self._watching = True
        try:
            await asyncio.Event().wait()
        finally:
            self._watching = False
            self._cache.clear()
            await unsubscribe_all([sub])

    async def _seen(self, msg, prefix: str) -> None:
        key = msg.subject[len(prefix):]
        cached = self._cache.get(key)
        if cached is None:
            return                  # not remembered here: nothing to keep current
        revision = msg.metadata.sequence.stream
        if revision <= cached[1]:
            return                  # our own write, or older than what we know
        operation = (msg.headers or {}).get("KV-Operation") or (msg.headers or {}).get("Nats-Marker-Reason")
        try:
            value = (BindingSet(account=cached[0].account) if operation or not msg.data
                     else BindingSet.model_validate_json(msg.data))
        except ValueError:
            self._cache.pop(key, None)
            return
        self._cache[key] = (value, revision, self.monotonic())

    def _remember(self, key: str, value: BindingSet, revision: int | None) -> None:
        if not self._watching:
            return
        cached = self._cache.get(key)
        if cached is not None and cached[1] > (revision or 0):
            return                  # the watch brought a newer one while we read
        self._cache[key] = (value, revision or 0, self.monotonic())
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _remembered(self, key: str) -> tuple[BindingSet, int, float] | None:
        """The set remembered for ``key`` while it may be trusted (the watch runs and it was
        confirmed within ``trust_seconds``), else None: read the bus."""
        cached = self._cache.get(key) if self._watching else None
        if cached is None or cached[2] <= self.monotonic() - self.trust_seconds:
            return None
        self._cache.move_to_end(key)
        return cached

    async def _read(self, account: str, fresh: bool = False) -> tuple[BindingSet, int | None]:
        key = names.sip_binding_key(account)
        if not fresh:
            cached = self._remembered(key)
            if cached is not None:
                return cached[0], cached[1] or None
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            value, revision = BindingSet(account=account), None
        else:
            revision = entry.revision
            value = BindingSet.model_validate_json(entry.value) if entry.value else BindingSet(account=account)
        self._remember(key, value, revision)
        return value, revision

    async def lookup(self, account: str) -> list[Binding]:
        """Live contacts, best first (highest q, then the most recently registered)."""
        current, _ = await self._read(account)
        return sorted(current.live(self.clock()), key=lambda b: (-b.q, -b.registered_at))

    async def change(self, account: str, edit: Callable[[list[Binding]], list[Binding] | None]) -> list[Binding]:
        """Apply ``edit`` to the live contacts with compare-and-set; return what is stored.
        ``edit`` may raise to abort, or return None to keep what is stored (nothing is written
        either way); it may run more than once."""
        lock = self._locks.get(account)
        if lock is None:
            # Nobody is changing this account here: a refresh that the remembered set
            # answers (edit keeps it) needs no lock -- nothing is awaited, so nothing can
            # interleave.  Making and taking a lock per REGISTER was ~2 % of a member's CPU.
            remembered = self._remembered(names.sip_binding_key(account))
            if remembered is not None:
                live = remembered[0].live(self.clock())
                if edit(live) is None:
                    return live
            lock = self._locks[account] = asyncio.Lock()
        async with lock:
            return await self._change(account, edit)

    async def _change(self, account: str, edit: Callable[[list[Binding]], list[Binding] | None]) -> list[Binding]:
        for attempt in range(CAS_ATTEMPTS):
            # After a conflict, read the bus: what this member remembered was overtaken.
            current, revision = await self._read(account, fresh=attempt > 0)
            live = current.live(self.clock())
            edited = edit(live)
            if edited is None:
                return live
            updated = BindingSet(account=account, bindings=edited)
            data = updated.model_dump_json().encode()
            key = names.sip_binding_key(account)
            try:
                if revision is None:
                    written = await self.kv.create(key, data)
                else:
                    written = await self.kv.update(key, data, last=revision)
            except KeyWrongLastSequenceError:
                self._cache.pop(key, None)
                # Another member changed it: re-read after a short random pause, so members
                # racing on one account do not collide again in lockstep.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            self._remember(key, updated, written)
            return updated.bindings
        raise RuntimeError(f"bindings of {account} kept changing under {CAS_ATTEMPTS} attempts")
