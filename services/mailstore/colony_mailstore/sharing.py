"""Shared folders across mail stores: the grant index and forwarding to the owner.

A grantee's IMAP session runs on the grantee's mail store; the shared mailbox belongs to
another account, which only *its* owning store may write (the single-writer rule).  So the
grantee's session reaches it through ``RemoteView`` -- the ``session.Store`` of one owner's
``SharedView`` -- whose every call is one request to the owner's store
(``names.mailstore_shared_subject(node)``, or a direct call when this store owns the account
too).  The owner runs the call under the account's lock against
``colony.protocols.imap.shared.SharedView`` (rights checked there, from the journal's ACL)
and commits before it answers, so each call is atomic at the owner and nothing staged
waits across calls.  Routing is delivery's: the lease holder, or for a vacant account the
rendezvous choice, which takes the lease (``Delivery.locate``).

Wire format (JSON): request ``{"owner", "grantee", "op", "args"}``; answer ``{"ok": value}``
or ``{"error": text, "kind": "refused" | "unavailable"}``.  Bodies travel base64.

**The grant index** (bucket ``acl_grants``) answers "whose folders may this user see?"
without asking every account: key ``names.acl_grant_key(grantee)`` (the grantee's address,
or ``anyone`` of a domain) holds the sorted list of owners that grant it something.  The
owner's store updates it after any command that changed who is granted (a CAS per grantee
key: several owners write one key).  It is a hint: the rights are always read from the
owner's journal, so a stale owner in the list shows nothing and costs one request.

Limits: a grantee's session hears of changes others make in a shared folder at its next
command, or in IDLE within ``imap_server.SHARED_IDLE_POLL`` (nothing wakes it across
stores: the watch loop has it look again); a command holding the
grantee's account that waits more than ``LOCK_WAIT`` for the owner's account (two users
copying into each other's folders at the same instant) is answered ``NO [UNAVAILABLE]``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from opentelemetry import trace

from colony.bus import names
from colony.protocols.imap import rights
from colony.protocols.imap.shared import SharedError, SharedView
from colony.storage.mailbox import MailboxInfo
from colony.telemetry import extract_context, inject_headers

log = logging.getLogger("colony.mailstore.sharing")
tracer = trace.get_tracer("colony.mailstore")

LOCK_WAIT = 10.0          # seconds a shared call waits for the owner's account
REQUEST_TIMEOUT = 30.0    # seconds for one forwarded call (a body can be large)
INDEX_TTL = 2.0           # seconds a grantee's list of owners is reused by its sessions


class Unavailable(SharedError):
    """The owner's store could not be reached or could not serve now (retry)."""


def grantees(mail) -> set[str]:
    """Who is granted anything on any mailbox of this account (``anyone`` included)."""
    return {ident for box in mail.state.boxes.values() for ident, granted in box.acl.items() if granted}


class GrantIndex:
    def __init__(self, kv, clock: Callable[[], float] = time.monotonic) -> None:
        self.kv = kv
        self.clock = clock
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def owners(self, grantee: str) -> list[str]:
        grantee = grantee.lower()
        hit = self._cache.get(grantee)
        if hit is not None and self.clock() - hit[0] < INDEX_TTL:
            return hit[1]
        domain = grantee.rpartition("@")[2]
        found: set[str] = set()
        for key in (names.acl_grant_key(grantee), names.acl_grant_key(rights.ANYONE, domain)):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                found.update(json.loads(entry.value))
        owners = sorted(o for o in found if o != grantee and o.rpartition("@")[2] == domain)
        self._cache[grantee] = (self.clock(), owners)
        if len(self._cache) > 10_000:
            self._cache.clear()
        return owners

    async def update(self, owner: str, before: set[str], after: set[str]) -> None:
        """Record that ``owner`` now grants ``after`` (and no longer ``before - after``)."""
        domain = owner.rpartition("@")[2]
        for ident in sorted(after | before):
            await self._change(names.acl_grant_key(ident, domain), owner.lower(), ident in after)

    async def _change(self, key: str, owner: str, present: bool) -> None:
        for _ in range(20):
            try:
                entry = await self.kv.get(key)
                listed, revision = set(json.loads(entry.value or b"[]")), entry.revision
            except KeyNotFoundError:
                listed, revision = set(), None
            if (owner in listed) == present:
                return
            listed = listed | {owner} if present else listed - {owner}
            value = json.dumps(sorted(listed)).encode()
            try:
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
                return
            except (KeyWrongLastSequenceError, Exception) as exc:   # another owner wrote first
                if not _conflict(exc):
                    raise
        raise RuntimeError(f"grant index key {key} kept changing")


def _conflict(exc: Exception) -> bool:
    return isinstance(exc, KeyWrongLastSequenceError) or "wrong last sequence" in str(exc).lower() \
        or "key exists" in str(exc).lower()


# --- the owner's side ----------------------------------------------------------------------------

