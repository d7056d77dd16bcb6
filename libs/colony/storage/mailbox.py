"""An account's mailboxes, event-sourced on shared storage (see ``journal`` for the rules).

``MailState`` is the pure part: it applies journal records and answers queries (no I/O).
``AccountMail`` is the owner's handle: it takes the account over for one epoch, stages
changes (each applied to the state at once, so later calls of the same batch see them),
and ``commit()`` makes a batch durable with one fsync of the journal (group commit) and
then checks it was not fenced off.  Nothing staged may be acknowledged before ``commit()``
returned.  If ``commit()`` raises, the handle is broken: close it and open the account again.

The read API is what IMAP (CONDSTORE/QRESYNC), POP and delivery build on: ``mailboxes()``,
``messages(name)`` (UID, flags, internal date, size, MODSEQ), ``body(name, uid)``,
``highest_modseq``, and ``add_listener`` for in-process change notifications (EXISTS,
EXPUNGE, FETCH FLAGS, IDLE): a listener gets the committed records of each batch.

All methods are blocking file I/O; the owner calls them from one thread at a time (the
mailstore calls them under the account's lock).  ``commit()`` is also available in three
steps, so a caller on an event loop can stage and finish there and send only the waits to a
thread: ``prepare_commit()`` takes the batch, its ``sync()`` (file system calls only, any
thread) makes it durable, ``finish_commit()`` checks the fence and publishes it.

A new body is written under its final name and left unsynced; the commit fsyncs it, then
the bodies directory, then writes and fsyncs the journal records that name it.  Until that
last fsync no record names it (nobody reads it), and a crash before leaves it unreferenced,
which the next owner removes; a body whose write failed (a full disk) is removed at once,
and those of a batch whose commit failed when the handle of the same tenure is reopened.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from colony.storage import journal as j

INBOX = "INBOX"
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    (INBOX, None), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
    ("Junk", "\\Junk"), ("Archive", "\\Archive"),
)
DEDUPE_WINDOW = 50_000  # delivery keys remembered per account (redeliveries come within minutes)
SNAPSHOT_EVERY = 2_000  # records between snapshots
# New bodies a handle keeps open for its commit's fsync, at most: past that, those written so
# far are fsynced and closed at once.  One APPEND of thousands of small messages (MULTIAPPEND
# takes up to 80 MiB) would otherwise hold a descriptor per message until its commit, out of
# the process's limit that every session, account and connection of the store shares.
MAX_OPEN_BODIES = 64
# Messages expunged through this handle whose metadata stays readable (``expunged_message``)
# for IMAP sessions that have not been told of the expunge yet (RFC 2180 §4.1.2).  Few: a
# session holds the numbers of what was just deleted, and every open account (up to
# account_max_open) keeps its own: about 50 KB at 64.
EXPUNGED_KEPT = 64
_MOVED = "move:"  # storage.transfer.MOVE_PREFIX (imported from there would be a cycle)
_HANDLES = itertools.count(1)   # tells the handles of this process apart (``AccountMail.version``)


@dataclass
class PendingCommit:
    """A staged batch taken off its handle by ``AccountMail.prepare_commit``.  ``sync()`` is
    only system calls on descriptors and paths the handle owns, so it may run in a worker
    thread while the owner's thread (under the account's lock) waits for it."""

    mail: AccountMail
    data: bytes
    records: list
    body_fds: list[int]
    dir_fd: int | None   # the bodies directory, when this batch put a name into it
    newer: int | None = None
    error: BaseException | None = None
    synced: bool = False

    def sync(self) -> None:
        """Bodies, then their directory, then the journal (the records naming them), each
        fsynced before the next is written; then the fence check.  Never raises: a failure is
        kept for ``finish_commit``."""
        try:
            _sync_and_close(self.body_fds)
            if self.dir_fd is not None:
                os.fsync(self.dir_fd)
            self.mail._write_now(self.data)
            self.newer = j.newer_claim(self.mail.journal_dir, self.mail.epoch)
            self.synced = True
        except BaseException as exc:
            self.error = exc


def _sync_and_close(fds: list[int]) -> None:
    """fsync and close the bodies' descriptors, last first, each taken off ``fds`` once
    closed (a failure leaves the rest for whoever closes the handle)."""
    while fds:
        os.fsync(fds[-1])
        os.close(fds.pop())


class MailboxError(ValueError):
    """A request the mailbox cannot honour (no such mailbox, name taken, ...)."""


@dataclass
class Message:
    uid: int
    body: str
    flags: frozenset[str]
    date: datetime
    size: int
    modseq: int
    key: str | None = None


@dataclass
class PrivateSeen:
    """One colleague's own \\Seen in a mailbox shared with them (RFC 4314 §4: \\Seen is kept
    per user).  Their MODSEQ of a message is the higher of the message's own and the ``s`` of
    their last change to it here, so CONDSTORE sees their change and nobody else does."""
    seen: set[int] = field(default_factory=set)
    modseq: dict[int, int] = field(default_factory=dict)   # uid -> s of the user's last change
    highest: int = 0                                        # s of the user's last change in the mailbox


@dataclass
class Mailbox:
    id: int
    name: str
    uidvalidity: int
    special_use: str | None
    uidnext: int = 1
    highest_modseq: int = 0
    messages: dict[int, Message] = field(default_factory=dict)  # uid -> message, ascending
    acl: dict[str, str] = field(default_factory=dict)  # identifier -> rights (RFC 4314), owner implied
    private: dict[str, PrivateSeen] = field(default_factory=dict)  # colleague -> their own \Seen


class MailState:
    """Everything the journal says about one account's mail."""

    def __init__(self) -> None:
        self.seq = 0
        self.next_id = 1
        # The highest UIDVALIDITY any mailbox of the account was given, deleted ones included: a
        # name created again starts its UIDs at 1, so its UIDVALIDITY must be greater than its
        # former incarnation's (RFC 3501 6.3.4, RFC 9051 2.3.1.1), whatever the clock says.
        self.uidvalidity_high = 0
        self.boxes: dict[int, Mailbox] = {}
        self.by_name: dict[str, int] = {}
        self.subscribed: set[str] = set()
        self.dedupe: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.body_refs: dict[str, int] = {}
        self.bytes_used = 0
        self.messages_total = 0

    # --- applying records ------------------------------------------------------------------

    def apply(self, r: j._Record) -> list[str]:
        """Apply one record; returns body files that lost their last reference."""
        self.seq = max(self.seq, r.s)
        freed: list[str] = []
        if isinstance(r, j.MailboxCreated):
            self.boxes[r.id] = Mailbox(r.id, r.name, r.uidvalidity, r.special_use)
            self.by_name[_key(r.name)] = r.id
            self.next_id = max(self.next_id, r.id + 1)
            self.uidvalidity_high = max(self.uidvalidity_high, r.uidvalidity)
        elif isinstance(r, j.MailboxRenamed):
            box = self.boxes[r.id]
            del self.by_name[_key(box.name)]
            box.name = r.name
            self.by_name[_key(r.name)] = r.id
        elif isinstance(r, j.MailboxDeleted):
            box = self.boxes.pop(r.id)
            del self.by_name[_key(box.name)]
            for msg in box.messages.values():
                freed += self._forget(msg)
        elif isinstance(r, j.MessageAppended):
            box = self.boxes[r.box]
            msg = Message(r.uid, r.body, frozenset(r.flags), r.date, r.size, r.s, r.key)
            box.messages[r.uid] = msg
            box.uidnext = max(box.uidnext, r.uid + 1)
            box.highest_modseq = r.s
            self.body_refs[r.body] = self.body_refs.get(r.body, 0) + 1
            self.bytes_used += r.size
            self.messages_total += 1
            if r.key is not None:
                self.dedupe[r.key] = (r.box, r.uid)
                while len(self.dedupe) > DEDUPE_WINDOW:
                    self.dedupe.popitem(last=False)
        elif isinstance(r, j.FlagsChanged):
            box = self.boxes[r.box]
            flags = frozenset(r.flags)
            for uid in r.uids:
                if uid in box.messages:
                    box.messages[uid].flags = flags
                    box.messages[uid].modseq = r.s
            box.highest_modseq = r.s
        elif isinstance(r, j.Expunged):
            box = self.boxes[r.box]
            for uid in r.uids:
                msg = box.messages.pop(uid, None)
                if msg is not None:
                    freed += self._forget(msg)
            for private in box.private.values():   # bounded by the messages that exist
                for uid in r.uids:
                    private.seen.discard(uid)
                    private.modseq.pop(uid, None)
            box.highest_modseq = r.s
        elif isinstance(r, j.SubscriptionChanged):
            (self.subscribed.add if r.on else self.subscribed.discard)(r.name)
        elif isinstance(r, j.SeenChanged):
            # Not the mailbox's HIGHESTMODSEQ: the owner and the other colleagues see no change.
            box = self.boxes[r.box]
            private = box.private.setdefault(r.user, PrivateSeen())
            for uid in r.uids:
                if uid in box.messages:
                    (private.seen.add if r.on else private.seen.discard)(uid)
                    private.modseq[uid] = r.s
            private.highest = r.s
        elif isinstance(r, j.AclChanged):
            box = self.boxes.get(r.box)
            if box is not None:
                if r.rights:
                    box.acl[r.id] = r.rights
                else:
                    box.acl.pop(r.id, None)
        return freed

    def _forget(self, msg: Message) -> list[str]:
        self.bytes_used -= msg.size
        self.messages_total -= 1
        n = self.body_refs.get(msg.body, 0) - 1
        if n <= 0:
            self.body_refs.pop(msg.body, None)
            return [msg.body]
        self.body_refs[msg.body] = n
        return []

    # --- queries ---------------------------------------------------------------------------

    def box(self, name: str) -> Mailbox:
        try:
            return self.boxes[self.by_name[_key(name)]]
        except KeyError:
            raise MailboxError(f"no mailbox {name!r}") from None

    # --- snapshot form ---------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "seq": self.seq, "next_id": self.next_id, "uidvalidity_high": self.uidvalidity_high,
            "subscribed": sorted(self.subscribed),
            "dedupe": list(self.dedupe.items()),
            "boxes": [{
                "id": b.id, "name": b.name, "uidvalidity": b.uidvalidity, "special_use": b.special_use,
                "uidnext": b.uidnext, "highest_modseq": b.highest_modseq, "acl": dict(b.acl),
                "private": {user: {"highest": p.highest,
                                   "uids": [[uid, modseq, uid in p.seen] for uid, modseq in sorted(p.modseq.items())]}
                            for user, p in b.private.items()},
                "messages": [[m.uid, m.body, sorted(m.flags), m.date.isoformat(), m.size, m.modseq, m.key]
                             for m in b.messages.values()],
            } for b in self.boxes.values()],
        }

    @classmethod
    def from_json(cls, data: dict) -> MailState:
        s = cls()
        s.seq, s.next_id, s.subscribed = data["seq"], data["next_id"], set(data["subscribed"])
        s.dedupe = OrderedDict((k, tuple(v)) for k, v in data["dedupe"])
        for b in data["boxes"]:
            box = Mailbox(b["id"], b["name"], b["uidvalidity"], b["special_use"], b["uidnext"], b["highest_modseq"],
                          acl=dict(b.get("acl", {})))  # snapshots older than ACLs have none
            for user, p in b.get("private", {}).items():   # nor older ones private \Seen
                box.private[user] = PrivateSeen({uid for uid, _, on in p["uids"] if on},
                                                {uid: modseq for uid, modseq, _ in p["uids"]}, p["highest"])
            for uid, body, flags, date, size, modseq, key in b["messages"]:
                box.messages[uid] = Message(uid, body, frozenset(flags), datetime.fromisoformat(date), size, modseq, key)
                s.body_refs[body] = s.body_refs.get(body, 0) + 1
                s.bytes_used += size
                s.messages_total += 1
            s.boxes[box.id] = box
            s.by_name[_key(box.name)] = box.id
        # (a snapshot written before the field was kept knows only the mailboxes that exist)
        s.uidvalidity_high = data.get("uidvalidity_high", max((b.uidvalidity for b in s.boxes.values()), default=0))
        return s


