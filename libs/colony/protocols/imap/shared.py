"""Shared folders (RFC 4314 rights, RFC 2342 "Other Users" namespace), pure: no I/O, no locks.

Theory of operation
-------------------
A user sees a colleague's mailbox as ``Other Users/<owner address>/<the owner's name>``: the
"Other Users" namespace of RFC 2342 with the owner's address as its second level, so every
shared name says whose mail it is and cannot collide with the user's own names (a personal
name never starts with the prefix: ``OTHER_USERS`` is reserved in the personal namespace).

Two views make that work, each a ``session.Store``:

* ``SharedView`` is the *owner's* side: one account's ``AccountMail`` as one grantee sees it.
  It lists only the mailboxes the grantee holds a right on (under the prefix), answers
  ``myrights`` from the mailbox's ACL (``rights.effective``: the grantee's entry and
  ``anyone``, never across domains), and maps names back before touching the journal.  It
  runs where the owner's mail is written -- the owner's mail store, holding the lease -- so the
  single-writer rule holds whoever asks.  The session checks the rights first (``rights.NEEDS``,
  with the protocol's own answers); the view checks them again on every call, so the owner's
  store never relies on the asking store's word, and it keeps only the flags the grantee may
  set on what it writes (APPEND, COPY, MOVE, STORE).
* ``CompositeStore`` is the *grantee's* side: the user's own store for every name outside
  the prefix, and for ``Other Users/<owner>/...`` the ``SharedView`` that ``open_view(owner)``
  returns (in-process when this store owns that account too, otherwise a proxy to the
  owner's mail store).  Subscriptions stay the grantee's own (they are just names).
  COPY/MOVE between two accounts is a read in one and an append in the other (MOVE then
  deletes and expunges the source): two commits, not one; a crash between them leaves a copy
  in both places, never none.

``\\Seen`` is private per user (RFC 4314 §4 and §5.1.2; Cyrus and Dovecot do the same): the
message's own ``\\Seen`` flag is the owner's, and each grantee's is kept beside it in the owner's
journal (``AccountMail.store_seen``, written by the owner's store like any other change), so a
colleague reading a shared folder never marks it read for the owner or for anyone else.  The
view shows the grantee their own ``\\Seen`` instead of the owner's, and a message's MODSEQ for
them is the higher of the message's own and that of their last change to it: CONDSTORE and
QRESYNC see each user's own changes and no one else's.  The quota that counts is the owner's
account.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime

from colony.protocols.imap import rights

SEEN = "\\Seen"
OTHER_USERS = "Other Users"
DELIMITER = "/"
PREFIX = OTHER_USERS + DELIMITER


def shared_name(owner: str, name: str) -> str:
    """The name a grantee sees for ``owner``'s mailbox ``name``."""
    return f"{PREFIX}{owner.lower()}{DELIMITER}{name}"


def split_shared(name: str) -> tuple[str, str] | None:
    """``(owner, owner's name)`` for a name in the Other Users namespace, else ``None``."""
    if not name.startswith(PREFIX):
        return None
    owner, sep, inner = name[len(PREFIX):].partition(DELIMITER)
    if not sep or not inner or "@" not in owner:
        return None
    return owner.lower(), inner


def is_namespace_node(name: str) -> bool:
    """``Other Users`` and ``Other Users/<owner>``: levels of the namespace, never mailboxes."""
    return name == OTHER_USERS or (name.startswith(PREFIX) and DELIMITER not in name[len(PREFIX):])


class SharedError(ValueError):
    """Refused by the shared view (the text is shown to the client)."""