def run_call(mail, owner: str, grantee: str, op: str, args: list, marks=None):
    """One forwarded call against the owner's mail (worker thread, account lock held);
    writes are committed before the answer."""
    view = SharedView(mail, owner, grantee, marks)
    if op == "mailboxes":    # with each mailbox's rights: LIST needs both, in one round trip
        return [{**asdict(b), "rights": view.myrights(b.name)} for b in view.mailboxes()]
    if op == "myrights":
        return view.myrights(args[0])
    if op == "messages":
        return [[m.uid, sorted(m.flags), m.date.isoformat(), m.size, m.modseq] for m in view.messages(args[0])]
    if op == "body":
        return base64.b64encode(view.body(args[0], args[1])).decode()
    if op == "recent":
        return sorted(view.recent(args[0], args[1], args[2]))
    if op == "acl":
        return view.acl(args[0])
    if op == "append":
        name, data, flags, date = args
        stored = view.append(name, base64.b64decode(data), flags, datetime.fromisoformat(date) if date else None)
        result = stored.uid
    elif op == "copy" or op == "move":
        result = {str(k): v for k, v in getattr(view, op)(args[0], args[1], args[2]).items()}
    elif op in ("create_mailbox", "rename_mailbox", "delete_mailbox", "set_acl", "store_flags", "expunge"):
        result = getattr(view, op)(*args)
    else:
        raise SharedError(f"unknown shared call {op!r}")
    view.commit()
    return result


# --- the grantee's side --------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteMessage:
    uid: int
    flags: frozenset[str]
    date: datetime
    size: int
    modseq: int


@dataclass(frozen=True)
class _Stored:
    uid: int


Call = Callable[[str, str, str, list], Awaitable[dict]]    # (owner, grantee, op, args) -> answer


class RemoteView:
    """``SharedView`` of ``owner`` for ``grantee``, called from the session's worker thread;
    each method is one call on the owner's store (through ``call`` on the event loop)."""

    def __init__(self, call: Call, loop: asyncio.AbstractEventLoop, owner: str, grantee: str) -> None:
        self._call, self._loop = call, loop
        self.owner, self.grantee = owner.lower(), grantee.lower()
        # Rights learnt with the mailbox list.  A view lives for one command (the session's
        # store is made per command), so a grant or revoke still counts from the next one.
        self._rights: dict[str, str] = {}

    def _do(self, op: str, *args):
        if op not in ("mailboxes", "myrights", "messages", "body", "recent", "acl"):
            self._rights.clear()     # a write may change what is listed or granted
        future = asyncio.run_coroutine_threadsafe(self._call(self.owner, self.grantee, op, list(args)), self._loop)
        try:
            answer = future.result(REQUEST_TIMEOUT + LOCK_WAIT)
        except TimeoutError:
            future.cancel()
            raise Unavailable("[UNAVAILABLE] The shared mailbox's server did not answer; try again") from None
        if "error" in answer:
            if answer.get("kind") == "unavailable":
                raise Unavailable(f"[UNAVAILABLE] {answer['error']}")
            raise SharedError(answer["error"])
        return answer["ok"]

    def owner_of(self, name: str) -> str:
        return self.owner

    def myrights(self, name: str) -> str:
        if name in self._rights:
            return self._rights[name]
        return self._do("myrights", name)

    def mailboxes(self):
        boxes = self._do("mailboxes")
        self._rights = {b["name"]: b.pop("rights") for b in boxes}
        return [MailboxInfo(**b) for b in boxes]

    def messages(self, name: str):
        return [RemoteMessage(uid, frozenset(flags), datetime.fromisoformat(date), size, modseq)
                for uid, flags, date, size, modseq in self._do("messages", name)]

    def body(self, name: str, uid: int) -> bytes:
        return base64.b64decode(self._do("body", name, uid))

    def recent(self, name: str, uids: list[int], claim: bool) -> set[int]:
        return set(self._do("recent", name, list(uids), claim))

    def acl(self, name: str) -> dict[str, str]:
        return self._do("acl", name)

    def subscriptions(self) -> set[str]:
        return set()

    def subscribe(self, name: str, on: bool = True) -> None:
        raise SharedError("Subscriptions are the subscriber's own")

    def append(self, name: str, data: bytes, flags=(), date: datetime | None = None):
        return _Stored(self._do("append", name, base64.b64encode(data).decode(), list(flags),
                                date.isoformat() if date else None))

    def copy(self, src: str, uids, dst: str) -> dict[int, int]:
        return {int(k): v for k, v in self._do("copy", src, list(uids), dst).items()}

    def move(self, src: str, uids, dst: str) -> dict[int, int]:
        return {int(k): v for k, v in self._do("move", src, list(uids), dst).items()}

    def create_mailbox(self, name: str, special_use: str | None = None) -> None:
        self._do("create_mailbox", name, special_use)

    def rename_mailbox(self, old: str, new: str) -> None:
        self._do("rename_mailbox", old, new)

    def delete_mailbox(self, name: str) -> None:
        self._do("delete_mailbox", name)

    def set_acl(self, name: str, identifier: str, granted: str) -> None:
        self._do("set_acl", name, identifier, granted)

    def store_flags(self, name: str, uids, flags, mode: str = "set") -> None:
        self._do("store_flags", name, list(uids), list(flags), mode)

    def expunge(self, name: str, uids=None) -> list[int]:
        return self._do("expunge", name, None if uids is None else list(uids))

    def commit(self) -> None:
        """Every call committed at the owner before it answered."""


