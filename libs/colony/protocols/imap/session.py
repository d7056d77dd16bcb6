"""The IMAP session rules: states, which command runs where, untagged updates and the
response writer (RFC 9051 / RFC 3501 and the extensions in ``CAPABILITIES``), sans-IO.

Theory of operation
-------------------
A connection owns one ``Session``.  The shell feeds it the client's octets
(``receive_data``) and asks for the next thing to do (``next_action``), one at a time:

* ``Send(data)`` -- octets for the client;
* ``Authenticate(tag, user, password)`` -- a LOGIN or AUTHENTICATE PLAIN / LOGIN to check (the
  session never sees the account database); the shell answers ``auth_result``;
* ``NeedStore()`` -- the next command (or an IDLE wake-up) needs the account's mail: the
  shell calls ``run(store)`` with the store held exclusively (the account's lock, in a
  worker thread: the store is blocking file I/O), and ``run`` queues the responses;
* ``Close()`` -- the session is over (LOGOUT, autologout, a hand-off refused): close the
  connection after sending what was queued;
* ``StartCompression()`` -- COMPRESS DEFLATE was answered OK (RFC 4978): every octet after
  the ``Send`` before it is compressed, both ways (``compression.Deflate`` in the shell);
* ``None`` -- nothing to do until more octets arrive (or ``wake()``/``tick()``).

Commands are handled strictly in order: while one waits for the store or for
authentication, later pipelined commands stay queued in the reader's output, so responses
never overtake each other.

States (RFC 9051 §3): NOT_AUTHENTICATED -> AUTHENTICATED (LOGIN, AUTHENTICATE, or a
pre-authenticated hand-off) -> SELECTED (SELECT/EXAMINE) -> back by CLOSE/UNSELECT or a
failed SELECT; LOGOUT from any.  ``_ANY``, ``_NOT_AUTH``, ``_AUTH`` and ``_SELECTED`` say which
command runs in which state; a command in the wrong state gets ``BAD``, never an exception.

Enabled state: CONDSTORE (by ENABLE or its first use: MODSEQ then goes with every FLAGS),
QRESYNC (VANISHED replaces EXPUNGE), IMAP4rev2 / UTF8=ACCEPT (UTF-8 names and strings,
ESEARCH for SEARCH, no \\Recent).  ``\\Recent`` itself is the store's business
(``Store.recent``, e.g. ``RecentMarks``): the first read-write session to see a message
claims it.

Untagged updates (RFC 9051 §7.5.1, RFC 3501 §7.4.1): the session keeps its own view of the
selected mailbox -- the UIDs in sequence order and the flags it last reported -- and at the
end of every command compares it with the store: messages gone are announced by EXPUNGE
(highest sequence number first, so each number is right when sent), new ones by EXISTS,
changed flags by ``FETCH (FLAGS)``.  EXPUNGE is held back after FETCH, STORE and SEARCH
(and SORT/THREAD) without UID, because the client may be using sequence numbers from
before; it goes out after the next command that allows it (NOOP, IDLE, UID commands...).
Other sessions' changes thus reach a session exactly at command ends, and an IDLE session
when ``wake()`` says the account changed.

Memory: the reader bounds each command; a FETCH queues about ``FETCH_BATCH_BYTES`` of
responses and asks for the store again (``NeedStore``) only once the shell has taken them;
parsed MIME structures are cached for a handful of messages only; sequence sets are
resolved against the mailbox without ever being expanded.

Time comes from the injected ``clock`` (seconds): ``tick()`` ends a session idle for longer
than ``autologout`` (30 minutes, RFC 9051 §5.4) with ``* BYE``, and tells a client in IDLE
that nothing happened (``* OK Still here``) after ``idle_notify`` seconds without a word to
it (2 minutes, Dovecot's ``imap_idle_notify_interval``): a NAT or firewall between them
forgets a connection silent for a few minutes, and the client would wait in IDLE on a
connection that no longer reaches it; a peer gone without a FIN is found by TCP once
something is sent.  ``deadline`` says when ``tick`` next has something to do.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from colony.protocols.imap import commands as C
from colony.protocols.imap import encode as E
from colony.protocols.imap import binary_append, compression, mime, rights, search, shared
from colony.protocols.imap.reader import Command, CommandReader, Continue, LineTooLong, TooBig
from colony.protocols.imap.syntax import SequenceSet, decode_mutf7, encode_mutf7

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not authenticated", "authenticated", "selected", "logout"
AUTOLOGOUT = 30 * 60.0
IDLE_NOTIFY = 120.0          # seconds an IDLE client goes without a word before "* OK Still here"
DELIMITER = "/"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_STATUS_OFFERED = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED", "HIGHESTMODSEQ",
                   "DELETED-STORAGE"}
QUOTA_ROOT = ""     # one quota root per account: all its mailboxes (RFC 9208)
FETCH_BATCH_BYTES = 1024 * 1024
MIME_CACHE = 8           # parsed messages kept per session
# FETCH items rendered once per message and kept on its parsed tree (``mime.Part.rendered``):
# at most this many per message, each at most this long (a store that caches trees counts
# the bound in their weight).
RENDER_MEMO = 4
RENDER_MEMO_LARGEST = 1536
READS_AT_MOST = 64       # messages a command may read and still count as light (``pending_reads``)
MAX_APPEND = 64 * 1024 * 1024
# What one account may make of its mailbox tree (CREATE, RENAME): ``NO [LIMIT]`` past it
# (RFC 5530).  Without them one command could make thousands of mailboxes (a name of many
# levels creates every missing parent) and an account grow its state without bound.  A level
# is at most a file name's 255 octets, which clients and other servers assume.
MAX_MAILBOXES = 10_000
MAX_NAME_OCTETS = 1024
MAX_NAME_LEVEL_OCTETS = 255
MAX_NAME_LEVELS = 32
# Distinct keywords a mailbox may hold (Cyrus allows 128 user flags per mailbox): each is in
# every SELECT's FLAGS and PERMANENTFLAGS, so a client adding thousands made every later
# SELECT of the mailbox carry them.
MAX_KEYWORDS = 256
PREAUTH_LITERAL = 1024

CAPABILITIES = ("IMAP4rev1", "LITERAL+", "ID", "IDLE", "NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "CHILDREN",
                "SPECIAL-USE", "ENABLE", "ESEARCH", "SEARCHRES", "SORT", "THREAD=ORDEREDSUBJECT",
                "THREAD=REFERENCES", "SORT=DISPLAY", "ESORT", "MULTIAPPEND", "STATUS=SIZE", "BINARY", "CONDSTORE",
                "LIST-EXTENDED", "LIST-STATUS", "QUOTA", "QUOTA=RES-STORAGE", "QRESYNC",
                "IMAP4rev2", "UTF8=ACCEPT", "ACL", "RIGHTS=texk")
PREAUTH_CAPABILITIES = ("AUTH=PLAIN", "AUTH=LOGIN", "SASL-IR")
# RFC 4978's COMPRESS is a command of the authenticated state (its grammar: command-auth), so
# it is offered only after login; before it the edge speaks IMAP (``preauth``) and then hands
# the connection over, so the store, which compresses, could not have started yet anyway.
POSTAUTH_CAPABILITIES = (compression.CAPABILITY,)

_ANY = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
_NOT_AUTH = {"LOGIN", "AUTHENTICATE", "STARTTLS"}
_AUTH = {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "STATUS",
         "APPEND", "NAMESPACE", "ENABLE", "IDLE", "GETQUOTA", "GETQUOTAROOT", "SETQUOTA",
         "GETACL", "SETACL", "DELETEACL", "LISTRIGHTS", "MYRIGHTS", "COMPRESS"}
_SELECTED = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "SORT", "THREAD",
             "UID EXPUNGE"}
# Commands that only read the account's state (mailboxes, messages' metadata, ACLs, quota):
# never a commit, never a message's octets (``pending_reads``).
_STATE_READS = {"NOOP", "CHECK", "SELECT", "EXAMINE", "UNSELECT", "IDLE", "NAMESPACE", "ENABLE", "LIST", "LSUB",
                "STATUS", "GETQUOTA", "GETQUOTAROOT", "GETACL", "LISTRIGHTS", "MYRIGHTS"}
# Commands whose only writes are journal records of the selected mailbox (flags, expunges):
# no message to store, no mailbox or ACL changed (``pending_reads(record_writes=True)``).
_RECORD_WRITES = {"STORE", "EXPUNGE", "UID EXPUNGE", "CLOSE"}
# Commands that never create, delete or rename a mailbox nor change an ACL: whatever they
# write is messages and flags (``pending_keeps_grants``).
_KEEPS_GRANTS = _STATE_READS | {"FETCH", "STORE", "SEARCH", "SORT", "THREAD", "CLOSE", "EXPUNGE", "UID EXPUNGE",
                                "APPEND", "COPY", "MOVE", "SUBSCRIBE", "UNSUBSCRIBE"}
# The name a FETCH response gives an item asked for without setting \Seen.
_LABELS = {"BODY.PEEK": "BODY", "BINARY.PEEK": "BINARY"}
# FETCH items answered from the message's metadata alone.
_FETCH_METADATA = {"FLAGS", "UID", "MODSEQ", "INTERNALDATE", "RFC822.SIZE"}


# --- actions for the shell ---------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Authenticate:
    tag: str
    user: str
    password: str


@dataclass(frozen=True)
class NeedStore:
    pass


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class StartCompression:
    pass


Action = Send | Authenticate | NeedStore | Close | StartCompression


# --- what the session needs from the store ----------------------------------------------------

class StoredMessage(Protocol):
    uid: int
    flags: frozenset[str]
    date: datetime
    size: int
    modseq: int


class BoxInfo(Protocol):
    name: str
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    special_use: str | None
    exists: int
    subscribed: bool


class Store(Protocol):
    """One account's mail (``colony.storage.mailbox.AccountMail`` plus ``subscriptions``);
    errors are ``ValueError`` subclasses whose text may be shown to the client."""

    def mailboxes(self) -> list[BoxInfo]: ...
    def subscriptions(self) -> set[str]: ...
    quota_bytes: int | None     # the account's storage limit (None: unlimited)
    bytes_used: int

    def recent(self, name: str, uids: list[int], claim: bool) -> set[int]:
        """Which of ``uids`` (ascending) no session has seen yet: the ``\\Recent`` ones.
        With ``claim`` they become this session's (no other session will see them recent)."""
    def messages(self, name: str) -> list[StoredMessage]: ...
    def body(self, name: str, uid: int) -> bytes: ...
    # Optional: ``(body, mime.analyze(body))`` from a cache the store keeps for all its
    # sessions, or None (the session then parses it and keeps it in its own small cache).
    # def parsed(self, name: str, uid: int) -> tuple[bytes, mime.Part] | None: ...
    def create_mailbox(self, name: str, special_use: str | None = None) -> None: ...
    def rename_mailbox(self, old: str, new: str) -> None: ...
    def delete_mailbox(self, name: str) -> None: ...
    def subscribe(self, name: str, on: bool = True) -> None: ...
    def acl(self, name: str) -> dict[str, str]: ...
    # Optional: the rights (``rights.ALL`` letters) this session's user holds on ``name``; a
    # store without it is the user's own account, where the owner holds every right.
    # def myrights(self, name: str) -> str: ...
    # Optional: a token equal between two calls only if no message of the mailbox was added,
    # expunged or had its flags changed in between (None: the store cannot tell); raises
    # ValueError for a mailbox that is gone, as ``messages`` does.
    # def version(self, name: str) -> object | None: ...
    # Optional: the mailbox's messages by UID, a live mapping that follows the store's
    # changes (None: the store cannot; the session then maps ``messages`` itself).
    # def message_map(self, name: str) -> Mapping[int, StoredMessage] | None: ...
    def set_acl(self, name: str, identifier: str, rights: str) -> None: ...
    def append(self, name: str, data: bytes, flags=(), date: datetime | None = None): ...
    def store_flags(self, name: str, uids, flags, mode: str = "set") -> None: ...
    def expunge(self, name: str, uids=None) -> list[int]: ...
    def copy(self, src: str, uids, dst: str) -> dict[int, int]: ...
    def move(self, src: str, uids, dst: str) -> dict[int, int]: ...
    def commit(self) -> None: ...