class SharedView:
    """The owner's mail (an ``AccountMail``-like object) as ``grantee`` sees it."""

    def __init__(self, mail, owner: str, grantee: str, marks=None) -> None:
        self.mail = mail
        self.owner = owner.lower()
        self.grantee = grantee.lower()
        self.marks = marks

    # names ---------------------------------------------------------------------------------
    def _inner(self, name: str) -> str:
        parsed = split_shared(name)
        if parsed is None or parsed[0] != self.owner:
            raise SharedError(f"{name!r} is not a mailbox of {self.owner}")
        return parsed[1]

    def _outer(self, name: str) -> str:
        return shared_name(self.owner, name)

    def owner_of(self, name: str) -> str:
        return self.owner

    def myrights(self, name: str) -> str:
        try:
            return rights.effective(self.mail.acl(self._inner(name)), self.grantee, self.owner)
        except ValueError:       # no such mailbox (or not this owner's): no rights at all
            return ""

    def _need(self, name: str, needed: str) -> str:
        held = self.myrights(name)
        why = "[NONEXISTENT] No such mailbox" if not held else rights.refusal(held, needed)
        if why is not None:
            raise SharedError(why)
        return held

    def _parent_needs_k(self, name: str) -> None:
        parent = self._inner(name).rpartition(DELIMITER)[0]
        if not parent:
            raise SharedError("[NOPERM] Only the owner creates top-level mailboxes")
        self._need(self._outer(parent), "k")

    def _drop_unsettable(self, inner: str, held: str, flags_by_uid: dict[int, frozenset[str]]) -> None:
        # \Seen in the message's flags is the owner's, which a copy keeps; the grantee's own
        # goes with the copy in AccountMail.copy, and _transfer takes it back without ``s``.
        for flag in sorted({f for flags in flags_by_uid.values() for f in flags} - {SEEN}):
            if not rights.settable_flags(held, [flag]):
                self.mail.store_flags(inner, [u for u, fl in flags_by_uid.items() if flag in fl], [flag], "remove")

    # reads ---------------------------------------------------------------------------------
    @property
    def quota_bytes(self) -> int | None:
        return getattr(self.mail, "quota_bytes", None)

    @property
    def bytes_used(self) -> int:
        return self.mail.bytes_used

    def mailboxes(self):
        out = []
        for box in self.mail.mailboxes():
            if rights.effective(self.mail.acl(box.name), self.grantee, self.owner):
                highest = max(box.highest_modseq, self.mail.private_seen(box.name, self.grantee).highest)
                out.append(replace(box, name=self._outer(box.name), subscribed=False, highest_modseq=highest))
        return out

    def messages(self, name: str):
        self._need(name, "")              # listed (any right): STATUS/SELECT checked r already
        inner = self._inner(name)
        return self._as_seen_by_grantee(inner, self.mail.messages(inner))

    def _as_seen_by_grantee(self, inner: str, messages):
        """The messages with the grantee's own \\Seen and MODSEQ in place of the owner's."""
        private = self.mail.private_seen(inner, self.grantee)
        out = []
        for m in messages:
            flags = m.flags | {SEEN} if m.uid in private.seen else m.flags - {SEEN}
            modseq = max(m.modseq, private.modseq.get(m.uid, 0))
            out.append(m if flags == m.flags and modseq == m.modseq else replace(m, flags=flags, modseq=modseq))
        return out

    def body(self, name: str, uid: int) -> bytes:
        self._need(name, "r")
        return self.mail.body(self._inner(name), uid)

    def recent(self, name: str, uids: list[int], claim: bool) -> set[int]:
        self._need(name, "")
        if self.marks is None:
            return set()
        return self.marks.recent(self._outer(name), self.mail.state.box(self._inner(name)).uidvalidity, uids, claim)

    def acl(self, name: str) -> dict[str, str]:
        self._need(name, "a")
        return self.mail.acl(self._inner(name))

    # writes (the session has checked the rights) ------------------------------------------
    def create_mailbox(self, name: str, special_use: str | None = None) -> None:
        self._parent_needs_k(name)
        self.mail.create_mailbox(self._inner(name), special_use)
        # The creator of a mailbox under a shared parent keeps access to it (RFC 4314 §4:
        # "the owner ... the user who created it"): the grantee gets the parent's rights.
        inner = self._inner(name)
        parent = inner.rpartition(DELIMITER)[0]
        if parent:
            held = rights.effective(self.mail.acl(parent), self.grantee, self.owner)
            if held:
                self.mail.set_acl(inner, self.grantee, held)

    def rename_mailbox(self, old: str, new: str) -> None:
        self._need(old, "x")
        self._parent_needs_k(new)
        self.mail.rename_mailbox(self._inner(old), self._inner(new))

    def delete_mailbox(self, name: str) -> None:
        self._need(name, "x")
        self.mail.delete_mailbox(self._inner(name))

    def set_acl(self, name: str, identifier: str, granted: str) -> None:
        self._need(name, "a")
        if identifier.lower() == self.owner:
            raise SharedError("[CANNOT] The owner always holds every right")
        try:
            ident = rights.check_identifier(identifier, self.owner)
        except rights.RightsError as exc:
            raise SharedError(f"[CANNOT] {exc}") from None
        self.mail.set_acl(self._inner(name), ident, rights.canonical(granted))

    def append(self, name: str, data: bytes, flags=(), date: datetime | None = None):
        held = self._need(name, "i")
        inner = self._inner(name)
        allowed = rights.settable_flags(held, flags)
        stored = self.mail.append(inner, data, [f for f in allowed if f != SEEN], date)
        if SEEN in allowed:
            self.mail.store_seen(inner, self.grantee, [stored.uid], True)
        return stored

    def store_flags(self, name: str, uids, flags, mode: str = "set") -> None:
        held = self._need(name, "r")
        inner = self._inner(name)
        uids = list(uids)
        if mode == "set":     # a replace must not touch flags the grantee may not change either
            wanted, chosen = frozenset(flags), set(uids)
            owners = {m.uid: m for m in self.mail.messages(inner) if m.uid in chosen}
            for m in self._as_seen_by_grantee(inner, owners.values()):
                if rights.refused_flags(held, (m.flags - {"\\Recent"}) ^ wanted):
                    raise SharedError("[NOPERM] That would change flags you may not change")
            # The shared flags become the wanted ones, each message keeping the owner's \Seen.
            for owner_seen in (True, False):
                group = [u for u, m in owners.items() if (SEEN in m.flags) == owner_seen]
                if group:
                    self.mail.store_flags(inner, group, (wanted - {SEEN}) | ({SEEN} if owner_seen else set()), "set")
            self.mail.store_seen(inner, self.grantee, owners, SEEN in wanted)  # unchanged without ``s``
            return
        allowed = rights.settable_flags(held, flags)
        shared = [f for f in allowed if f != SEEN]
        if shared:
            self.mail.store_flags(inner, uids, shared, mode)
        if SEEN in allowed:
            self.mail.store_seen(inner, self.grantee, uids, mode == "add")

    def expunge(self, name: str, uids=None) -> list[int]:
        self._need(name, "e")
        return self.mail.expunge(self._inner(name), uids)

    def _transfer(self, op: str, src: str, uids, dst: str, source_needs: str) -> dict[int, int]:
        self._need(src, source_needs)
        held = self._need(dst, "i")
        before = {m.uid: m.flags for m in self.mail.messages(self._inner(src))}
        mapping = getattr(self.mail, op)(self._inner(src), uids, self._inner(dst))
        self._drop_unsettable(self._inner(dst), held, {new: before[old] for old, new in mapping.items()})
        if "s" not in held:   # the grantee's own \Seen came along, but they may not set it there
            self.mail.store_seen(self._inner(dst), self.grantee, list(mapping.values()), False)
        return mapping

    def copy(self, src: str, uids, dst: str) -> dict[int, int]:
        return self._transfer("copy", src, uids, dst, "r")

    def move(self, src: str, uids, dst: str) -> dict[int, int]:
        return self._transfer("move", src, uids, dst, "r" + rights.MOVE_SOURCE)

    def subscriptions(self) -> set[str]:
        return set()

    def subscribe(self, name: str, on: bool = True) -> None:
        raise SharedError("Subscriptions are the subscriber's own")

    def commit(self) -> None:
        self.mail.commit()