# --- the service: both sides on one mail store -----------------------------------------------------

class Sharing:
    """Serves other stores' calls on this store's accounts and makes this store's grantees'
    calls (to itself directly, to another store over the bus)."""

    def __init__(self, nc, node_id: str, accounts, delivery, index: GrantIndex,
                 accepting: Callable[[], bool], marks_for: Callable[[str], object] | None = None,
                 on_commit: Callable[[str], None] | None = None) -> None:
        self.nc = nc
        self.node_id = node_id
        self.accounts = accounts
        self.delivery = delivery
        self.index = index
        self.accepting = accepting
        self.marks_for = marks_for or (lambda owner: None)
        self.on_commit = on_commit or (lambda owner: None)

    async def owners(self, grantee: str) -> list[str]:
        try:
            return await self.index.owners(grantee)
        except Exception as exc:    # the bus is away: the user's own mail still works
            log.warning("grant index unreadable for %s: %s", grantee, exc)
            return []

    async def record(self, owner: str, before: set[str], after: set[str]) -> None:
        if before == after:
            return
        try:
            await self.index.update(owner, before, after)
        except Exception as exc:   # the ACL is in the journal; the next ACL change writes it again
            log.warning("grant index not updated for %s: %s", owner, exc)

    # the grantee's side
    async def call(self, owner: str, grantee: str, op: str, args: list) -> dict:
        with tracer.start_as_current_span("imap shared-folder call", attributes={"imap.shared.op": op}):
            return await self._call(owner, grantee, op, args)

    async def _call(self, owner: str, grantee: str, op: str, args: list) -> dict:
        for _ in range(8):
            target = await self.delivery.locate(owner)
            if target.startswith("!"):
                return {"error": f"The owner's mail is not available ({target[1:]}); try again",
                        "kind": "unavailable"}
            if target == self.node_id:
                answer = await self.serve(owner, grantee, op, args)
            else:
                request = json.dumps({"owner": owner, "grantee": grantee, "op": op, "args": args}).encode()
                try:
                    msg = await self.nc.request(names.mailstore_shared_subject(target), request,
                                                timeout=REQUEST_TIMEOUT + LOCK_WAIT, headers=inject_headers())
                except Exception as exc:    # no responders, timeout: the lease will tell next round
                    log.info("shared call to %s for %s: %s", target, owner, exc)
                    await asyncio.sleep(0.25)
                    continue
                answer = json.loads(msg.data)
            if answer.get("kind") == "moved":   # the lease moved between our look and its answer
                await asyncio.sleep(0.25)
                continue
            return answer
        return {"error": "The owner's mail store did not answer; try again", "kind": "unavailable"}

    # the owner's side
    async def handle(self, msg) -> None:
        try:
            request = json.loads(msg.data)
            with tracer.start_as_current_span("mailstore shared-folder call", context=extract_context(msg.headers),
                                              attributes={"imap.shared.op": str(request.get("op"))}):
                answer = await self.serve(request["owner"].lower(), request["grantee"].lower(), request["op"],
                                          list(request["args"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            answer = {"error": f"bad shared call: {exc}", "kind": "refused"}
        await msg.respond(json.dumps(answer).encode())

    async def serve(self, owner: str, grantee: str, op: str, args: list) -> dict:
        if owner.rpartition("@")[2] != grantee.rpartition("@")[2] or owner == grantee:
            return {"error": "[NONEXISTENT] No such mailbox", "kind": "refused"}
        if not self.accepting() or not await self.delivery.claim(owner):
            return {"error": "moved", "kind": "moved"}
        lease = self.accounts.ownership.holding(owner)
        if lease is None:
            return {"error": "moved", "kind": "moved"}
        try:
            acct = await self.accounts.get(owner, lease)
        except Exception as exc:
            log.info("shared call on %s: account unavailable: %s", owner, exc)
            return {"error": "moved", "kind": "moved"}
        try:
            await asyncio.wait_for(acct.lock.acquire(), LOCK_WAIT)
        except (asyncio.TimeoutError, TimeoutError):
            return {"error": "The shared mailbox is busy; try again", "kind": "unavailable"}
        try:
            if self.accounts.open.get(owner) is not acct:
                return {"error": "moved", "kind": "moved"}
            acct.last_used = self.accounts.clock()
            before = grantees(acct.mail)
            result = await asyncio.to_thread(run_call, acct.mail, owner, grantee, op, args, self.marks_for(owner))
            after = grantees(acct.mail)
        except ValueError as exc:     # SharedError, MailboxError: the client's answer
            return {"error": str(exc)[:200], "kind": "refused"}
        except Exception:
            log.exception("shared call %s on %s for %s failed", op, owner, grantee)
            broken = True
        else:
            broken = False
        finally:
            acct.lock.release()
        if broken:   # a failed commit breaks the handle: reopen on the next call
            await self.accounts.close(owner, "shared call error", release=False)
            return {"error": "Internal error; try again", "kind": "unavailable"}
        await self.record(owner, before, after)
        return {"ok": result}