_MORE = "\x00more"    # a handler's answer: not done, call run() again once the output is sent
# FETCH items a message expunged by another session can still be given (the store keeps its
# metadata for a while, not its body).
_KEPT_WHEN_EXPUNGED = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"}


class RecentMarks:
    """``\\Recent`` for one account, shared by its sessions in this process (``Store.recent``):
    per mailbox, the highest UID a session has claimed.  Messages above the mark are recent;
    the first read-write session to see them claims them.  Kept in memory only (RFC 3501
    allows a server that lost it to show messages recent again).  A mark holds for the
    mailbox's UIDVALIDITY it was claimed under: a mailbox deleted and created again (or
    another renamed to its name) numbers from 1 again, and the old mark would hide its new
    messages from every session."""

    def __init__(self) -> None:
        self._marks: dict[str, tuple[int, int]] = {}     # name -> (UIDVALIDITY, highest UID claimed)

    def recent(self, name: str, uidvalidity: int, uids: list[int], claim: bool) -> set[int]:
        held, mark = self._marks.get(name, (uidvalidity, 0))
        if held != uidvalidity:
            mark = 0
        found = {u for u in uids if u > mark}
        if claim and found:
            self._marks[name] = (uidvalidity, max(found))
        return found


class _Bad(Exception):
    """Answer the command ``BAD``."""


class _No(Exception):
    """Answer the command ``NO`` (``text`` may start with a response code)."""


# --- the session -------------------------------------------------------------------------------

