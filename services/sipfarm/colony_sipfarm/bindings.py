"""Registrations in the ``sip_bindings`` bucket, seen alike by every farm member.

One key per account (``names.sip_binding_key``) holds all its registered contacts, so finding
where to send a call is one read, and a REGISTER changes them with one compare-and-set (two
members registering two phones of one account at once both land: the loser re-reads and
retries).  Each contact carries its own expiry: expired ones are ignored by readers and
dropped by the next write, so a phone that stops refreshing disappears without any member
having to notice.  (The bucket's streams have no per-message TTL: a key holds several
lifetimes at once.)
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from colony.bus import names

CAS_ATTEMPTS = 32


class Binding(BaseModel):
    """One registered contact::

        {"contact": "sip:alice@192.0.2.7:5062;transport=udp", "q": 1.0, "expires_at": 1732550000.0,
         "call_id": "a84b4c76e66710", "cseq": 12, "registered_at": 1732546400.0,
         "member": "sipfarm-1", "transport": "UDP", "source": "192.0.2.7:5062", "nat": false,
         "user_agent": "..."}

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


class BindingSet(BaseModel):
    """Value of ``b.<account>``: ``{"account": "alice@acme.example", "bindings": [<Binding>, ...]}``"""

    account: str
    bindings: list[Binding] = Field(default_factory=list)

    def live(self, now: float) -> list[Binding]:
        return [b for b in self.bindings if b.expires_at > now]


class BindingStore:
    def __init__(self, kv: KeyValue, clock: Callable[[], float]) -> None:
        self.kv, self.clock = kv, clock
        # One change per account at a time in this member: its REGISTERs queue here instead
        # of failing each other's compare-and-set.  Weak: a lock lives while someone waits.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def _read(self, account: str) -> tuple[BindingSet, int | None]:
        try:
            entry = await self.kv.get(names.sip_binding_key(account))
        except KeyNotFoundError:
            return BindingSet(account=account), None
        if not entry.value:
            return BindingSet(account=account), entry.revision
        return BindingSet.model_validate_json(entry.value), entry.revision

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
            lock = self._locks[account] = asyncio.Lock()
        async with lock:
            return await self._change(account, edit)

    async def _change(self, account: str, edit: Callable[[list[Binding]], list[Binding] | None]) -> list[Binding]:
        for attempt in range(CAS_ATTEMPTS):
            current, revision = await self._read(account)
            live = current.live(self.clock())
            edited = edit(live)
            if edited is None:
                return live
            updated = BindingSet(account=account, bindings=edited)
            data = updated.model_dump_json().encode()
            try:
                if revision is None:
                    await self.kv.create(names.sip_binding_key(account), data)
                else:
                    await self.kv.update(names.sip_binding_key(account), data, last=revision)
            except KeyWrongLastSequenceError:
                # Another member changed it: re-read after a short random pause, so members
                # racing on one account do not collide again in lockstep.
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            return updated.bindings
        raise RuntimeError(f"bindings of {account} kept changing under {CAS_ATTEMPTS} attempts")