class CompositeStore:
    """The grantee's session store: own mail, plus the shared views of the owners in
    ``owners`` (the grant index's answer: who may have shared something with this user)."""

    shares = True      # NAMESPACE announces the Other Users namespace

    def __init__(self, own, account: str, owners: Iterable[str],
                 open_view: Callable[[str], object | None]) -> None:
        self.own = own
        self.account = account.lower()
        self.owners = sorted({o.lower() for o in owners} - {self.account})
        self._open_view = open_view
        self._views: dict[str, object | None] = {}
        self._touched: list[object] = []
        self._away: dict[str, str] = {}
        self._routes: dict[str, object] = {}    # name -> its store (a FETCH asks per message)

    def __getattr__(self, name: str):     # anything else the session asks is the user's own
        return getattr(self.own, name)

    def _view(self, owner: str):
        if owner not in self._views:
            self._views[owner] = self._open_view(owner) if owner in self.owners else None
        return self._views[owner]

    def _route(self, name: str):
        store = self._routes.get(name)
        if store is None:
            store = self._routes[name] = self._find_route(name)
        return store

    def _find_route(self, name: str):
        parsed = split_shared(name)
        if parsed is None:
            if name == OTHER_USERS or name.startswith(PREFIX):
                raise SharedError("No such mailbox")
            return self.own
        view = self._view(parsed[0])
        if view is None:
            raise SharedError("No such mailbox")
        return view

    def _writing(self, store):
        if all(s is not store for s in self._touched):
            self._touched.append(store)
        return store

    # the session's Store protocol ----------------------------------------------------------
    @property
    def quota_bytes(self) -> int | None:
        return self.own.quota_bytes

    @property
    def bytes_used(self) -> int:
        return self.own.bytes_used

    def myrights(self, name: str) -> str:
        try:
            store = self._route(name)
        except SharedError:
            return ""
        mine = getattr(store, "myrights", None)
        return rights.ALL if mine is None else mine(name)

    def owner_of(self, name: str) -> str:
        parsed = split_shared(name)
        return parsed[0] if parsed else self.account

    def mailboxes(self):
        boxes = list(self.own.mailboxes())
        for owner in self.owners:
            view = self._view(owner)
            if view is None:
                continue
            try:
                boxes.extend(view.mailboxes())
            except SharedError as exc:   # a colleague's store is away: the user's own mail still works
                self._away[owner] = str(exc)
        return boxes

    def unreachable(self, name: str) -> str | None:
        """Why ``name`` could not be listed just now (its owner's store did not answer)."""
        parsed = split_shared(name)
        return self._away.get(parsed[0]) if parsed else None

    def subscriptions(self) -> set[str]:
        return self.own.subscriptions()

    def subscribe(self, name: str, on: bool = True) -> None:
        self._writing(self.own).subscribe(name, on)

    def recent(self, name: str, uids: list[int], claim: bool) -> set[int]:
        return self._route(name).recent(name, uids, claim)

    def messages(self, name: str):
        return self._route(name).messages(name)

    def body(self, name: str, uid: int) -> bytes:
        return self._route(name).body(name, uid)

    def version(self, name: str):
        # Only the user's own mailboxes say (AccountMail.version); a colleague's folder is
        # walked at every sync (the owner's commits wake nobody here, and the token would
        # have to be the grantee's view, own \Seen included).  Never left to __getattr__.
        store = self._route(name)
        return store.version(name) if store is self.own and hasattr(store, "version") else None

    def message_map(self, name: str):
        store = self._route(name)     # as version: the own mail only
        return store.message_map(name) if store is self.own and hasattr(store, "message_map") else None

    def expunged_message(self, name: str, uid: int):
        store = self._route(name)     # as message_map: the own mail only
        kept = getattr(store, "expunged_message", None) if store is self.own else None
        return kept(name, uid) if kept is not None else None

    def parsed(self, name: str, uid: int):
        # Defined here, not left to __getattr__: the own store's parse cache must never answer
        # for a colleague's mailbox.
        store = self._route(name)
        parsed = getattr(store, "parsed", None)
        return parsed(name, uid) if parsed is not None else None

    def acl(self, name: str) -> dict[str, str]:
        return self._route(name).acl(name)

    def set_acl(self, name: str, identifier: str, granted: str) -> None:
        self._writing(self._route(name)).set_acl(name, identifier, granted)

    def create_mailbox(self, name: str, special_use: str | None = None) -> None:
        if name == OTHER_USERS or name.startswith(PREFIX) and split_shared(name) is None:
            raise SharedError(f"{OTHER_USERS} is reserved for folders others share")
        self._writing(self._route(name)).create_mailbox(name, special_use)

    def rename_mailbox(self, old: str, new: str) -> None:
        store = self._route(old)
        if self._route(new) is not store:
            raise SharedError("A mailbox cannot be renamed into another account")
        self._writing(store).rename_mailbox(old, new)

    def delete_mailbox(self, name: str) -> None:
        self._writing(self._route(name)).delete_mailbox(name)

    def append(self, name: str, data: bytes, flags=(), date: datetime | None = None):
        return self._writing(self._route(name)).append(name, data, flags, date)

    def store_flags(self, name: str, uids, flags, mode: str = "set") -> None:
        self._writing(self._route(name)).store_flags(name, uids, flags, mode)

    def expunge(self, name: str, uids=None) -> list[int]:
        return self._writing(self._route(name)).expunge(name, uids)

    def copy(self, src: str, uids, dst: str) -> dict[int, int]:
        source, target = self._route(src), self._route(dst)
        if source is target:
            return self._writing(source).copy(src, uids, dst)
        # Across accounts: read here, append there (flags and internal date kept).
        current = {m.uid: m for m in source.messages(src)}
        mapping = {}
        for uid in uids:
            msg = current.get(uid)
            if msg is None:
                continue
            flags = [f for f in msg.flags if f != "\\Recent"]
            mapping[uid] = self._writing(target).append(dst, source.body(src, uid), flags, msg.date).uid
        return mapping

    def move(self, src: str, uids, dst: str) -> dict[int, int]:
        source, target = self._route(src), self._route(dst)
        if source is target:
            return self._writing(source).move(src, uids, dst)
        mapping = self.copy(src, uids, dst)
        # The copies are committed before the source loses anything: a failure in between
        # leaves the message in both accounts, never in neither.
        self._writing(target).commit()
        self._writing(source).store_flags(src, list(mapping), ["\\Deleted"], "add")
        source.expunge(src, list(mapping))
        return mapping

    def commit(self) -> None:
        touched, self._touched = self._touched, []
        for store in touched:
            store.commit()