class Session:
    def __init__(self, clock: Callable[[], float], hostname: str = "colony", autologout: float = AUTOLOGOUT,
                 account: str | None = None, handed_over: bool = False, max_literal: int = MAX_APPEND,
                 max_mailboxes: int = MAX_MAILBOXES, idle_notify: float = IDLE_NOTIFY) -> None:
        """``account``: the session starts authenticated -- ``* PREAUTH`` greeting, or with
        ``handed_over`` the hand-off's one untagged ``OK [CAPABILITY ...]`` line that the edge
        sends tagged as its LOGIN answer (``colony.contracts.handoff``)."""
        self.clock = clock
        self.hostname = hostname
        self.autologout = autologout
        self.idle_notify = idle_notify
        self.max_mailboxes = max_mailboxes
        # Before login only small literals (a user name, a password) are read.
        self._max_literal = max_literal
        self.reader = CommandReader(max_literal=max_literal if account else PREAUTH_LITERAL)
        self.state = AUTHENTICATED if account else NOT_AUTHENTICATED
        self.account = account
        self._out: deque[Action] = deque()
        self._pending: Command | None = None         # parsed later, in run()
        self._pending_command: C.ImapCommand | None = None
        self._waiting = False                        # for auth or the store
        self._last_activity = clock()
        # selected mailbox
        self.mailbox: str | None = None
        self.read_only = False
        self._uids: list[int] = []
        self._flags: dict[int, frozenset[str]] = {}
        self._uidvalidity = 0
        # The store's version of the selected mailbox when the view above last matched it
        # whole (``Store.version``); None: unknown, or expunges held back.  Equal at a
        # command's end: nothing to tell, no walk over the mailbox.
        self._synced: object | None = None
        self._saved: frozenset[int] = frozenset()     # SEARCHRES $ (UIDs)
        self.condstore = False     # RFC 7162: on once a CONDSTORE enabling command ran
        self.qresync = False       # ENABLE QRESYNC: VANISHED instead of EXPUNGE
        self.rev2 = False          # ENABLE IMAP4rev2 (RFC 9051): ESEARCH for SEARCH, no \\Recent
        self.utf8 = False          # ENABLE UTF8=ACCEPT (or IMAP4rev2): UTF-8 names and strings
        self._resume: tuple | None = None   # a FETCH still to continue (see _fetch_batch)
        self._fetch_missed = False          # the FETCH under way skipped an expunged message
        self._recent: set[int] = set()      # UIDs that are recent in this session
        self._keywords: set[str] = set()    # keywords announced in FLAGS
        # IDLE
        self._idle_tag: str | None = None
        self._woken = False
        self._idle_heard = 0.0     # when an IDLE client last heard from us (its "+", an update, a "Still here")
        self._mime: OrderedDict[tuple[str, int], tuple[bytes, mime.Part]] = OrderedDict()
        self._authenticate_tag: str | None = None   # AUTHENTICATE waiting for its response line
        self._authenticate_mechanism = "PLAIN"
        self._authenticate_user: bytes | None = None   # AUTHENTICATE LOGIN: the user name, once given
        self.compressing = False    # COMPRESS DEFLATE answered OK (RFC 4978)
        caps = " ".join(self._capabilities())
        if account and handed_over:
            self._send(f"OK [CAPABILITY {caps}] Logged in")
        elif account:
            self._send(f"* PREAUTH [CAPABILITY {caps}] {hostname} ready, {account}")
        else:
            self._send(f"* OK [CAPABILITY {caps}] {hostname} IMAP ready")

    # --- feeding ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._last_activity = self.clock()
        self.reader.receive_data(data)

    @property
    def idling(self) -> bool:
        return self._idle_tag is not None

    def wake(self) -> None:
        """The account changed (a delivery, another session): IDLE reports it at once."""
        self._woken = True

    def tick(self) -> None:
        """Autologout: a session silent for ``autologout`` seconds is ended.  A client in IDLE
        that heard nothing for ``idle_notify`` seconds is told ``* OK Still here``."""
        now = self.clock()
        if now - self._last_activity >= self.autologout:
            self.goodbye("Autologout; idle for too long")
        elif self._idle_tag is not None and now - self._idle_heard >= self.idle_notify:
            self._send("* OK Still here")
            self._idle_heard = now

    def goodbye(self, text: str) -> None:
        """End the session from the server's side (drain, the account moved)."""
        if self.state != LOGOUT:
            self._send(f"* BYE {text}")
            self.state = LOGOUT
            self._out.append(Close())

    def abort(self, text: str) -> None:
        """The store could not be reached for the waiting command: answer it ``NO text``."""
        self._waiting = False
        cmd, self._pending_command = self._pending_command, None
        if cmd is None and self._resume is not None:
            cmd, self._resume = self._resume[0], None
        if cmd is not None:
            self._tagged(cmd.tag, "NO", text)

    def pending_reads(self, record_writes: bool = False) -> list[int] | None:
        """What the waiting work (the next ``NeedStore``) needs besides the account's state in
        memory, so that a shell can run light commands without handing them to a worker
        thread: the UIDs of the selected mailbox whose octets it reads (``[]``: none), or
        ``None`` when it may write (a commit is blocking I/O), reads more than
        ``READS_AT_MOST`` messages, or is not known to only read.  A hint for where to run
        ``run``, which is correct wherever it runs.

        ``record_writes``: the shell may commit where it runs light commands (its syncs are
        quick), so a command whose only writes are journal records of flags and expunges
        (STORE, EXPUNGE, UID EXPUNGE, CLOSE, a FETCH that sets \\Seen) counts as light too;
        one that stores a message or changes mailboxes or ACLs never does."""
        if self._resume is not None:
            return None
        cmd = self._pending_command
        if cmd is None:
            return [] if self._idle_tag is not None else None     # IDLE woken: a sync
        name = _name(cmd)
        if name in _STATE_READS or (record_writes and name in _RECORD_WRITES):
            return []
        if name == "FETCH":
            items = {i.name for i in cmd.items}
            if items <= _FETCH_METADATA:
                return []
            if not (self.read_only or record_writes) and items & {"RFC822", "RFC822.TEXT", "BODY", "BINARY"}:
                return None      # may set \Seen
            try:
                uids = self._select_uids(cmd.sequence, cmd.uid)
            except _Bad:
                return []        # answered BAD without reading
        elif name in ("SORT", "THREAD") or (name == "SEARCH" and search.reads_message(cmd.criteria)):
            uids = self._uids
        elif name == "SEARCH":
            return []
        else:
            return None
        return list(uids) if len(uids) <= READS_AT_MOST else None

    def pending_keeps_grants(self) -> bool:
        """Whether the waiting work certainly leaves every mailbox and ACL of the account as
        it is (it reads, or writes only messages and flags), so a shell that must follow who
        the account grants rights to need not look after it.  A hint like ``pending_reads``:
        False whenever in doubt."""
        if self._resume is not None:
            return True          # the next batch of a FETCH
        cmd = self._pending_command
        if cmd is None:
            return self._idle_tag is not None     # IDLE woken: a sync
        return _name(cmd) in _KEEPS_GRANTS

    @property
    def deadline(self) -> float:
        """When ``tick`` next has something to do: the autologout, or an IDLE's next word."""
        deadline = self._last_activity + self.autologout
        if self._idle_tag is not None:
            return min(deadline, self._idle_heard + self.idle_notify)
        return deadline

    def next_action(self) -> Action | None:
        while True:
            if self._out:
                return self._out.popleft()
            if self.state == LOGOUT or self._waiting:
                return None
            if self._resume is not None:
                self._waiting = True
                return NeedStore()
            if self._idle_tag is not None and self._woken and self.state == SELECTED:
                self._woken = False
                self._waiting = True
                return NeedStore()
            event = self.reader.next_event()
            if event is None:
                return None
            self._event(event)

    # --- framing events ----------------------------------------------------------------------

    def _event(self, event) -> None:
        if isinstance(event, Continue):
            self._send("+ " + event.text)
        elif isinstance(event, TooBig):
            self._tagged(event.tag, "NO", "[TOOBIG] Literal too large")
            if not event.synchronizing:
                self._refuse_to_skip("[TOOBIG] Literal too large")
        elif isinstance(event, LineTooLong):
            # An over-long response to AUTHENTICATE ends the exchange (its tag is answered).
            tag, self._authenticate_tag, self._authenticate_user = self._authenticate_tag or event.tag, None, None
            self._tagged(tag, "BAD", "Command line too long")
            self._refuse_to_skip("Command line too long")
        elif isinstance(event, Command):
            self._command(event)
            if self.reader.skipping:
                # "a {n+}": a literal where the tag or the command name goes is no command
                # (answered BAD), and the reader skips its octets as they arrive.
                self._refuse_to_skip("A literal where no command can have one")

    def _refuse_to_skip(self, why: str) -> None:
        """What the reader would now skip as it arrives (a refused non-synchronizing literal,
        the rest of an over-long line) is not read under COMPRESS: the session ends instead,
        as RFC 7888 §4 lets a server choose.  Compressed, every octet on the wire can inflate
        to a thousand that the store would inflate only to throw away (255 KB of wire made
        256 MiB and 0.47 s of the store's CPU), without limit for an endless line."""
        if self.compressing:
            self.goodbye(f"{why}; closing rather than reading it")

    def _command(self, command: Command) -> None:
        if self._idle_tag is not None:
            line = command.parts[0] if isinstance(command.parts[0], bytes) else b""
            tag, self._idle_tag = self._idle_tag, None
            if line.strip().upper() == b"DONE" and len(command.parts) == 1:
                self._tagged(tag, "OK", "IDLE terminated")
            else:
                self._tagged(tag, "BAD", "Expected DONE")
            return
        if self._authenticate_tag is not None:
            tag, self._authenticate_tag = self._authenticate_tag, None
            line = command.parts[0] if isinstance(command.parts[0], bytes) else b""
            self._sasl_step(tag, line.strip())
            return
        try:
            cmd = C.parse_command(command)
        except C.CommandError as exc:
            self._tagged(exc.tag, "BAD", str(exc)[:200] or "Syntax error")
            return
        name = _name(cmd)
        allowed = name in _ANY or (
            name in _NOT_AUTH if self.state == NOT_AUTHENTICATED else
            name in _AUTH if self.state == AUTHENTICATED else name in _AUTH | _SELECTED)
        if not allowed:
            where = {NOT_AUTHENTICATED: "before login", AUTHENTICATED: "without a selected mailbox",
                     SELECTED: "after login"}[self.state]
            self._tagged(cmd.tag, "BAD", f"{name} is not allowed {where}")
            return
        if name == "LOGOUT":
            self._send(f"* BYE {self.hostname} logging out")
            self._tagged(cmd.tag, "OK", "LOGOUT completed")
            self.state = LOGOUT
            self._out.append(Close())
        elif name == "CAPABILITY":
            self._send("* CAPABILITY " + " ".join(self._capabilities()))
            self._tagged(cmd.tag, "OK", "CAPABILITY completed")
        elif name == "ID":
            self._send('* ID ("name" "Colony" "vendor" "Colony")')
            self._tagged(cmd.tag, "OK", "ID completed")
        elif name == "NOOP" and self.state == NOT_AUTHENTICATED:
            self._tagged(cmd.tag, "OK", "NOOP completed")
        elif name == "STARTTLS":
            self._tagged(cmd.tag, "NO", "TLS is offered by the edge, not here")
        elif name == "COMPRESS":
            self._compress(cmd)
        elif name == "LOGIN":
            self._waiting = True
            self._out.append(Authenticate(cmd.tag, _text(cmd.user), _text(cmd.password)))
        elif name == "AUTHENTICATE":
            if cmd.mechanism not in ("PLAIN", "LOGIN"):
                self._tagged(cmd.tag, "NO", "Unsupported authentication mechanism")
                return
            self._authenticate_mechanism, self._authenticate_user = cmd.mechanism, None
            if cmd.initial is None:
                self._authenticate_tag = cmd.tag
                self._send("+ " + ("VXNlcm5hbWU6" if cmd.mechanism == "LOGIN" else ""))    # base64 "Username:"
            else:
                self._sasl_step(cmd.tag, cmd.initial)
        else:
            self._pending_command = cmd
            self._waiting = True
            self._out.append(NeedStore())

    def _compress(self, cmd: C.Compress) -> None:
        """RFC 4978 §3: OK, and compression starts right after that line's CRLF; NO
        [COMPRESSIONACTIVE] once it is on; BAD for a mechanism other than DEFLATE."""
        if self.compressing:
            self._tagged(cmd.tag, "NO", "[COMPRESSIONACTIVE] DEFLATE is active already")
        elif cmd.mechanism != compression.MECHANISM:
            self._tagged(cmd.tag, "BAD", f"Unknown compression mechanism {cmd.mechanism[:30]}")
        elif self.reader.holds_input:
            # The client must wait for COMPRESS's answer before it sends anything more (§3);
            # octets it sent anyway cannot be compressed (it did not know the answer), and the
            # reader has read them as plaintext: BAD keeps them, and the session, in plaintext.
            self._tagged(cmd.tag, "BAD", "COMPRESS must be the last command sent until its answer")
        else:
            self._tagged(cmd.tag, "OK", "DEFLATE active")
            self.compressing = True
            self._out.append(StartCompression())

    def _sasl_step(self, tag: str, line: bytes) -> None:
        if line == b"*":
            self._tagged(tag, "BAD", "Authentication cancelled")
        elif self._authenticate_mechanism == "LOGIN":
            self._sasl_login(tag, line)
        else:
            self._plain(tag, line)

    def _sasl_login(self, tag: str, line: bytes) -> None:
        """SASL LOGIN (draft-murchison-sasl-login): the user name, then the password, each
        asked for and answered in base64.  The password is asked for whatever the user name."""
        user, self._authenticate_user = self._authenticate_user, None
        try:
            value = b"" if line == b"=" else base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            self._tagged(tag, "BAD", "Invalid LOGIN response")
            return
        if user is not None:
            self._waiting = True
            self._out.append(Authenticate(tag, _text(user), _text(value)))
        elif not value:
            self._tagged(tag, "BAD", "Invalid LOGIN response")
        else:
            self._authenticate_tag, self._authenticate_user = tag, value
            self._send("+ UGFzc3dvcmQ6")      # base64 "Password:"

    def _plain(self, tag: str, line: bytes) -> None:
        try:
            raw = b"" if line == b"=" else base64.b64decode(line, validate=True)
            authzid, user, password = raw.split(b"\x00")
        except (binascii.Error, ValueError):
            self._tagged(tag, "BAD", "Invalid PLAIN response")
            return
        # Compared without case, as the edge does: an authzid that differs from the user only
        # in case names the same account (addresses are looked up without case).
        if authzid and _text(authzid).lower() != _text(user).lower():
            self._tagged(tag, "NO", "[AUTHORIZATIONFAILED] Acting as another user is not allowed")
            return
        self._waiting = True
        self._out.append(Authenticate(tag, _text(user), _text(password)))

    def auth_result(self, tag: str, account: str | None, reason: str = "Invalid credentials",
                    temporary: bool = False) -> None:
        self._waiting = False
        if account is None:
            code = "[UNAVAILABLE]" if temporary else "[AUTHENTICATIONFAILED]"
            self._tagged(tag, "NO", f"{code} {reason}")
            return
        self.account = account
        self.state = AUTHENTICATED
        self.reader.max_literal = self._max_literal
        self._tagged(tag, "OK", f"[CAPABILITY {' '.join(self._capabilities())}] Logged in")

    def _capabilities(self) -> tuple[str, ...]:
        return CAPABILITIES + (PREAUTH_CAPABILITIES if self.state == NOT_AUTHENTICATED else POSTAUTH_CAPABILITIES)

    # --- output ------------------------------------------------------------------------------

    def _send(self, line: str | bytes) -> None:
        data = line.encode("utf-8") if isinstance(line, str) else line
        self._out.append(Send(data + b"\r\n"))

    def _tagged(self, tag: str, status: str, text: str) -> None:
        self._send(f"{tag} {status} {text}")

    # --- running a command against the store --------------------------------------------------

    def run(self, store: Store) -> None:
        """Run the waiting command (or an IDLE wake-up) with ``store`` held exclusively."""
        self._waiting = False
        cmd, self._pending_command = self._pending_command, None
        if cmd is None and self._resume is not None:     # the next batch of a FETCH
            (cmd, items, uids, sets_seen), self._resume = self._resume, None
            handler = lambda c, st: self._fetch_batch(c, items, uids, sets_seen, st)  # noqa: E731
        elif cmd is None:                      # IDLE woken
            if self._idle_tag is not None:
                said = len(self._out)
                self._sync(store, expunge=True)
                if len(self._out) > said:
                    # An update counts as a word; a wake-up for a change elsewhere in the
                    # account (another folder) says nothing, and puts no "Still here" off.
                    self._idle_heard = self.clock()
            return
        else:
            handler = getattr(self, "_do_" + _name(cmd).replace(" ", "_").lower())
        name = _name(cmd)
        try:
            text = handler(cmd, store) or f"{name} completed"
            if text is _MORE:
                return
            if self._idle_tag is None:
                self._tagged(cmd.tag, "OK", text)
        except _Bad as exc:
            self._tagged(cmd.tag, "BAD", str(exc))
        except _No as exc:
            self._tagged(cmd.tag, "NO", str(exc))
        except search.BadCharset:
            self._tagged(cmd.tag, "NO", f"[BADCHARSET ({' '.join(search.CHARSETS)})] Unsupported charset")
        except (ValueError, mime.SectionError) as exc:
            self._tagged(cmd.tag, "NO", str(exc)[:200])
        except Exception:
            # A fault of ours: the command still gets its answer (the client would wait for
            # it for ever: the shell's ``abort`` no longer knows the command), and the shell
            # hears of the fault to log it and reopen the account.
            self._tagged(cmd.tag, "NO", "[SERVERBUG] Internal error")
            raise

    # --- mailbox names -------------------------------------------------------------------------

    def _decode_name(self, raw: bytes) -> str:
        try:
            name = raw.decode("utf-8") if self.utf8 else decode_mutf7(raw)
        except Exception:
            raise _No("[CANNOT] Invalid mailbox name") from None
        name = name.strip(DELIMITER) if name.upper() != "INBOX" else "INBOX"
        if name.upper() == "INBOX" or name.upper().startswith("INBOX" + DELIMITER):
            name = "INBOX" + name[5:]
        if not name or DELIMITER * 2 in name or any(ord(c) < 0x20 for c in name):
            raise _No("[CANNOT] Invalid mailbox name")
        return name

    def _check_new_names(self, store: Store, names: list[str], added: int) -> None:
        """Names a CREATE or RENAME is about to make, and how many mailboxes it adds."""
        for name in names:
            if len(name.encode("utf-8")) > MAX_NAME_OCTETS or name.count(DELIMITER) >= MAX_NAME_LEVELS or \
                    any(len(level.encode("utf-8")) > MAX_NAME_LEVEL_OCTETS for level in name.split(DELIMITER)):
                raise _No(f"[LIMIT] Mailbox names are at most {MAX_NAME_OCTETS} octets, {MAX_NAME_LEVELS} levels "
                          f"of {MAX_NAME_LEVEL_OCTETS} octets")
        if added and len(store.mailboxes()) + added > self.max_mailboxes:
            raise _No(f"[LIMIT] An account has at most {self.max_mailboxes} mailboxes")

    def _wire_name(self, name: str) -> bytes:
        return E.string(name, utf8=True) if self.utf8 else E.string(encode_mutf7(name))

    def _pattern_text(self, raw: bytes) -> str:
        return raw.decode("utf-8", "replace") if self.utf8 else _text_mutf7(raw)

    def _find(self, store: Store, name: str) -> BoxInfo:
        for box in store.mailboxes():
            if box.name == name:
                return box
        unreachable = getattr(store, "unreachable", None)
        why = unreachable(name) if unreachable is not None else None
        if why:     # a colleague's folder whose store did not answer: not "nonexistent"
            raise _No(why if why.startswith("[") else f"[UNAVAILABLE] {why}")
        raise _No("[NONEXISTENT] No such mailbox")

    def _rights(self, store: Store, name: str) -> str:
        """What the user may do on ``name``: asked of the store each time, so a grant or a
        revoke counts from the next command on."""
        myrights = getattr(store, "myrights", None)
        return rights.ALL if myrights is None else myrights(name)

    def _require(self, store: Store, name: str, needed: str) -> str:
        held = self._rights(store, name)
        why = rights.refusal(held, needed)
        if why is not None:
            raise _No(why)
        return held

    def _require_parent(self, store: Store, name: str) -> None:
        """CREATE and RENAME's target: ``k`` on the existing parent (RFC 4314 §4); a top-level
        name in the user's own hierarchy needs nothing, one in a colleague's is theirs alone."""
        parent = name.rpartition(DELIMITER)[0]
        if parent and parent in {b.name for b in store.mailboxes()}:
            self._require(store, parent, "k")
        elif self._owner(store, name) != (self.account or "").lower():
            raise _No("[NOPERM] Only the owner creates top-level mailboxes")

    def _owner(self, store: Store, name: str) -> str:
        owner_of = getattr(store, "owner_of", None)
        return (owner_of(name) if owner_of is not None else self.account or "").lower()

    # --- authenticated state -----------------------------------------------------------------

    def _do_noop(self, cmd, store: Store) -> None:
        self._sync(store, expunge=True)

    def _do_check(self, cmd, store: Store) -> None:
        self._sync(store, expunge=True)

    def _do_capability(self, cmd, store: Store) -> None:  # pragma: no cover - answered inline
        self._send("* CAPABILITY " + " ".join(self._capabilities()))

    def _do_namespace(self, cmd, store: Store) -> None:
        # Folders colleagues share appear under "Other Users/<owner>/" (RFC 2342) when the
        # store offers them (``shares``).
        others = f'(("{shared.PREFIX}" "{DELIMITER}"))' if getattr(store, "shares", False) else "NIL"
        self._send(f'* NAMESPACE (("" "{DELIMITER}")) {others} NIL')
        self._sync(store, expunge=True)

    def _do_enable(self, cmd: C.Enable, store: Store) -> None:
        # CONDSTORE and QRESYNC can be switched on here (IMAP4rev2 and UTF8=ACCEPT are not
        # offered); RFC 5161 lists what this command newly enabled.
        enabled = []
        if "CONDSTORE" in cmd.capabilities and not self.condstore:
            self._condstore_on(store)
            enabled.append("CONDSTORE")
        if "QRESYNC" in cmd.capabilities and not self.qresync:
            self._condstore_on(store)      # QRESYNC implies CONDSTORE (RFC 7162 §3.2.3)
            self.qresync = True
            enabled.append("QRESYNC")
        if "IMAP4REV2" in cmd.capabilities and not self.rev2:
            self.rev2 = self.utf8 = True
            enabled.append("IMAP4rev2")
        if "UTF8=ACCEPT" in cmd.capabilities and not self.utf8:
            self.utf8 = True
            enabled.append("UTF8=ACCEPT")
        self._send("* ENABLED" + "".join(" " + e for e in enabled))

    def _condstore_on(self, store: Store) -> None:
        """A CONDSTORE enabling command ran (RFC 7162 §3.1): from now on MODSEQ goes with
        FLAGS, and a selected mailbox's HIGHESTMODSEQ is announced once."""
        if self.condstore:
            return
        self.condstore = True
        if self.state == SELECTED and self.mailbox is not None:
            box = self._find(store, self.mailbox)
            self._send(f"* OK [HIGHESTMODSEQ {max(box.highest_modseq, 1)}] Highest")

    def _do_idle(self, cmd: C.Simple, store: Store) -> str | None:
        # The continuation first, then what changed since the client last heard: RFC 2177's
        # order (updates "as long as an IDLE command is active"), and clients read exactly
        # one response after IDLE and give up unless it is the "+" (getmail's go_idle).
        self._idle_tag = cmd.tag
        self._woken = False
        self._idle_heard = self.clock()
        self._send("+ idling")
        self._sync(store, expunge=self.state == SELECTED)
        return None

    def _do_select(self, cmd: C.Select, store: Store) -> str:
        if cmd.qresync and not self.qresync:
            raise _Bad("QRESYNC parameter without ENABLE QRESYNC")
        if cmd.condstore:
            self.condstore = True
        if self.state == SELECTED:
            self._unselect()
            self._send("* OK [CLOSED] Previous mailbox closed")
        name = self._decode_name(cmd.mailbox)
        box = self._find(store, name)
        held = self._require(store, box.name, rights.NEEDS[cmd.name])
        version = _version(store, name)
        messages = store.messages(name)
        self._synced = version
        self.state = SELECTED
        self.mailbox = box.name
        self.read_only = cmd.name == "EXAMINE" or rights.read_only(held)
        self._uids = [m.uid for m in messages]
        self._flags = {m.uid: m.flags for m in messages}
        self._uidvalidity = box.uidvalidity
        self._recent = store.recent(box.name, self._uids, claim=not self.read_only)
        keywords = sorted({f for m in messages for f in m.flags if not f.startswith("\\")})
        self._keywords = set(keywords)
        self._send(f"* FLAGS ({' '.join((*SYSTEM_FLAGS, *keywords))})")
        self._send(f"* {len(messages)} EXISTS")
        if self.rev2:
            # RFC 9051 §6.3.2: no RECENT or UNSEEN; the mailbox's name as the server has it.
            self._send(f"* LIST () \"{DELIMITER}\" ".encode() + self._wire_name(box.name))
        else:
            self._send(f"* {len(self._recent)} RECENT")
            unseen = next((i + 1 for i, m in enumerate(messages) if "\\Seen" not in m.flags), None)
            if unseen is not None:
                self._send(f"* OK [UNSEEN {unseen}] First unseen")
        self._send(f"* OK [UIDVALIDITY {box.uidvalidity}] UIDs valid")
        self._send(f"* OK [UIDNEXT {box.uidnext}] Predicted next UID")
        # Every SELECT/EXAMINE, CONDSTORE enabled or not: RFC 7162 §3.1.2.1 asks it of a
        # server that keeps mod-sequences, and a client learns here whether it may use them.
        self._send(f"* OK [HIGHESTMODSEQ {max(box.highest_modseq, 1)}] Highest")
        if self.read_only:
            self._send("* OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            # Only the flags this user may change are permanent for them (RFC 4314 §4).
            permanent = " ".join(rights.settable_flags(held, (*SYSTEM_FLAGS, *keywords, "\\*")))
            self._send(f"* OK [PERMANENTFLAGS ({permanent})] Flags permitted")
        if cmd.qresync:
            self._resync(store, box, messages, cmd.qresync)
        return f"[{'READ-ONLY' if self.read_only else 'READ-WRITE'}] {cmd.name} completed"

    def _resync(self, store: Store, box: BoxInfo, messages, qresync: tuple) -> None:
        """SELECT ... (QRESYNC (uidvalidity modseq [known-uids [seq-match]])) (RFC 7162
        §3.2.5): what vanished and what changed since the client's modseq.  Expunges leave
        no trace in the store, so VANISHED (EARLIER) names every UID in the client's known
        range that is not there (the RFC allows UIDs expunged before that modseq)."""
        uidvalidity, modseq, known, _match = qresync
        if uidvalidity != box.uidvalidity:
            return                          # the client must resynchronise from scratch
        gone = self._missing(known, box.uidnext - 1)
        if gone:
            self._send(f"* VANISHED (EARLIER) {gone}")
        for i, m in enumerate(messages):
            if m.modseq > modseq and (known is None or known.contains(m.uid, box.uidnext - 1)):
                self._send(f"* {i + 1} FETCH (UID {m.uid} FLAGS ({self._show(m.uid, m.flags)}) MODSEQ ({m.modseq}))")

    def _missing(self, known: SequenceSet | None, highest: int) -> str:
        """UIDs in ``known`` (default 1:highest) that the selected mailbox does not hold, as
        a compressed set: the gaps between present UIDs, found by bisection, so the work is
        the ranges named plus the messages inside them, never the numbers in between."""
        spans = known.resolved(highest) if known is not None else [(1, highest)]
        present = self._uids          # ascending
        gaps: list[str] = []
        for a, b in spans:
            a, b = max(a, 1), min(b, highest)
            if a > b:
                continue
            i = bisect.bisect_left(present, a)
            cursor = a
            while i < len(present) and present[i] <= b:
                if present[i] > cursor:
                    gaps.append(_span(cursor, present[i] - 1))
                cursor = present[i] + 1
                i += 1
            if cursor <= b:
                gaps.append(_span(cursor, b))
        return ",".join(gaps)

    _do_examine = _do_select

    def _unselect(self) -> None:
        self.state = AUTHENTICATED
        self.mailbox = None
        self._uids, self._flags, self._saved, self._recent = [], {}, frozenset(), set()
        self._synced = None

    def _do_create(self, cmd: C.MailboxCommand, store: Store) -> None:
        name = self._decode_name(cmd.mailbox)
        if name.upper() == "INBOX":
            raise _No("[ALREADYEXISTS] INBOX always exists")
        uses = [u for u in cmd.special_use]
        allowed = {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
        if any(u not in allowed for u in uses) or len(uses) > 1:
            raise _No("[USEATTR] Unsupported special-use attribute")
        existing = {b.name for b in store.mailboxes()}
        if name in existing:
            raise _No("[ALREADYEXISTS] Mailbox exists")
        self._require_parent(store, name)
        # Superior hierarchy levels are created too (RFC 9051 §6.3.4).
        parts = name.split(DELIMITER)
        parents = [p for p in (DELIMITER.join(parts[:i]) for i in range(1, len(parts)))
                   if p not in existing and p.upper() != "INBOX" and not shared.is_namespace_node(p)]
        self._check_new_names(store, [name], len(parents) + 1)
        for parent in parents:
            store.create_mailbox(parent)
        store.create_mailbox(name, uses[0] if uses else None)
        store.commit()
        self._sync(store, expunge=True)

    def _do_delete(self, cmd: C.MailboxCommand, store: Store) -> None:
        name = self._decode_name(cmd.mailbox)
        if name.upper() == "INBOX":
            raise _No("[CANNOT] INBOX cannot be deleted")
        self._find(store, name)
        self._require(store, name, rights.NEEDS["DELETE"])
        # With inferiors, the name lives on as their implied \Noselect parent (RFC 9051 §6.3.5).
        if self.state == SELECTED and self.mailbox == name:
            self._unselect()
        store.delete_mailbox(name)
        store.commit()
        self._sync(store, expunge=True)

    def _do_rename(self, cmd: C.Rename, store: Store) -> None:
        old, new = self._decode_name(cmd.old), self._decode_name(cmd.new)
        if new.upper() == "INBOX":
            raise _No("[ALREADYEXISTS] INBOX always exists")     # RFC 9051 §6.3.6, RFC 5530 §3
        self._find(store, old)
        self._require(store, old, rights.NEEDS["RENAME"])
        existing = {b.name for b in store.mailboxes()}
        if new in existing:
            raise _No("[ALREADYEXISTS] Target mailbox exists")
        self._require_parent(store, new)
        if old == "INBOX":
            # RFC 9051 §6.3.6: INBOX's messages move to the new mailbox; INBOX stays, empty
            # (its inferiors do not move).
            self._check_new_names(store, [new], 1)
            store.create_mailbox(new)
            store.move("INBOX", [m.uid for m in store.messages("INBOX")], new)
            store.commit()
            self._sync(store, expunge=True)
            return
        if new in existing:
            raise _No("[ALREADYEXISTS] Target mailbox exists")
        if new.startswith(old + DELIMITER):
            raise _No("[CANNOT] Cannot rename a mailbox into itself")
        parts = new.split(DELIMITER)
        parents = [p for p in (DELIMITER.join(parts[:i]) for i in range(1, len(parts)))
                   if p not in existing and p.upper() != "INBOX" and not shared.is_namespace_node(p)]
        moving = sorted(n for n in existing if n == old or n.startswith(old + DELIMITER))
        self._check_new_names(store, [new + n[len(old):] for n in moving], len(parents))
        for parent in parents:
            store.create_mailbox(parent)
            existing.add(parent)
        # Inferior names move with their superior (RFC 9051 §6.3.6).
        for name in moving:
            store.rename_mailbox(name, new + name[len(old):])
        subs = store.subscriptions()
        for name in sorted(n for n in subs if n == old or n.startswith(old + DELIMITER)):
            store.subscribe(name, False)
            store.subscribe(new + name[len(old):], True)
        store.commit()
        if self.state == SELECTED and self.mailbox and (self.mailbox == old
                                                        or self.mailbox.startswith(old + DELIMITER)):
            self.mailbox = new + self.mailbox[len(old):]
        self._sync(store, expunge=True)

    def _do_subscribe(self, cmd: C.MailboxCommand, store: Store) -> None:
        name = self._decode_name(cmd.mailbox)
        store.subscribe(name, cmd.name == "SUBSCRIBE")
        store.commit()
        self._sync(store, expunge=True)

    _do_unsubscribe = _do_subscribe

    def _do_list(self, cmd: C.ListCommand, store: Store) -> None:
        """LIST, LSUB, and LIST-EXTENDED (RFC 5258) with LIST-STATUS (RFC 5819) and the
        SPECIAL-USE options (RFC 6154)."""
        boxes = {b.name: b for b in store.mailboxes() if "l" in self._rights(store, b.name)}
        subs = store.subscriptions()
        reference = self._pattern_text(cmd.reference)
        patterns = [self._pattern_text(p) for p in cmd.patterns]
        selection, returns = set(cmd.selection), set(cmd.returns)
        unknown = selection - {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
        if unknown:
            raise _Bad(f"Unknown selection option {sorted(unknown)[0]}")
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise _Bad("RECURSIVEMATCH needs another selection option")
        unknown = returns - {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}
        if unknown:
            raise _Bad(f"Unknown return option {sorted(unknown)[0]}")
        if cmd.status_items and not set(cmd.status_items) <= _STATUS_OFFERED:
            raise _Bad("Unknown STATUS item")
        if cmd.name == "LIST" and patterns == [""] and not cmd.extended:
            self._send(f'* LIST (\\Noselect) "{DELIMITER}" ""')
            self._sync(store, expunge=True)
            return
        matchers = [_pattern(reference + p if not p.startswith(DELIMITER) or not reference else p)
                    for p in patterns if p != ""]
        lsub = cmd.name == "LSUB"
        by_subscription = lsub or "SUBSCRIBED" in selection
        special_only = "SPECIAL-USE" in selection
        if by_subscription:
            chosen = set(subs)
        elif special_only:
            chosen = {n for n, b in boxes.items() if b.special_use}
        else:
            chosen = set(boxes)
        if special_only and by_subscription:
            chosen = {n for n in chosen if n in boxes and boxes[n].special_use}
        # Parents implied by the hierarchy: \Noselect in LSUB/LIST (RFC 3501), \NonExistent
        # with LIST-EXTENDED; with RECURSIVEMATCH they carry CHILDINFO.
        # Every question about descendants is answered from sets and a sorted list, never
        # by a walk over all names per name: with thousands of mailboxes that walk made one
        # LIST take seconds of the store's event loop (other sessions waited as long).
        parents_of_chosen, parents_of_boxes = _ancestors(chosen), _ancestors(boxes)
        implied = parents_of_chosen | parents_of_boxes
        # LSUB: the subscribed names the patterns match, and so the parents of such a name (an
        # unsubscribed parent is listed only when the pattern hid all its subscribed children).
        # One pass over the subscriptions: testing every descendant of every parent was cubic
        # in a chain of nested names (1,000 of them: one LSUB, 19 s of the store's event loop).
        parents_of_matched = _ancestors(c for c in chosen if any(m(c) for m in matchers)) if lsub else set()
        recursive = "RECURSIVEMATCH" in selection
        candidates = chosen | (implied if not cmd.extended or recursive or not selection else set())
        if cmd.extended and not selection:
            candidates = set(boxes) | implied
        for name in sorted(candidates, key=lambda n: (n != "INBOX", n)):
            if not any(m(name) for m in matchers):
                continue
            box = boxes.get(name)
            selected_by_itself = name in chosen
            has_chosen_child = name in parents_of_chosen
            if not selected_by_itself and not (recursive and has_chosen_child) and cmd.extended and selection:
                continue
            if not selected_by_itself and not cmd.extended and not lsub and name in boxes:
                continue
            if lsub and not selected_by_itself and (not has_chosen_child or name in parents_of_matched):
                continue    # LSUB lists an unsubscribed parent only when "%" hid its subscribed child
            attrs: list[str] = []
            if lsub:
                if not selected_by_itself:
                    attrs.append("\\Noselect")
            elif box is None:
                attrs.append("\\NonExistent" if cmd.extended else "\\Noselect")
            if not lsub:
                has_children = name in parents_of_boxes
                attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
                if box is not None and box.special_use and (not cmd.extended or special_only
                                                            or "SPECIAL-USE" in returns or not returns):
                    attrs.append(box.special_use)
                if cmd.extended and (by_subscription or "SUBSCRIBED" in returns) and name in subs:
                    attrs.append("\\Subscribed")
            line = f"* {cmd.name} ({' '.join(attrs)}) \"{DELIMITER}\" ".encode() + self._wire_name(name)
            if recursive and has_chosen_child and not selected_by_itself and "SUBSCRIBED" in selection:
                line += b' ("CHILDINFO" ("SUBSCRIBED"))'
            self._send(line)
            if "STATUS" in returns and box is not None and "r" in self._rights(store, name):
                self._status_line(store, box, cmd.status_items)
        self._sync(store, expunge=True)

    _do_lsub = _do_list

    def _do_status(self, cmd: C.Status, store: Store) -> None:
        if not set(cmd.items) <= _STATUS_OFFERED:
            raise _Bad(f"STATUS item {sorted(set(cmd.items) - _STATUS_OFFERED)[0]} is not offered")
        name = self._decode_name(cmd.mailbox)
        box = self._find(store, name)
        self._require(store, box.name, rights.NEEDS["STATUS"])
        if "HIGHESTMODSEQ" in cmd.items:
            self._condstore_on(store)
        self._status_line(store, box, cmd.items)
        self._sync(store, expunge=True)

    def _status_line(self, store: Store, box: BoxInfo, items) -> None:
        messages = store.messages(box.name)
        values = {
            "MESSAGES": len(messages), "UIDNEXT": box.uidnext, "UIDVALIDITY": box.uidvalidity,
            "UNSEEN": sum(1 for m in messages if "\\Seen" not in m.flags),
            "DELETED": sum(1 for m in messages if "\\Deleted" in m.flags),
            "SIZE": sum(m.size for m in messages), "HIGHESTMODSEQ": max(box.highest_modseq, 1),
            "DELETED-STORAGE": _kib(sum(m.size for m in messages if "\\Deleted" in m.flags)),
        }
        if "RECENT" in items:
            values["RECENT"] = len(store.recent(box.name, [m.uid for m in messages], claim=False))
        text = " ".join(f"{k} {values[k]}" for k in items)
        self._send(b"* STATUS " + self._wire_name(box.name) + f" ({text})".encode())

    def _do_append(self, cmd: C.Append, store: Store) -> str:
        name = self._decode_name(cmd.mailbox)
        try:
            box = self._find(store, name)
        except _No:
            raise _No("[TRYCREATE] No such mailbox") from None
        held = self._require(store, box.name, rights.NEEDS["APPEND"])
        try:
            # NULs are kept base64-encoded, so BODY[] never has to carry one (RFC 3516 §4.4, §6).
            contents = [binary_append.servable(m.data if m.binary else _crlf(m.data), m.binary) for m in cmd.messages]
        except binary_append.NotServable:
            raise _No("[UNKNOWN-CTE] NUL octets outside a part that can be re-encoded") from None
        self._check_quota(store, sum(len(c) for c in contents))
        # Every message is checked before the first is appended: a MULTIAPPEND is all or
        # nothing (RFC 3502 §6.3.11), and an append once staged is in the mailbox at the next commit.
        checked = []
        for message, content in zip(cmd.messages, contents):
            if not message.data:
                raise _No("Empty message")
            flags = [f for f in message.flags if f != "\\Recent"]
            if "\\*" in flags:
                raise _Bad("\\* is not a flag")
            _no_flag_extensions(flags)
            flags = rights.settable_flags(held, flags)     # the others are dropped silently (§4)
            checked.append((content, flags, message.date))
        self._check_keywords({f for _, flags, _ in checked for f in flags},
                             lambda: {f for m in store.messages(box.name) for f in m.flags})
        uids = []
        for content, flags, date in checked:
            # The date-time is kept with its own zone (RFC 9051 §6.3.12: the internal date is
            # set to it): INTERNALDATE gives it back as written, and BEFORE/ON/SINCE, which
            # disregard time and zone, see the day the client sees.
            stored = store.append(box.name, content, flags, date)
            uids.append(stored.uid)
        store.commit()
        self._sync(store, expunge=True)
        return f"[APPENDUID {box.uidvalidity} {_compress(uids)}] APPEND completed"

    # --- QUOTA (RFC 9208): one root, "", for the whole account; STORAGE in KiB ------------------

    def _check_quota(self, store: Store, adding: int) -> None:
        limit = store.quota_bytes
        if limit is not None and store.bytes_used + adding > limit:
            raise _No("[OVERQUOTA] The mailbox quota would be exceeded")

    def _quota_line(self, store: Store) -> None:
        if store.quota_bytes is not None:
            self._send(f'* QUOTA "" (STORAGE {_kib(store.bytes_used)} {store.quota_bytes // 1024})')

    def _do_getquotaroot(self, cmd: C.MailboxCommand, store: Store) -> None:
        box = self._find(store, self._decode_name(cmd.mailbox))
        roots = ' ""' if store.quota_bytes is not None else ""
        self._send(b"* QUOTAROOT " + self._wire_name(box.name) + roots.encode())
        self._quota_line(store)
        self._sync(store, expunge=True)

    def _do_getquota(self, cmd: C.Quota, store: Store) -> None:
        if cmd.root != QUOTA_ROOT.encode() or store.quota_bytes is None:
            raise _No("[NONEXISTENT] No such quota root")
        self._quota_line(store)
        self._sync(store, expunge=True)

    def _do_setquota(self, cmd: C.Quota, store: Store) -> None:
        raise _No("[NOPERM] Quotas are set by the administrator")

    # --- ACL (RFC 4314) on the account's own mailboxes: the owner holds every right ----------

    def _acl_target(self, store: Store, cmd) -> tuple[BoxInfo, str | None]:
        box = self._find(store, self._decode_name(cmd.mailbox))
        if cmd.name == "MYRIGHTS":       # any right at all lets a user ask what they hold (§4)
            if not self._rights(store, box.name):
                raise _No("[NONEXISTENT] No such mailbox")
        else:
            self._require(store, box.name, rights.NEEDS[cmd.name])
        if not isinstance(cmd, C.Acl):
            return box, None
        try:
            ident = rights.check_identifier(_text(cmd.identifier), self._owner(store, box.name))
        except rights.RightsError as exc:
            raise _No(f"[CANNOT] {exc}") from None
        return box, ident

    def _owner_identifier(self, store: Store, box: BoxInfo, ident: str) -> bool:
        return ident.lower() == self._owner(store, box.name)

    def _do_setacl(self, cmd: C.Acl, store: Store) -> None:
        box, ident = self._acl_target(store, cmd)
        try:
            new = rights.apply(store.acl(box.name).get(ident, ""), _text(cmd.rights or b""))
        except rights.RightsError as exc:
            raise _Bad(str(exc)) from None   # RFC 4314 3.1: an unknown right is BAD
        if self._owner_identifier(store, box, ident):
            raise _No("[CANNOT] The owner always holds every right")
        acl = store.acl(box.name)
        if new and ident not in acl and len(acl) >= rights.MAX_ENTRIES:
            raise _No(f"[LIMIT] At most {rights.MAX_ENTRIES} entries per mailbox")
        store.set_acl(box.name, ident, new)
        store.commit()
        self._sync(store, expunge=True)

    def _do_deleteacl(self, cmd: C.Acl, store: Store) -> None:
        box, ident = self._acl_target(store, cmd)
        if self._owner_identifier(store, box, ident):
            raise _No("[CANNOT] The owner always holds every right")
        store.set_acl(box.name, ident, "")
        store.commit()
        self._sync(store, expunge=True)

    def _do_getacl(self, cmd: C.MailboxCommand, store: Store) -> None:
        box, _ = self._acl_target(store, cmd)
        line = b"* ACL " + self._wire_name(box.name)
        entries = {self._owner(store, box.name): rights.ALL, **store.acl(box.name)}
        for ident, granted in entries.items():
            line += b" " + E.astring(ident) + b" " + E.astring(rights.show(granted))
        self._send(line)
        self._sync(store, expunge=True)

    def _do_listrights(self, cmd: C.Acl, store: Store) -> None:
        box, ident = self._acl_target(store, cmd)
        head = b"* LISTRIGHTS " + self._wire_name(box.name) + b" " + E.astring(ident)
        if self._owner_identifier(store, box, ident):
            self._send(head + b" " + E.astring(rights.show(rights.ALL)))
        else:   # every right is granted on its own (RIGHTS=texk); c and d name the groups
            self._send(head + b' "" ' + " ".join(rights.ALL + "cd").encode())
        self._sync(store, expunge=True)

    def _do_myrights(self, cmd: C.MailboxCommand, store: Store) -> None:
        box, _ = self._acl_target(store, cmd)
        held = self._rights(store, box.name)
        self._send(b"* MYRIGHTS " + self._wire_name(box.name) + b" " + E.astring(rights.show(held)))
        self._sync(store, expunge=True)

    # --- selected state -------------------------------------------------------------------------

    def _do_close(self, cmd, store: Store) -> None:
        # Without the right to expunge, CLOSE just closes (RFC 4314 §4).
        if not self.read_only and "e" in self._rights(store, self.mailbox):
            store.expunge(self.mailbox)
            store.commit()
        self._unselect()

    def _do_unselect(self, cmd, store: Store) -> None:
        self._unselect()

    def _do_expunge(self, cmd, store: Store) -> None:
        if self.read_only:
            raise _No("[READ-ONLY] Mailbox is read-only")
        self._require(store, self.mailbox, rights.NEEDS["EXPUNGE"])
        store.expunge(self.mailbox)
        store.commit()
        self._sync(store, expunge=True)

    def _do_uid_expunge(self, cmd: C.UidExpunge, store: Store) -> None:
        if self.read_only:
            raise _No("[READ-ONLY] Mailbox is read-only")
        self._require(store, self.mailbox, rights.NEEDS["UID EXPUNGE"])
        wanted = self._select_uids(cmd.sequence, uid=True)
        deleted = {m.uid for m in store.messages(self.mailbox) if "\\Deleted" in m.flags}
        store.expunge(self.mailbox, [u for u in wanted if u in deleted])
        store.commit()
        self._sync(store, expunge=True)

    def _select_uids(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """The UIDs a sequence set names, in mailbox order, without expanding the set."""
        if sequence.saved:
            return [u for u in self._uids if u in self._saved]
        if uid:
            highest = self._uids[-1] if self._uids else 0
            spans = sequence.resolved(highest)
            starts = [a for a, _ in spans]
            out = []
            for u in self._uids:
                i = bisect.bisect_right(starts, u) - 1
                if i >= 0 and spans[i][0] <= u <= spans[i][1]:
                    out.append(u)
            # "*" names the highest UID even when the range starts above it (RFC 9051 §6.4.8)
            if not out and self._uids and any(None in r for r in sequence.ranges):
                out = [self._uids[-1]]
            return out
        n = len(self._uids)
        if n == 0:
            raise _Bad("No messages in the mailbox")
        spans = sequence.resolved(n)
        if spans[-1][1] > n:
            raise _Bad("Invalid message sequence number")
        return [self._uids[i - 1] for a, b in spans for i in range(a, b + 1)]

    def _do_store(self, cmd: C.Store, store: Store) -> str | None:
        if self.read_only:
            raise _No("[READ-ONLY] Mailbox is read-only")
        if "\\*" in cmd.flags:
            raise _Bad("\\* is not a flag")
        _no_flag_extensions(cmd.flags)
        held = self._require(store, self.mailbox, "r")
        refused = rights.refused_flags(held, cmd.flags)
        if refused:    # all or nothing: half a STORE would leave the client's view wrong
            rights_needed = "".join(sorted({rights.flag_right(f) for f in refused}))
            raise _No(f"[NOPERM] Changing {refused[0]} needs the right {rights_needed} on this mailbox")
        if cmd.mode != "-":
            self._check_keywords(cmd.flags, lambda: {f for m in store.messages(self.mailbox) for f in m.flags},
                                 self._keywords)
        if cmd.unchanged_since is not None:
            self._condstore_on(store)
        uids = self._select_uids(cmd.sequence, cmd.uid)
        current = self._by_uid(store)
        uids = [u for u in uids if u in current]
        # Flags as they were (a store's messages may be live objects its commit changes).
        before = {u: current[u].flags for u in uids}
        modified = []
        if cmd.unchanged_since is not None:
            # RFC 7162 §3.1.3: messages changed since the client looked are left alone and
            # named in [MODIFIED ...].
            modified = [u for u in uids if current[u].modseq > cmd.unchanged_since]
            uids = [u for u in uids if current[u].modseq <= cmd.unchanged_since]
        store.store_flags(self.mailbox, uids, cmd.flags, {"+": "add", "-": "remove", "": "set"}[cmd.mode])
        store.commit()
        messages = store.messages(self.mailbox)
        self._announce_keywords(messages)
        after = {m.uid: m for m in messages}
        position = self._position
        for u in uids:
            msg = after[u]
            changed = msg.flags != before[u]
            # Another session changed the flags since this one last told its client: .SILENT
            # or not, the client hears the result, or it would work out flags without that
            # change and never learn it (RFC 9051 §6.4.6: external changes are reported).
            unheard = self._flags.get(u) != before[u]
            self._flags[u] = msg.flags
            # .SILENT still reports MODSEQ of changed messages under CONDSTORE (RFC 7162 §3.2)
            if not cmd.silent or unheard or (self.condstore and changed):
                items = [] if cmd.silent and not unheard else [f"FLAGS ({self._show(u, msg.flags)})"]
                # Once CONDSTORE is on, every FETCH a STORE causes names the UID, by message
                # number too (RFC 7162 §3.1): the client files the MODSEQ under it.
                if cmd.uid or self.condstore:
                    items.append(f"UID {u}")
                if self.condstore:
                    items.append(f"MODSEQ ({msg.modseq})")
                self._send(f"* {position(u)} FETCH ({' '.join(items)})")
        self._sync(store, expunge=cmd.uid)
        if modified:
            numbers = modified if cmd.uid else [position(u) for u in modified]
            return f"[MODIFIED {_compress(numbers)}] Conditional STORE failed for some messages"

    def _do_copy(self, cmd: C.CopyMove, store: Store) -> str:
        target = self._decode_name(cmd.mailbox)
        try:
            box = self._find(store, target)
        except _No:
            raise _No("[TRYCREATE] No such mailbox") from None
        self._require(store, self.mailbox, "r")
        held = self._require(store, box.name, rights.NEEDS[cmd.name])
        uids = self._select_uids(cmd.sequence, cmd.uid)
        source = {m.uid: m for m in store.messages(self.mailbox)}
        uids = [u for u in uids if u in source]
        if cmd.name == "MOVE":
            if self.read_only:
                raise _No("[READ-ONLY] Mailbox is read-only")
            self._require(store, self.mailbox, rights.MOVE_SOURCE)
            mapping = store.move(self.mailbox, uids, box.name)
        else:
            self._check_quota(store, sum(source[u].size for u in uids))
            mapping = store.copy(self.mailbox, uids, box.name)
        # The copies keep only the flags the user may set on the target (RFC 4314 §4).
        if held != rights.ALL:
            for flag in sorted({f for u in mapping for f in source[u].flags if f != "\\Recent"}):
                if not rights.settable_flags(held, [flag]):
                    store.store_flags(box.name, [mapping[u] for u in mapping if flag in source[u].flags],
                                      [flag], "remove")
        store.commit()
        code = ""
        if mapping:
            src = sorted(mapping)
            code = f"[COPYUID {box.uidvalidity} {_compress(src)} {_compress([mapping[u] for u in src])}] "
        if cmd.name == "MOVE":
            if code:
                self._send("* OK " + code + "Moved")     # RFC 6851 §4.3: COPYUID before the EXPUNGEs
                code = ""
            self._sync(store, expunge=True)
        else:
            self._sync(store, expunge=cmd.uid)
        return code + f"{cmd.name} completed"

    _do_move = _do_copy

    # --- SEARCH / SORT / THREAD ------------------------------------------------------------------

    def _views(self, store: Store) -> list[_View]:
        self._require(store, self.mailbox, "r")
        current = {m.uid: m for m in store.messages(self.mailbox)}
        return [_View(i + 1, current[u], self, store) for i, u in enumerate(self._uids) if u in current]

    def _context(self) -> search.SearchContext:
        return search.SearchContext(len(self._uids), self._uids[-1] if self._uids else 0,
                                    datetime.fromtimestamp(self.clock(), UTC), saved_uids=self._saved)

    def _do_search(self, cmd: C.Search, store: Store) -> None:
        search.check_charset(cmd.charset)
        found = search.search(self._views(store), cmd.criteria, self._context())
        numbers = [m.uid if cmd.uid else m.seq for m in found]
        uses_modseq = _has_key(cmd.criteria, "MODSEQ")
        if uses_modseq:
            self._condstore_on(store)
        modseq = f" (MODSEQ {max(m.modseq for m in found)})" if uses_modseq and found else ""
        if cmd.returns is None and not self.rev2:
            self._send("* SEARCH" + "".join(f" {n}" for n in numbers) + modseq)
        else:
            returns = set(cmd.returns or ()) or {"ALL"}   # IMAP4rev2: SEARCH answers ESEARCH
            # MIN and/or MAX alone return only those messages: SAVE keeps just them (RFC 5182
            # §2.4) and MODSEQ is the highest of theirs (RFC 4731 §3.2), not of every match.
            picked = found
            if returns & {"MIN", "MAX"} and not returns & {"ALL", "COUNT"}:
                picked = [m for m in (found[:1] if "MIN" in returns else []) + (found[-1:] if "MAX" in returns else [])]
                if uses_modseq and picked:
                    modseq = f" (MODSEQ {max(m.modseq for m in picked)})"
            if "SAVE" in returns:
                self._saved = frozenset(m.uid for m in picked)
                returns.discard("SAVE")
                if not returns:
                    returns = set()
            parts = [f'(TAG "{cmd.tag}")'] + (["UID"] if cmd.uid else [])
            if numbers and "MIN" in returns:
                parts.append(f"MIN {min(numbers)}")
            if numbers and "MAX" in returns:
                parts.append(f"MAX {max(numbers)}")
            if numbers and "ALL" in returns:
                parts.append(f"ALL {_compress(sorted(numbers))}")
            if "COUNT" in returns:
                parts.append(f"COUNT {len(numbers)}")
            if modseq and returns:
                parts.append(modseq.strip(" ()"))
            if returns or not cmd.returns or set(cmd.returns) != {"SAVE"}:
                self._send("* ESEARCH " + " ".join(parts))
        self._sync(store, expunge=cmd.uid)

    def _do_sort(self, cmd: C.Sort, store: Store) -> None:
        search.check_charset(cmd.charset)
        found = search.search(self._views(store), cmd.search, self._context())
        ordered = search.sort(found, cmd.criteria)
        numbers = [m.uid if cmd.uid else m.seq for m in ordered]
        if cmd.returns is None:
            self._send("* SORT" + "".join(f" {n}" for n in numbers))
        else:
            # ESORT (RFC 5267 §3.2): MIN and MAX are the first and last in the sort order, ALL
            # keeps that order (only ascending runs become ranges); SAVE keeps the messages.
            returns = set(cmd.returns) or {"ALL"}
            if "SAVE" in returns:
                picked = ordered
                if returns & {"MIN", "MAX"} and not returns & {"ALL", "COUNT"}:
                    picked = (ordered[:1] if "MIN" in returns else []) + (ordered[-1:] if "MAX" in returns else [])
                self._saved = frozenset(m.uid for m in picked)
            parts = [f'(TAG "{cmd.tag}")'] + (["UID"] if cmd.uid else [])
            if numbers and "MIN" in returns:
                parts.append(f"MIN {numbers[0]}")
            if numbers and "MAX" in returns:
                parts.append(f"MAX {numbers[-1]}")
            if numbers and "ALL" in returns:
                parts.append(f"ALL {_ordered_set(numbers)}")
            if "COUNT" in returns:
                parts.append(f"COUNT {len(numbers)}")
            if returns != {"SAVE"}:
                self._send("* ESEARCH " + " ".join(parts))
        self._sync(store, expunge=cmd.uid)

    def _do_thread(self, cmd: C.Thread, store: Store) -> None:
        search.check_charset(cmd.charset)
        found = search.search(self._views(store), cmd.search, self._context())
        if cmd.algorithm == "ORDEREDSUBJECT":
            threads = search.thread_orderedsubject(found)
        elif cmd.algorithm == "REFERENCES":
            threads = search.thread_references(found)
        else:
            raise _Bad("Unsupported threading algorithm")
        text = search.format_threads(threads, (lambda m: m.uid) if cmd.uid else (lambda m: m.seq))
        self._send("* THREAD" + (" " + text if text else ""))
        self._sync(store, expunge=cmd.uid)

    # --- FETCH -------------------------------------------------------------------------------------

    def _parsed(self, store: Store, uid: int) -> tuple[bytes, mime.Part]:
        # A store may keep parsed messages itself, for all its sessions (optional
        # ``Store.parsed``: None when it does not hold that message's kind of mailbox).
        shared = getattr(store, "parsed", None)
        if shared is not None:
            hit = shared(self.mailbox, uid)
            if hit is not None:
                return hit
        key = (self.mailbox, uid)
        hit = self._mime.get(key)
        if hit is not None:
            self._mime.move_to_end(key)
            return hit
        data = store.body(self.mailbox, uid)
        hit = (data, mime.analyze(data))
        self._mime[key] = hit
        while len(self._mime) > MIME_CACHE:
            self._mime.popitem(last=False)
        return hit

    def _do_fetch(self, cmd: C.Fetch, store: Store) -> str | None:
        items = list(cmd.items)
        if cmd.changed_since is not None or any(i.name == "MODSEQ" for i in items):
            self._condstore_on(store)
            if not any(i.name == "MODSEQ" for i in items):
                items.append(C.FetchItem("MODSEQ"))
        offered = {"FLAGS", "UID", "MODSEQ", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822",
                   "RFC822.HEADER", "RFC822.TEXT", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"}
        for item in items:
            if item.name not in offered:
                raise _Bad(f"FETCH {item.name} is not offered")
        if cmd.vanished and not self.qresync:
            raise _Bad("VANISHED needs ENABLE QRESYNC")
        held = self._require(store, self.mailbox, "r")
        uids = self._select_uids(cmd.sequence, cmd.uid)
        current = self._by_uid(store)
        if cmd.vanished:
            box = self._find(store, self.mailbox)
            gone = self._missing(cmd.sequence, box.uidnext - 1)
            if gone:
                self._send(f"* VANISHED (EARLIER) {gone}")
        if cmd.changed_since is not None:
            uids = [u for u in uids if u in current and current[u].modseq > cmd.changed_since]
        sets_seen = not self.read_only and "s" in held and any(
            i.name in ("RFC822", "RFC822.TEXT", "BODY", "BINARY") and (i.name != "BODY" or i.section is not None)
            for i in items)
        if sets_seen:
            unseen = [u for u in uids if u in current and "\\Seen" not in current[u].flags]
            if unseen:
                store.store_flags(self.mailbox, unseen, ["\\Seen"], "add")
                store.commit()
        if sets_seen or any(i.name == "FLAGS" for i in items):
            # A keyword another session added since this one last heard is announced (* FLAGS)
            # before the FETCH that shows it, as for any update (RFC 9051 §7.3.5): a client
            # keeps the mailbox's flags from FLAGS and takes an unknown one for an error.
            self._announce_keywords([current[u] for u in uids if u in current])
        self._fetch_missed = False
        return self._fetch_batch(cmd, items, uids, sets_seen, store)

    def _fetch_batch(self, cmd: C.Fetch, items: list[C.FetchItem], uids: list[int], sets_seen: bool,
                     store: Store) -> str | None:
        """FETCH responses until ``FETCH_BATCH_BYTES`` are queued; the rest waits for the
        client to take them (``_resume``), so a FETCH of a whole large mailbox holds one
        batch in memory, not the mailbox."""
        current = self._by_uid(store)
        position = self._position
        # What does not depend on the message, worked out once per batch rather than per message.
        flags_asked = any(i.name == "FLAGS" for i in items)
        add_modseq = self.condstore and not any(i.name == "MODSEQ" for i in items)
        # FLAGS a FETCH sends only because it set \Seen carry UID and MODSEQ under CONDSTORE,
        # like any other flag change (RFC 7162 §3.1); asked-for FLAGS need neither.
        add_uid = self.condstore and not flags_asked and not any(i.name == "UID" for i in items)
        others = [(item, self._fetch_label(item)) for item in items if item.name != "FLAGS"]
        # A message another session expunged, whose EXPUNGE this one has not sent yet, is still
        # there for its message number as far as the store kept it (RFC 2180 §4.1.2): its UID,
        # flags, date and size, not its body, which went with the expunge.
        expunged = getattr(store, "expunged_message", None)
        if cmd.uid or any(item.name not in _KEPT_WHEN_EXPUNGED for item in items):
            expunged = None
        queued = 0
        out = self._out
        for n, u in enumerate(uids):
            if queued >= FETCH_BATCH_BYTES:
                self._resume = (cmd, items, uids[n:], sets_seen)
                return _MORE
            msg = current.get(u)
            if msg is None and expunged is not None:
                msg = expunged(self.mailbox, u)
                if msg is not None and flags_asked:
                    self._announce_keywords([msg])     # (its flags are not the mailbox's)
            if msg is None:              # expunged by another session; its EXPUNGE comes later
                self._fetch_missed = True
                continue
            parts = [self._fetch_item(item, msg, store, label) for item, label in others]
            if flags_asked or (sets_seen and self._flags.get(u) != msg.flags):
                parts.insert(0, f"FLAGS ({self._show(u, msg.flags)})".encode())
                self._flags[u] = msg.flags
                if add_modseq:
                    parts.append(f"MODSEQ ({msg.modseq})".encode())
                if add_uid:
                    parts.append(f"UID {u}".encode())
            data = b"* %d FETCH (%b)\r\n" % (position(u), b" ".join(parts))
            queued += len(data)
            out.append(Send(data))
        self._sync(store, expunge=cmd.uid)
        if self._fetch_missed and not cmd.uid:
            # A message number the client still holds names a message another session
            # expunged, whose body is gone: the rest is sent, and a tagged NO says not all was
            # (RFC 2180 §4.1.3, EXPUNGEISSUED of RFC 9051 §7.1); an OK would claim it was.  A
            # UID that is gone is ignored, as a UID that never was (RFC 9051 §6.4.9).  The text
            # says "have been expunged": Dovecot's imaptest, which predates the response code,
            # recognises such a NO by that phrase and counts any other as a failed FETCH.
            raise _No("[EXPUNGEISSUED] Some of the requested messages have been expunged by another session")
        return None

    @staticmethod
    def _fetch_label(item: C.FetchItem) -> str | None:
        """The response label of a BODY[...] / BINARY[...] item without its partial origin
        (``BODY[1.HEADER.FIELDS (FROM)]``); None for the other items."""
        if item.section is None or item.name not in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"):
            return None
        numbers, text, fields = item.section
        section = ".".join(str(n) for n in numbers)
        if text:
            section = f"{section}.{text}" if section else text
            if fields:
                section += " (" + " ".join(f.upper() for f in fields) + ")"
        if item.name == "BINARY.SIZE":
            return section
        return f"{_LABELS.get(item.name, item.name)}[{section}]"

    def _fetch_item(self, item: C.FetchItem, msg: StoredMessage, store: Store, label: str | None = None) -> bytes:
        name = item.name
        if name == "UID":
            return f"UID {msg.uid}".encode()
        if name == "INTERNALDATE":
            return f'INTERNALDATE "{_imap_date(msg.date)}"'.encode()
        if name == "RFC822.SIZE":
            return f"RFC822.SIZE {msg.size}".encode()
        if name == "MODSEQ":
            return f"MODSEQ ({msg.modseq})".encode()
        data, root = self._parsed(store, msg.uid)
        if name == "ENVELOPE":
            return _memo(root, (name, self.utf8), lambda: b"ENVELOPE " + E.envelope(root, self.utf8))
        if name == "BODYSTRUCTURE" or (name == "BODY" and item.section is None):
            return _memo(root, (name, self.utf8, self.rev2), lambda: name.encode() + b" " + E.bodystructure(
                root, data, extensible=name == "BODYSTRUCTURE", utf8=self.utf8, rev2=self.rev2))
        if name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
            text = {"RFC822": None, "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[name]
            return name.encode() + b" " + _literal(mime.section_bytes(data, root, [], text))
        if label is None:
            label = self._fetch_label(item)
        # BODY[...] and BINARY[...] of one message never change: the same item (partial
        # included) is the same octets.  BINARY.SIZE and BODY.PEEK share a label with
        # others, hence the name in the key.
        return _memo(root, (name, label, item.partial), lambda: self._section_item(item, data, root, label))

    def _section_item(self, item: C.FetchItem, data: bytes, root: mime.Part, label: str) -> bytes:
        name = item.name
        numbers, text, fields = item.section
        try:
            if name.startswith("BINARY"):
                part = mime.find_part(root, list(numbers))
                octets = data[part.body_start:part.body_end] if numbers else data
                # A multipart or message/rfc822 part can only be 7bit, 8bit or binary (RFC 2045
                # §6.4, RFC 2046 §5.2.1): it is served as it is, like BINARY[] is the message.
                if numbers and not part.multipart and part.message is None:
                    octets = _decode_cte(octets, part.encoding)
            else:
                octets = mime.section_bytes(data, root, list(numbers), text, list(fields))
        except mime.SectionError:
            octets = b""     # a part that does not exist reads as empty (RFC 9051 §6.4.5)
        if name == "BINARY.SIZE":
            return f"BINARY.SIZE[{label}] {len(octets)}".encode()
        if item.partial is not None:
            offset, length = item.partial
            octets = octets[offset:offset + length]
            label += f"<{offset}>"
        if name.startswith("BINARY") and b"\x00" in octets:
            return label.encode() + b" ~" + _literal(octets)     # literal8 (RFC 3516 §4.2)
        return label.encode() + b" " + _literal(octets)

    def _by_uid(self, store: Store):
        """The selected mailbox's messages by UID: the store's own mapping when it has one
        (no dict of the whole mailbox per command), else one made from ``messages``."""
        live = getattr(store, "message_map", None)
        found = live(self.mailbox) if live is not None else None
        return found if found is not None else {m.uid: m for m in store.messages(self.mailbox)}

    def _position(self, uid: int) -> int:
        """The sequence number of a UID of the session's view (UIDs ascend with it)."""
        return bisect.bisect_left(self._uids, uid) + 1

    # --- untagged updates ---------------------------------------------------------------------------

    def _sync(self, store: Store, expunge: bool) -> None:
        """Tell the client what changed in the selected mailbox since it last heard (see the
        theory of operation for when EXPUNGE may be sent)."""
        if self.state != SELECTED or self.mailbox is None:
            return
        try:
            version = _version(store, self.mailbox)
            if version is not None and version == self._synced:
                return           # the view is the mailbox: nothing to tell
            messages = store.messages(self.mailbox)
        except ValueError:
            # Deleted, or (a colleague's folder) no longer shared with this user: to the user
            # both are the same, and RFC 3501 lets the server end the session then.
            self._send("* BYE The selected mailbox was deleted or is no longer shared with you")
            self.state = LOGOUT
            self._out.append(Close())
            return
        current = {m.uid: m for m in messages}
        self._announce_keywords(messages)
        whole = True         # the view holds no message that is gone
        if expunge:
            vanished = []
            for i in range(len(self._uids) - 1, -1, -1):
                u = self._uids[i]
                if u not in current:
                    if self.qresync:
                        vanished.append(u)
                    else:
                        self._send(f"* {i + 1} EXPUNGE")
                    del self._uids[i]
                    self._flags.pop(u, None)
                    self._recent.discard(u)
            if vanished:
                self._send(f"* VANISHED {_compress(sorted(vanished))}")
        for i, u in enumerate(self._uids):
            m = current.get(u)
            if m is None:
                whole = False    # its EXPUNGE is held back
            elif self._flags.get(u) != m.flags:
                self._flags[u] = m.flags
                extra = f" UID {u} MODSEQ ({m.modseq})" if self.condstore else ""
                self._send(f"* {i + 1} FETCH (FLAGS ({self._show(u, m.flags)}){extra})")
        highest = self._uids[-1] if self._uids else 0
        new = [m for m in messages if m.uid > highest]
        if new:
            for m in new:
                self._uids.append(m.uid)
                self._flags[m.uid] = m.flags
            self._send(f"* {len(self._uids)} EXISTS")
            recent = store.recent(self.mailbox, [m.uid for m in new], claim=not self.read_only)
            if recent:
                self._recent |= recent
                if not self.rev2:
                    self._send(f"* {len(self._recent)} RECENT")
        self._synced = version if whole else None

    @staticmethod
    def _check_keywords(flags, held: Callable[[], set[str]], announced: set[str] | None = None) -> None:
        """``NO [LIMIT]`` (RFC 5530) if ``flags`` would take the mailbox past MAX_KEYWORDS
        distinct keywords.  ``held()`` reads the mailbox's (every message's flags), so it is
        asked only when a new keyword comes and the keywords this session announced -- a
        superset, removed ones stay announced -- leave no room."""
        keywords = {f for f in flags if not f.startswith("\\")}
        if not keywords or announced is not None and (keywords <= announced or
                                                      len(announced | keywords) <= MAX_KEYWORDS):
            return
        have = {f for f in held() if not f.startswith("\\")}
        if len(have | keywords) > MAX_KEYWORDS and not keywords <= have:
            raise _No(f"[LIMIT] A mailbox holds at most {MAX_KEYWORDS} keywords")

    def _announce_keywords(self, messages) -> None:
        """A new keyword is a new defined flag: say so before the FETCH that carries it."""
        # One union of the messages' flag sets (in C), then the few distinct flags filtered.
        keywords = {f for f in set().union(*[m.flags for m in messages]) if not f.startswith("\\")}
        if not keywords <= self._keywords:
            self._keywords |= keywords
            flags = " ".join((*SYSTEM_FLAGS, *sorted(self._keywords)))
            self._send(f"* FLAGS ({flags})")
            if not self.read_only:
                self._send(f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted")

    def _show(self, uid: int, flags: frozenset[str]) -> str:
        """A message's flags as this session sees them (with its own \\Recent)."""
        return " ".join(sorted(flags | {"\\Recent"} if uid in self._recent and not self.rev2 else flags))


# --- the message view SEARCH reads ----------------------------------------------------------------

class _View:
    __slots__ = ("seq", "uid", "size", "flags", "internal_date", "modseq", "_session", "_store")

    def __init__(self, seq: int, msg: StoredMessage, session: Session, store: Store) -> None:
        self.seq, self.uid, self.size = seq, msg.uid, msg.size
        self.flags = msg.flags | {"\\Recent"} if msg.uid in session._recent else msg.flags
        self.internal_date, self.modseq = msg.date, msg.modseq
        self._session, self._store = session, store

    def _root(self) -> tuple[bytes, mime.Part]:
        return self._session._parsed(self._store, self.uid)

    def header(self, name: str) -> str | None:
        return self._root()[1].header(name)

    def headers_text(self) -> str:
        """The header text TEXT searches: the message's header and those inside its body --
        each part's MIME header and an encapsulated message's header (a forwarded message's
        From and Subject), which are "in the header or body of the message" (RFC 9051
        §6.4.4) though BODY, which searches the parts' decoded contents, does not see them.
        Within the bound the MIME analysis parses (``mime.MAX_HEADER_PART``, the message's
        own header first): decoding encoded-words costs ~40x the octets, and a message may
        be all header fields."""
        data, root = self._root()
        out, budget = [], mime.MAX_HEADER_PART
        for part in root.walk():
            if budget <= 0:
                break
            end = min(part.header_end, part.header_start + budget)
            if end > part.header_start:
                budget -= end - part.header_start
                out.append(search.decode_header_value(data[part.header_start:end].decode("utf-8", "replace")))
        return "\n".join(out)

    def body_text(self) -> str:
        data, root = self._root()
        out = []
        for part in root.walk():
            if part.multipart or part.message is not None:
                continue
            raw = data[part.body_start:part.body_end]
            try:
                raw = _decode_cte(raw, part.encoding)
            except _No:
                pass                # an encoding we cannot undo is searched as it is
            charset = dict(part.params).get("charset", "utf-8")
            if charset.lower() in _ASCII_NAMES:
                # US-ASCII is a subset of UTF-8, so ASCII text reads the same; 8-bit octets
                # in such a part -- a script's unlabelled body (RFC 2045's default charset)
                # through msmtp or mailx -- are UTF-8 nearly always (Dovecot reads them so),
                # and read as ASCII no search of their words could ever match.
                charset = "utf-8"
            try:
                out.append(raw.decode(charset, "replace"))
            except LookupError:
                out.append(raw.decode("utf-8", "replace"))
        return "\n".join(out)


# --- helpers -------------------------------------------------------------------------------------

_ASCII_NAMES = frozenset({"us-ascii", "ascii", "us", "ansi_x3.4-1968", "iso646-us"})


def _crlf(data: bytes) -> bytes:
    """An APPENDed message with its bare LFs made CRLF (a Unix file uploaded as it is: curl
    -T, scripts).  Kept as it came, BODY[] would serve lines RFC 5322 does not have, and
    the sizes RFC822.SIZE and POP3's LIST give (octets "in RFC 5322 format", RFC 9051 §7.5.2;
    line ends counted as CRLF, RFC 1939 §11) would be those of the stored octets while
    POP3's RETR sends CRLF: fewer than a client then receives.  Dovecot serves them as
    CRLF too.  A literal8 is binary, and left alone."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data                         # the same object: nothing copied
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _memo(root: mime.Part, key: tuple, render: Callable[[], bytes]) -> bytes:
    """A FETCH item of one message, rendered once and kept on its parsed tree (shared by
    every session that holds the tree), within ``RENDER_MEMO`` / ``RENDER_MEMO_LARGEST``.
    Sessions in worker threads may render the same item at once: both keep equal octets."""
    memo = root.rendered
    if memo is None:
        memo = root.rendered = {}
    hit = memo.get(key)
    if hit is None:
        hit = render()
        if len(hit) <= RENDER_MEMO_LARGEST and len(memo) < RENDER_MEMO:
            memo[key] = hit
    return hit


def _version(store: Store, name: str) -> object | None:
    version = getattr(store, "version", None)
    return None if version is None else version(name)


# Command classes whose instances carry no name of their own (no class derives from another,
# so the exact type decides: one lookup instead of a chain of isinstance per call).
_NAMES: dict[type, str] = {C.UidExpunge: "UID EXPUNGE", C.Login: "LOGIN", C.Authenticate: "AUTHENTICATE",
                           C.Enable: "ENABLE", C.Compress: "COMPRESS", C.Id: "ID", C.Rename: "RENAME",
                           C.Status: "STATUS", C.Append: "APPEND", C.Search: "SEARCH", C.Sort: "SORT",
                           C.Thread: "THREAD", C.Fetch: "FETCH", C.Store: "STORE"}


def _name(cmd: C.ImapCommand) -> str:
    # Simple, Select, MailboxCommand, ListCommand, Quota, Acl, CopyMove carry their name.
    return _NAMES.get(type(cmd)) or cmd.name


def _has_key(key: tuple, name: str) -> bool:
    if key[0] == name:
        return True
    if key[0] == "AND":
        return any(_has_key(k, name) for k in key[1])
    if key[0] == "NOT":
        return _has_key(key[1], name)
    if key[0] == "OR":
        return _has_key(key[1], name) or _has_key(key[2], name)
    return False


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _text_mutf7(value: bytes) -> str:
    try:
        return decode_mutf7(value)
    except Exception:
        return value.decode("utf-8", "replace")


def _ancestors(names) -> set[str]:
    """Every superior hierarchy level of ``names`` (``a`` and ``a/b`` for ``a/b/c``).
    From the deepest level up, stopping at one already found (its own are found too): each
    level is copied once, not once per name under it -- a chain of 2,000 nested names cost
    1 s of copying this way round, a chain of 4,000 eight times that."""
    out: set[str] = set()
    for n in names:
        i = n.rfind(DELIMITER)
        while i > 0:
            parent = n[:i]
            if parent in out:
                break
            out.add(parent)
            i = n.rfind(DELIMITER, 0, i)
    return out


def _pattern(pattern: str) -> Callable[[str], bool]:
    """LIST wildcards: ``*`` matches anything, ``%`` anything but the delimiter; INBOX is
    case-insensitive.  A bit-parallel automaton (bit p: the pattern's first p characters
    match what was read so far), one step per character of the name whatever the pattern:
    a search over positions cost a hostile pattern (``*%*%...``, thousands long) against a
    long name minutes of the store's event loop."""
    if pattern.upper().startswith("INBOX"):
        pattern = "INBOX" + pattern[5:]
    compact: list[str] = []          # a run of wildcards is one: "*" if it holds one, else "%"
    for ch in pattern:
        if ch in "*%" and compact and compact[-1] in "*%":
            if ch == "*":
                compact[-1] = "*"
            continue
        compact.append(ch)
    literal: dict[str, int] = {}     # char -> bits p with compact[p] == char
    star = percent = wild = 0        # star/percent: bit p+1 for a wildcard at p; wild: bit p
    for p, ch in enumerate(compact):
        if ch == "*":
            star |= 1 << (p + 1)
            wild |= 1 << p
        elif ch == "%":
            percent |= 1 << (p + 1)
            wild |= 1 << p
        else:
            literal[ch] = literal.get(ch, 0) | 1 << p
    final = 1 << len(compact)
    start = 1 | ((1 & wild) << 1)    # a leading wildcard may match nothing

    def match(name: str) -> bool:
        active = start
        for ch in name:
            nxt = ((active & literal.get(ch, 0)) << 1) | (active & star)
            if ch != DELIMITER:
                nxt |= active & percent
            nxt |= (nxt & wild) << 1     # no two wildcards are adjacent: one step closes it
            if not nxt:
                return False
            active = nxt
        return bool(active & final)

    return match


def _compress(numbers: list[int]) -> str:
    """``1,2,3,5`` -> ``1:3,5`` (order kept)."""
    out: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def _ordered_set(numbers: list[int]) -> str:
    """A sequence-set that lists ``numbers`` in their order: runs of consecutive ascending
    numbers become ``a:b``, nothing else is merged (``5,3:4,2,1``)."""
    out: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        out.append(_span(start, prev))
        start = prev = n
    out.append(_span(start, prev))
    return ",".join(out)


def _span(a: int, b: int) -> str:
    return str(a) if a == b else f"{a}:{b}"


def _kib(octets: int) -> int:
    return (octets + 1023) // 1024


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _imap_date(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.strftime("%d-%b-%Y %H:%M:%S %z")


def _no_flag_extensions(flags) -> None:
    """A ``\\`` flag other than the system flags is one no standard defines: a server MUST NOT
    generate such flag-extension flags (RFC 9051 §9, as RFC 3501), and one stored would come
    back in every FETCH FLAGS, so the command is BAD, as for ``\\*``."""
    for flag in flags:
        if flag.startswith("\\") and flag not in SYSTEM_FLAGS and flag not in ("\\*", "\\Recent"):
            raise _Bad(f"{flag} is not a system flag")


def _decode_cte(data: bytes, kind: str) -> bytes:
    """``data`` with the transfer encoding ``kind`` (``Part.encoding``) undone."""
    if kind not in ("", "7bit", "8bit", "binary", "base64", "quoted-printable"):
        # RFC 3516 §4.3: an encoding the server cannot undo fails the FETCH, with UNKNOWN-CTE
        # (serving the encoded octets would pass them off as decoded).
        raise _No("[UNKNOWN-CTE] cannot undo this part's Content-Transfer-Encoding")
    if kind == "base64":
        return mime.decode_base64(data)
    if kind == "quoted-printable":
        return mime.decode_quoted_printable(data)
    return data


__all__ = ["Session", "RecentMarks", "Send", "Authenticate", "NeedStore", "Close", "StartCompression", "Store",
           "CAPABILITIES", "NOT_AUTHENTICATED", "AUTHENTICATED", "SELECTED", "LOGOUT"]