def _key(name: str) -> str:
    # INBOX is case-insensitive (RFC 3501 5.1); other names are case-sensitive.
    return INBOX if name.upper() == INBOX else name


@dataclass(frozen=True)
class MailboxInfo:
    name: str
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    special_use: str | None
    exists: int
    subscribed: bool


@dataclass(frozen=True)
class Stored:
    """Result of a delivery append: the UID, and whether it was already there (a redelivery)."""
    uid: int
    duplicate: bool


Listener = Callable[[list[j._Record]], None]


def rebuild(journal_dir: Path, segments: dict[int, Path], below: int) -> tuple[MailState, int, int]:
    """The state the highest *sealed* segment under epoch ``below`` says, with that epoch and
    the valid length read (see the journal's theory of operation).  Only the records after
    the newest snapshot are read, so a takeover costs the records since the last snapshot,
    not the whole tenure."""
    for epoch in sorted((e for e in segments if e < below), reverse=True):
        with open(segments[epoch], "rb") as f:
            head, head_offsets, _ = j.decode_segment(f.read(_HEAD_BYTES))
            if len(head) < 2 or not isinstance(head[1], j.Seal) or head[1].e != epoch:
                continue  # claimed but never sealed: that owner died taking over and wrote nothing
            base = head_offsets[1]  # the base snapshot is the state right after the seal
            size = os.fstat(f.fileno()).st_size
            snaps = [(off, p) for e, off, p in j.list_snapshots(journal_dir) if e == epoch and base <= off <= size]
            if not snaps:
                raise j.Fenced(f"base snapshot of epoch {epoch} missing in {journal_dir}")
            off, path = max(snaps)  # snapshots are written at committed record boundaries
            f.seek(off)
            records, _, valid = j.decode_segment(f.read())
        state = MailState.from_json(j.read_snapshot(path)["state"])
        for record in records:
            if not isinstance(record, (j.Claim, j.Seal)):
                state.apply(record)
        return state, epoch, off + valid
    return MailState(), 0, 0


_HEAD_BYTES = 4096  # a claim and a seal are well under this


def _body_epoch(name: str) -> int:
    """The epoch a body file was written in (its name begins with it, see ``_write_body``);
    -1 for a name of another shape."""
    head = name.split("-", 1)[0]
    return int(head) if head.isascii() and head.isdigit() else -1


def read_state(mail_dir: Path) -> MailState:
    """What an account's mail is, read without claiming it (tests, operators' tools): the
    state the next owner would rebuild."""
    journal_dir = Path(mail_dir) / "journal"
    if not journal_dir.is_dir():
        return MailState()
    segments = j.list_segments(journal_dir)
    return rebuild(journal_dir, segments, max(segments, default=0) + 1)[0]


class AccountMail:
    """The owner's handle on one account's mail for one epoch."""

    def __init__(self, mail_dir: Path, epoch: int, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(mail_dir)
        self.journal_dir = self.dir / "journal"
        self.bodies_dir = self.dir / "bodies"
        self.epoch = epoch
        self._clock = clock
        self.state = MailState()
        self._fd: int | None = None
        self._offset = 0
        self._pending: list[bytes] = []
        self._pending_records: list[j._Record] = []
        self._freed: list[str] = []
        self._expunged: OrderedDict[tuple[int, int], Message] = OrderedDict()   # (box id, uid)
        self._body_fds: list[int] = []  # bodies written since the last commit, not yet fsynced
        self._dir_fd: int | None = None  # the bodies directory, open while the handle is
        self._bodies_synced_early = False  # bodies fsynced and closed before the commit (MAX_OPEN_BODIES)
        self._since_snapshot = 0
        self._broken: str | None = None
        self._listeners: list[Listener] = []
        self._body_counter = 0
        self._handle = next(_HANDLES)

    # --- take over -------------------------------------------------------------------------

    def open(self) -> None:
        """Claim the account for ``epoch``, rebuild its state, seal, and create the default
        mailboxes of a new account.  Raises ``Fenced`` if a newer epoch already claimed it."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.bodies_dir.mkdir(parents=True, exist_ok=True)
        segments = j.list_segments(self.journal_dir)
        if any(e > self.epoch for e in segments):
            raise j.Fenced(f"epoch {max(segments)} already claimed this account (ours: {self.epoch})")
        if self.epoch in segments:
            self._resume(segments[self.epoch])
            return
        claim = j.encode(j.Claim(e=self.epoch, s=0))
        seg_path = self.journal_dir / j.segment_name(self.epoch)
        j.write_atomically(seg_path, claim)
        # Only now list and read the predecessors: anything one acknowledged was fsynced
        # before it could see our claim, so it is in what we read (and a segment created
        # after our first listing is in this one).
        segments = j.list_segments(self.journal_dir)
        if any(e > self.epoch for e in segments):
            raise j.Fenced(f"epoch {max(segments)} claimed this account while we did (ours: {self.epoch})")
        prev, prev_length = self._rebuild(segments)
        seal = j.encode(j.Seal(e=self.epoch, s=self.state.seq, prev=prev, prev_length=prev_length))
        base = len(claim) + len(seal)
        j.write_snapshot(self.journal_dir, self.epoch, base, self.state.to_json())
        self._fd = os.open(seg_path, os.O_WRONLY | os.O_APPEND)
        self._offset = len(claim)
        self._write_now(seal)
        if self.state.seq == 0 and not self.state.boxes:
            for name, use in DEFAULT_MAILBOXES:
                self.create_mailbox(name, use)
            self.state.subscribed.update(n for n, _ in DEFAULT_MAILBOXES)
            for name, _ in DEFAULT_MAILBOXES:
                self._stage(j.SubscriptionChanged(e=self.epoch, s=self._next(), name=name, on=True))
            self.commit()
        self._collect_garbage(segments)

    def _resume(self, path: Path) -> None:
        """Reopen our own segment (an earlier handle of this same tenure was closed, e.g.
        after a failed write): we are its only writer, so a torn tail may be cut off."""
        records, _offsets, valid = j.decode_segment(path.read_bytes())
        if len(records) < 2 or not isinstance(records[1], j.Seal):
            raise j.Fenced(f"epoch {self.epoch} never sealed {path.name}; take the account with a new epoch")
        self.state, _, _ = rebuild(self.journal_dir, j.list_segments(self.journal_dir), self.epoch + 1)
        os.truncate(path, valid)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._offset = valid
        self._body_counter = int(self._clock() * 1000) % 1_000_000  # fresh body names after a failed batch
        # A failed batch's bodies carry our epoch, which _collect_garbage spares (they may be
        # a live batch's): as the only handle of this tenure, nothing staged, we know they
        # are not, and on a full disk they hold the space the retry needs.
        prefix = f"{self.epoch}-"
        with os.scandir(self.bodies_dir) as it:
            for entry in it:
                if entry.name.startswith(prefix) and entry.name not in self.state.body_refs:
                    os.unlink(entry.path)

    def _rebuild(self, segments: dict[int, Path]) -> tuple[int, int]:
        self.state, prev, length = rebuild(self.journal_dir, segments, self.epoch)
        return prev, length

    def _collect_garbage(self, segments: dict[int, Path]) -> None:
        """Older segments and snapshots are superseded by our base snapshot; bodies that only
        fenced-off or expunged records named are unreferenced."""
        for epoch, path in segments.items():
            if epoch < self.epoch:
                path.unlink(missing_ok=True)
        for epoch, _off, path in j.list_snapshots(self.journal_dir):
            if epoch < self.epoch:
                path.unlink(missing_ok=True)
        self._sweep_bodies()

    def _sweep_bodies(self) -> None:
        """Remove the bodies no record of ours names that no owner can still commit: those of
        earlier epochs.  Ours may be a live batch's; a later epoch's are a newer owner's (one
        that claims the account while we sweep).  Run at the take-over and again at close: a
        fenced-off owner still writing a batch when we took over leaves its bodies after our
        first sweep (its commit then fails), and they were kept until the next take-over."""
        with os.scandir(self.bodies_dir) as it:
            for entry in it:
                if entry.name not in self.state.body_refs and _body_epoch(entry.name) < self.epoch:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    # --- reads -----------------------------------------------------------------------------

    def mailboxes(self) -> list[MailboxInfo]:
        return [MailboxInfo(b.name, b.uidvalidity, b.uidnext, b.highest_modseq, b.special_use,
                            len(b.messages), b.name in self.state.subscribed)
                for b in sorted(self.state.boxes.values(), key=lambda b: (b.name != INBOX, b.name))]

    def messages(self, name: str) -> list[Message]:
        return list(self.state.box(name).messages.values())

    def version(self, name: str) -> tuple[int, int, int]:
        """A token that is equal between two calls only if no message of mailbox ``name`` was
        added, expunged or had its flags changed in between (each of those records moves the
        mailbox's HIGHESTMODSEQ; a colleague's own \\Seen does not, and is not the owner's
        view).  The handle and the mailbox's id are part of it, so a reopened account or a
        mailbox deleted and created again under the name never compares equal.  Raises
        ``MailboxError`` as ``messages`` does.  What IMAP's end-of-command sync compares to
        skip its walk over the mailbox."""
        box = self.state.box(name)
        return (self._handle, box.id, box.highest_modseq)

    def expunged_message(self, name: str, uid: int) -> Message | None:
        """A message of mailbox ``name`` expunged through this handle, as it was then: its
        UID, flags, date and size, for an IMAP session that still holds its message number
        (RFC 2180 §4.1.2); None when it is not (or no longer) kept.  Its body is not kept:
        that file goes with the expunge's commit."""
        try:
            box = self.state.box(name)
        except MailboxError:
            return None
        return self._expunged.get((box.id, uid))

    def message_map(self, name: str) -> Mapping[int, Message]:
        """The messages of ``name`` by UID, ascending: the state's own mapping, read-only, which
        later changes show in (a command reads it without copying the mailbox)."""
        return self.state.box(name).messages

    def body(self, name: str, uid: int) -> bytes:
        msg = self.state.box(name).messages.get(uid)
        if msg is None:
            raise MailboxError(f"no message {uid} in {name!r}")
        return (self.bodies_dir / msg.body).read_bytes()

    @property
    def highest_modseq(self) -> int:
        return self.state.seq

    @property
    def segment_bytes(self) -> int:
        """Size of our segment: the owner starts a new epoch (and segment) past a limit."""
        return self._offset

    @property
    def usable(self) -> bool:
        """False once the handle is closed or a commit failed (open the account again)."""
        return self._broken is None and not self._pending

    @property
    def bytes_used(self) -> int:
        return self.state.bytes_used

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # --- writes (staged; durable after commit) ---------------------------------------------

    def create_mailbox(self, name: str, special_use: str | None = None) -> None:
        if _key(name) in self.state.by_name:
            raise MailboxError(f"mailbox {name!r} exists")
        uidvalidity = max(int(self._clock()), self.state.uidvalidity_high + 1)
        self._stage(j.MailboxCreated(e=self.epoch, s=self._next(), id=self.state.next_id, name=name,
                                     uidvalidity=uidvalidity, special_use=special_use))

    def rename_mailbox(self, old: str, new: str) -> None:
        box = self.state.box(old)
        if _key(new) in self.state.by_name:
            raise MailboxError(f"mailbox {new!r} exists")
        if box.name == INBOX:
            raise MailboxError("renaming INBOX moves its messages; not supported")
        self._stage(j.MailboxRenamed(e=self.epoch, s=self._next(), id=box.id, name=new))

    def delete_mailbox(self, name: str) -> None:
        box = self.state.box(name)
        if box.name == INBOX:
            raise MailboxError("INBOX cannot be deleted")
        self._stage(j.MailboxDeleted(e=self.epoch, s=self._next(), id=box.id))

    def acl(self, name: str) -> dict[str, str]:
        """The mailbox's ACL entries (identifier -> rights); the owner's own rights are implied."""
        return dict(self.state.box(name).acl)

    def set_acl(self, name: str, identifier: str, rights: str) -> None:
        """Set ``identifier``'s rights on the mailbox (``""`` removes the entry)."""
        box = self.state.box(name)
        if box.acl.get(identifier, "") != rights:
            self._stage(j.AclChanged(e=self.epoch, s=self._next(), box=box.id, id=identifier, rights=rights))

    def private_seen(self, name: str, user: str) -> PrivateSeen:
        """``user``'s own \\Seen in mailbox ``name`` (empty if they never changed it)."""
        return self.state.box(name).private.get(user.lower()) or PrivateSeen()

    def store_seen(self, name: str, user: str, uids: Iterable[int], on: bool) -> None:
        """Set (``on``) or clear ``user``'s own \\Seen on ``uids``; one record for those that change."""
        box = self.state.box(name)
        user = user.lower()
        seen = box.private[user].seen if user in box.private else set()
        changed = sorted(u for u in set(uids) if u in box.messages and (u in seen) != on)
        if changed:
            self._stage(j.SeenChanged(e=self.epoch, s=self._next(), box=box.id, user=user, uids=changed, on=on))

    def subscribe(self, name: str, on: bool = True) -> None:
        self._stage(j.SubscriptionChanged(e=self.epoch, s=self._next(), name=name, on=on))

    def append(self, name: str, data: bytes, flags: Iterable[str] = (), date: datetime | None = None,
               key: str | None = None) -> Stored:
        """Store a message; with ``key``, a second append of the same key returns the first UID."""
        box = self.state.box(name)
        if key is not None:
            # "move:<key>" is the same message copied here by a domain move (storage.transfer)
            seen = self.state.dedupe.get(key) or self.state.dedupe.get(_MOVED + key)
            if seen is not None:
                return Stored(seen[1], True)
        body = self._write_body(data)
        uid = box.uidnext
        self._stage(j.MessageAppended(e=self.epoch, s=self._next(), box=box.id, uid=uid, body=body,
                                      flags=sorted(flags), date=date or datetime.fromtimestamp(self._clock(), UTC),
                                      size=len(data), key=key))
        return Stored(uid, False)

    def store_flags(self, name: str, uids: Iterable[int], flags: Iterable[str], mode: str = "set") -> None:
        """``mode``: ``set`` (replace), ``add`` or ``remove``; one record per distinct result."""
        box = self.state.box(name)
        flags = frozenset(flags)
        groups: dict[frozenset[str], list[int]] = {}
        for uid in uids:
            msg = box.messages.get(uid)
            if msg is None:
                continue
            new = flags if mode == "set" else (msg.flags | flags if mode == "add" else msg.flags - flags)
            if new != msg.flags:
                groups.setdefault(new, []).append(uid)
        for new, group in groups.items():
            self._stage(j.FlagsChanged(e=self.epoch, s=self._next(), box=box.id, uids=group, flags=sorted(new)))

    def expunge(self, name: str, uids: Iterable[int] | None = None) -> list[int]:
        """Remove ``uids`` (default: every message flagged \\Deleted); returns what went."""
        box = self.state.box(name)
        gone = sorted(u for u in (uids if uids is not None else
                                  [m.uid for m in box.messages.values() if "\\Deleted" in m.flags])
                      if u in box.messages)
        if gone:
            self._stage(j.Expunged(e=self.epoch, s=self._next(), box=box.id, uids=gone))
        return gone

    def copy(self, src: str, uids: Iterable[int], dst: str) -> dict[int, int]:
        """Copy messages (the body file is shared); returns source UID -> new UID (COPYUID)."""
        a, b = self.state.box(src), self.state.box(dst)
        mapping = {}
        for uid in sorted(uids):
            msg = a.messages.get(uid)
            if msg is None:
                continue
            new = b.uidnext
            self._stage(j.MessageAppended(e=self.epoch, s=self._next(), box=b.id, uid=new, body=msg.body,
                                          flags=sorted(msg.flags), date=msg.date, size=msg.size))
            mapping[uid] = new
        # A copy keeps each colleague's own \Seen too, as it keeps the owner's in its flags.
        for user, private in list(a.private.items()):
            seen = [mapping[u] for u in sorted(private.seen) if u in mapping]
            if seen:
                self.store_seen(dst, user, seen, True)
        return mapping

    def move(self, src: str, uids: Iterable[int], dst: str) -> dict[int, int]:
        mapping = self.copy(src, uids, dst)
        self.expunge(src, list(mapping))
        return mapping

    # --- durability ------------------------------------------------------------------------

    def commit(self) -> None:
        """fsync the staged records (one fsync for the batch), then make sure no newer owner
        claimed the account meanwhile.  Only after this returns may the batch be acknowledged."""
        pending = self.prepare_commit()
        if pending is None:
            return
        pending.sync()
        self.finish_commit(pending)
        if self.snapshot_due:
            self.snapshot()

    def prepare_commit(self) -> PendingCommit | None:
        """Take the staged batch (None: nothing staged).  Its ``sync()`` must run, and then
        ``finish_commit``, before anything else is staged or committed on this handle."""
        self._check()
        if not self._pending:
            return None
        dir_fd = None
        if self._body_fds or self._bodies_synced_early:
            # The new bodies' names must be durable before a record naming them is; a batch
            # that wrote no body (flags, expunges, ACLs: most IMAP commits) has nothing there
            # to sync, and the directory's fsync cost as much CPU as the journal's own.
            if self._dir_fd is None:
                self._dir_fd = os.open(self.bodies_dir, os.O_RDONLY | os.O_DIRECTORY)
            dir_fd = self._dir_fd
        pending = PendingCommit(self, b"".join(self._pending), self._pending_records, self._body_fds, dir_fd)
        self._pending, self._pending_records, self._body_fds = [], [], []
        self._bodies_synced_early = False
        # Broken until finished: a sync that never comes back leaves the handle unusable.
        self._broken = "commit under way"
        return pending

    def finish_commit(self, pending: PendingCommit) -> None:
        """After ``pending.sync()``: raise what it failed with (the handle stays broken), or
        ``Fenced`` if a newer owner claimed the account; else the batch is durable and may be
        acknowledged, and the listeners hear of it."""
        if pending.error is None and not pending.synced:
            pending.error = MailboxError("the commit was never synced")
        if pending.error is None and pending.newer is not None:
            pending.error = j.Fenced(f"epoch {pending.newer} claimed the account after us ({self.epoch})")
        if pending.error is not None:
            for fd in pending.body_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._broken = f"commit failed: {pending.error}"
            raise pending.error
        self._broken = None
        for body in self._freed:
            (self.bodies_dir / body).unlink(missing_ok=True)
        self._freed.clear()
        self._since_snapshot += len(pending.records)
        for listener in list(self._listeners):
            listener(pending.records)

    @property
    def snapshot_due(self) -> bool:
        return self._since_snapshot >= SNAPSHOT_EVERY

    def snapshot(self) -> None:
        self._check()
        j.write_snapshot(self.journal_dir, self.epoch, self._offset, self.state.to_json())
        self._since_snapshot = 0
        for epoch, off, path in j.list_snapshots(self.journal_dir)[:-2]:
            if epoch == self.epoch and off < self._offset:
                path.unlink(missing_ok=True)

    def relocate(self, mail_dir: Path) -> None:
        """The account directory was renamed (a foldering switch): follow it.  The segment's
        file descriptor stays valid across a rename on one file system."""
        self._check()
        if self._pending:
            raise MailboxError("commit before relocating")
        self.dir = Path(mail_dir)
        self.journal_dir = self.dir / "journal"
        self.bodies_dir = self.dir / "bodies"

    def close(self) -> None:
        if self._fd is not None and not self._broken:
            with contextlib.suppress(OSError):
                self._sweep_bodies()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for fd in [*self._body_fds, *([self._dir_fd] if self._dir_fd is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._body_fds, self._dir_fd = [], None
        self._broken = self._broken or "closed"

    # --- internals -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._broken:
            raise j.Fenced(f"account handle unusable ({self._broken}); open the account again")

    def _next(self) -> int:
        return self.state.seq + 1

    def _stage(self, record: j._Record) -> None:
        self._check()
        if isinstance(record, j.Expunged):
            box = self.state.boxes.get(record.box)
            for uid in record.uids if box is not None else ():
                if uid in box.messages:
                    self._expunged[(record.box, uid)] = box.messages[uid]
            while len(self._expunged) > EXPUNGED_KEPT:
                self._expunged.popitem(last=False)
        self._freed += self.state.apply(record)
        self._pending.append(j.encode(record))
        self._pending_records.append(record)

    def _write_now(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self._offset += len(data)

    def _write_body(self, data: bytes) -> str:
        """Written under its final name (unique to this handle) and left open: the commit
        fsyncs it, and the directory once, before any record names it."""
        self._check()
        if len(self._body_fds) >= MAX_OPEN_BODIES:
            # Durable early does no harm (nothing names them yet); the directory still waits
            # for the commit.
            _sync_and_close(self._body_fds)
            self._bodies_synced_early = True
        self._body_counter += 1
        name = f"{self.epoch}-{self.state.seq + 1}-{self._body_counter}"
        fd = os.open(self.bodies_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            # A disk that filled up mid-body: the part written is nobody's, and the space it
            # holds is what a retry will need.
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.bodies_dir / name)
            raise
        self._body_fds.append(fd)
        return name
