"""Concurrent IMAP sessions on one mailbox, each keeping its own model of what the server told
it, checked for contradictions the way Dovecot's ``imaptest`` checks a server (its default
"stress" mode): a hypothesis state machine drives two or three raw sessions -- plain,
CONDSTORE, QRESYNC or EXAMINE-only -- and an oracle that only EXAMINEs, through APPEND (now and
then of 600 KB, so that FETCHes go out in batches), FETCH (CHANGEDSINCE, VANISHED), STORE
(+/-FLAGS, .SILENT, keywords, UNCHANGEDSINCE), EXPUNGE / UID EXPUNGE / CLOSE, COPY, MOVE,
SEARCH (MODSEQ too), NOOP, CHECK, IDLE and SELECT (QRESYNC ...), by message number and by UID;
some pipelined, some sent to several sessions before any answer is read.

What each session's answers must never say (each check names the rule it enforces):

* a message number outside the session's view (FETCH, EXPUNGE, RECENT), EXISTS going down,
  VANISHED without QRESYNC or naming a UID the view never had (RFC 9051 §7.4, §7.5; RFC 7162
  §3.2.10);
* EXPUNGE while answering FETCH, STORE or SEARCH by message number, or any response while no
  command is in progress (RFC 9051 §7.5.1, §5.5);
* UIDs that do not ascend with message numbers, a message number whose UID changes, a UID at
  or above the UIDNEXT its SELECT announced, UIDNEXT or UIDVALIDITY moving backwards
  (RFC 9051 §2.3.1.1);
* one UID with two bodies, sizes or dates across sessions; one (UID, MODSEQ) with two flag
  sets; a MODSEQ going down, or HIGHESTMODSEQ below a MODSEQ already seen (RFC 7162 §3.1);
* ``\\Recent`` for one message in two sessions (RFC 3501 §2.3.2);
* a keyword in FETCH FLAGS never announced in ``* FLAGS``, or announced and then dropped
  while a message still carries it (RFC 9051 §7.3.5);
* under CONDSTORE, a FETCH caused by STORE or another session without UID and MODSEQ
  (RFC 7162 §3.1);
* a STORE whose answer leaves a message without the change (imaptest's "STORE didn't update
  flags"), [MODIFIED] naming a message not changed since, a MOVE leaving the moved messages
  in the view, COPYUID/APPENDUID UIDs that are not new, SEARCH results other than the flags
  the same answer reports, CHANGEDSINCE and SEARCH MODSEQ leaving out a message the session
  knows changed, STORE/EXPUNGE/MOVE accepted or \\Seen set in an EXAMINEd mailbox;
* at a checkpoint (NOOP in every session), any difference between a session's view and the
  mailbox as a fresh EXAMINE shows it: a flag change or an expunge that never reached the
  session (RFC 9051 §7: the server sends what changed; §6.4.6: also for .SILENT); STATUS
  disagreeing with EXAMINE.

Budget: ``COLONY_IMAP_STATE_EXAMPLES`` (default 40) examples of at most
``COLONY_IMAP_STATE_STEPS`` (default 40) steps; the default run is derandomized (the same
examples every time), a run with the variable set draws new ones, e.g.
``COLONY_IMAP_STATE_EXAMPLES=300 pytest tests/integration/imap/test_imap_state_machine.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import select
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test


import test_imap_mailstore
from test_imap_mailstore import BOB, PASSWORD
from test_imapclient_livetest import _edge_imaps


imap, world = test_imap_mailstore.imap, test_imap_mailstore.world     # the fixtures, used by name

EXAMPLES = int(os.environ.get("COLONY_IMAP_STATE_EXAMPLES", "40"))
STEPS = int(os.environ.get("COLONY_IMAP_STATE_STEPS", "40"))
RANDOM = "COLONY_IMAP_STATE_EXAMPLES" in os.environ
# Shrinking replays examples against the live server, slowly; a contradiction's report carries
# the traffic that led to it, which is what one needs.  COLONY_IMAP_STATE_SHRINK=1 shrinks.
SHRINK = os.environ.get("COLONY_IMAP_STATE_SHRINK") == "1"
TIMEOUT = 30.0

SYSTEM = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
KEYWORDS = ("$Label1", "kw1", "kw2")
FLAG_CHOICES = SYSTEM + KEYWORDS
VALID_SYSTEM = {f.lower() for f in SYSTEM} | {"\\recent"}

_boxes = itertools.count(1)
_ids = itertools.count(1)


class Contradiction(AssertionError):
    """The server's answers contradict each other or the protocol."""


# --- reading and parsing responses -------------------------------------------------------------

_LITERAL = re.compile(rb"~?\{(\d+)\+?\}$")
_CODE = re.compile(r"\[([A-Z0-9.=-]+)(?: ([^\]]*))?\]", re.I)


@dataclass
class Response:
    text: bytes                 # the response with each literal replaced by \0<index>\0
    literals: list[bytes]

    @property
    def line(self) -> str:
        return self.text.decode("utf-8", "replace")

    def shown(self) -> str:
        s = self.line
        for i, lit in enumerate(self.literals):
            s = s.replace(f"\0{i}\0", "{%d}%r" % (len(lit), lit[:60]))
        return s[:300]


def tokenize(text: bytes, literals: list[bytes]) -> list:
    """An IMAP response as nested lists of str (atoms, quoted strings) and bytes (literals).
    An atom's ``[...]`` part is kept whole (``BODY[HEADER.FIELDS (X-ID)]``)."""
    out: list = []
    stack = [out]
    i, n = 0, len(text)
    while i < n:
        c = text[i:i + 1]
        if c == b" ":
            i += 1
        elif c == b"(":
            new: list = []
            stack[-1].append(new)
            stack.append(new)
            i += 1
        elif c == b")":
            if len(stack) == 1:
                raise Contradiction(f"unbalanced ')' in {text!r}")
            stack.pop()
            i += 1
        elif c == b'"':
            j, buf = i + 1, bytearray()
            while j < n and text[j:j + 1] != b'"':
                if text[j:j + 1] == b"\\":
                    j += 1
                buf += text[j:j + 1]
                j += 1
            stack[-1].append(buf.decode("utf-8", "replace"))
            i = j + 1
        elif c == b"\0":
            j = text.index(b"\0", i + 1)
            stack[-1].append(literals[int(text[i + 1:j])])
            i = j + 1
        else:
            j, depth = i, 0
            while j < n:
                ch = text[j:j + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth == 0 and ch in b" ()":
                    break
                j += 1
            stack[-1].append(text[i:j].decode("utf-8", "replace"))
            i = j
    if len(stack) != 1:
        raise Contradiction(f"unbalanced '(' in {text!r}")
    return out


def parse_set(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        lo, hi = int(a), int(b or a)
        out.extend(range(min(lo, hi), max(lo, hi) + 1))
    return out


def compress(numbers) -> str:
    numbers = sorted(set(numbers))
    spans: list[str] = []
    for _, group in itertools.groupby(enumerate(numbers), lambda p: p[1] - p[0]):
        g = [x for _, x in group]
        spans.append(str(g[0]) if len(g) == 1 else f"{g[0]}:{g[-1]}")
    return ",".join(spans)


def fetch_items(lst: list) -> dict[str, object]:
    items: dict[str, object] = {}
    for k in range(0, len(lst) - 1, 2):
        items[str(lst[k]).upper()] = lst[k + 1]
    return items


# --- what the sessions learn, together -----------------------------------------------------------

@dataclass
class Truth:
    """Facts the server stated to any session, which no other answer may contradict."""
    uidvalidity: int = 0
    uidnext: int = 0                     # the highest UIDNEXT any SELECT announced
    highest_uid: int = 0                 # the highest UID anybody saw
    max_modseq: int = 0
    body: dict[int, str] = field(default_factory=dict)          # UID -> X-Id
    size: dict[int, int] = field(default_factory=dict)
    date: dict[int, str] = field(default_factory=dict)
    flags_at: dict[tuple[int, int], frozenset] = field(default_factory=dict)   # (UID, MODSEQ) -> flags
    recent_owner: dict[int, str] = field(default_factory=dict)
    expunged: set[int] = field(default_factory=set)
    failed: bool = False
    log: deque = field(default_factory=lambda: deque(maxlen=160))


@dataclass
class Msg:
    uid: int | None = None
    flags: frozenset | None = None       # without \Recent
    modseq: int | None = None


class Session:
    """One raw IMAP connection and its model of the selected mailbox (imaptest's view)."""

    def __init__(self, name: str, host: str, port: int, truth: Truth, mode: str = "plain",
                 tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.truth = truth
        self.mode = mode                  # plain, condstore or qresync
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.buf = b""
        self.tags = itertools.count(1)
        self.view: list[Msg] = []
        self.selected = False
        self.read_only = False
        self.condstore = False
        self.qresync = False
        self.keywords: set[str] = set()
        self.select_uidnext = 0
        self.select_highestmodseq = 0
        self.recent: set[int] = set()
        self.gone: set[int] = set()       # UIDs this session was told are expunged
        self.idling: str | None = None
        self.resync_exists: int | None = None   # SELECT (QRESYNC ...) under way: its EXISTS
        self.inflight: deque[tuple[str, str]] = deque()   # (tag, command) sent, not yet answered
        greeting = self._read()
        if not greeting.line.startswith("* OK"):
            self.fail(f"greeting {greeting.line!r}")

    # -- traffic --

    def fail(self, what: str) -> None:
        self.truth.failed = True
        tail = "\n".join(self.truth.log)
        raise Contradiction(f"{self.name}: {what}\n--- the last responses (all sessions) ---\n{tail}")

    def note(self, direction: str, text: str) -> None:
        self.truth.log.append(f"{self.name} {direction} {text[:300]}")

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            self.fail(f"no answer within {TIMEOUT:.0f} s (waiting in {self.last_command!r})")
        if not chunk:
            self.fail("connection closed by the server")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _read(self) -> Response:
        text, literals = b"", []
        while True:
            line = self._line()
            m = _LITERAL.search(line)
            if m:
                size = int(m.group(1))
                while len(self.buf) < size:
                    self._fill()
                literals.append(self.buf[:size])
                self.buf = self.buf[size:]
                text += line[:m.start()] + b"\0%d\0" % (len(literals) - 1)
                continue
            text += line
            r = Response(text, literals)
            self.note("S:", r.shown())
            return r

    def pending_unsolicited(self) -> None:
        """Nothing may arrive while no command is in progress (and not idling)."""
        if self.idling or self.buf:
            if self.buf and not self.idling:
                self.fail(f"data while no command was in progress: {self.buf[:200]!r}")
            return
        ready, _, _ = select.select([self.sock], [], [], 0)
        if ready or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            self._fill()
            self.fail(f"data while no command was in progress: {self.buf[:200]!r}")

    def send(self, command: str, literal: bytes | None = None) -> str:
        if not self.inflight:
            self.pending_unsolicited()
        tag = f"{self.name}{next(self.tags)}"
        self.inflight.append((tag, command))
        line = f"{tag} {command}".encode()
        if literal is not None:
            line += b" {%d+}\r\n" % len(literal) + literal
        self.note("C:", f"{tag} {command}" + (f" <{len(literal)} octets>" if literal is not None else ""))
        self.sock.sendall(line + b"\r\n")
        return tag

    def collect(self, tag: str) -> tuple[str, str, list[list]]:
        """Read to the tagged answer, applying every untagged response to the view."""
        data: list[list] = []
        assert self.inflight and self.inflight[0][0] == tag, (tag, self.inflight)
        while True:
            r = self._read()
            if not r.text.startswith((b"* ", b"+")):
                answered = r.line.split(" ", 1)[0]
                if answered != tag:
                    self.fail(f"the answer to {answered} overtook the one to {tag} (RFC 9051 §5.5)")
                status, _, text = r.line[len(tag) + 1:].partition(" ")
                if status == "BAD":
                    self.fail(f"BAD for {self.last_command!r}: {r.line}")
                self.inflight.popleft()
                return status, text, data
            if r.text.startswith(b"+"):
                continue
            data.append(self.untagged(r))

    @property
    def last_command(self) -> str:
        """The command whose answer is being read."""
        return self.inflight[0][1] if self.inflight else ""

    def command(self, command: str, literal: bytes | None = None) -> tuple[str, str, list[list]]:
        return self.collect(self.send(command, literal))

    def ok(self, command: str, literal: bytes | None = None) -> tuple[str, list[list]]:
        status, text, data = self.command(command, literal)
        if status != "OK":
            self.fail(f"{command!r} answered {status} {text}")
        return text, data

    # -- untagged responses --------------------------------------------------------------------

    def untagged(self, r: Response) -> list:
        words = r.line[2:].split(" ", 2)
        head = words[0].upper()
        if head in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
            if head == "BYE" and not self.last_command.upper().startswith("LOGOUT"):
                self.fail(f"unexpected BYE: {r.line}")
            if head == "BAD":
                self.fail(f"untagged BAD: {r.line}")
            self.codes(r.line)
            return [head, r.line]
        tokens = tokenize(r.text[2:], r.literals)
        if head.isdigit() and len(tokens) >= 2:
            self.numbered(int(head), str(tokens[1]).upper(), tokens[2:])
        elif head == "FLAGS":
            announced = {f for f in tokens[1] if not f.startswith("\\")}
            held = {f for m in self.view if m.flags for f in m.flags if not f.startswith("\\")}
            # (during SELECT (QRESYNC ...) the view is the old one until VANISHED (EARLIER))
            if not held <= announced and self.resync_exists is None:
                self.fail(f"FLAGS dropped keywords still on messages: {sorted(held - announced)}")
            for f in tokens[1]:
                if f.startswith("\\") and f.lower() not in VALID_SYSTEM:
                    self.fail(f"FLAGS names an unknown system flag {f}")
            self.keywords = announced
        elif head == "VANISHED":
            self.vanished(tokens[1:])
        return tokens

    def codes(self, line: str) -> None:
        for m in _CODE.finditer(line):
            code, arg = m.group(1).upper(), m.group(2) or ""
            if code == "UIDVALIDITY":
                v = int(arg)
                if self.truth.uidvalidity and v != self.truth.uidvalidity:
                    self.fail(f"UIDVALIDITY changed {self.truth.uidvalidity} -> {v}")
                self.truth.uidvalidity = v
            elif code == "UIDNEXT":
                v = int(arg)
                if v < self.truth.uidnext:
                    self.fail(f"UIDNEXT went backwards: {self.truth.uidnext} -> {v}")
                if v <= self.truth.highest_uid:
                    self.fail(f"UIDNEXT {v} is not above UID {self.truth.highest_uid}, already seen")
                self.truth.uidnext = self.select_uidnext = v
            elif code == "HIGHESTMODSEQ":
                v = int(arg)
                if v < self.truth.max_modseq:
                    self.fail(f"HIGHESTMODSEQ {v} is below MODSEQ {self.truth.max_modseq}, already seen")
                self.select_highestmodseq = v
            elif code == "CLOSED":
                self.view, self.selected = [], False

    def numbered(self, n: int, kind: str, rest: list) -> None:
        if kind == "EXISTS" and self.resync_exists is not None:
            # the mailbox's size now; the old view shrinks by VANISHED (EARLIER) first
            self.resync_exists = n
        elif kind == "EXISTS":
            if n < len(self.view):
                self.fail(f"EXISTS went down {len(self.view)} -> {n} without EXPUNGE")
            self.view.extend(Msg() for _ in range(n - len(self.view)))
        elif kind == "RECENT":
            if self.mode == "rev2":
                self.fail("RECENT after ENABLE IMAP4rev2 (RFC 9051 §7.4: there is none)")
            if n > len(self.view):
                self.fail(f"RECENT {n} with only {len(self.view)} messages")
        elif kind == "EXPUNGE":
            if self.qresync:
                self.fail("EXPUNGE after ENABLE QRESYNC (RFC 7162 §3.2.10: VANISHED)")
            cmd = self.last_command.upper()
            if cmd.split(" ")[0] in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD"):
                self.fail(f"EXPUNGE while answering {self.last_command!r} (RFC 9051 §7.5.1)")
            if not 1 <= n <= len(self.view):
                self.fail(f"EXPUNGE {n} with {len(self.view)} messages")
            gone = self.view.pop(n - 1)
            if gone.uid is not None:
                self.truth.expunged.add(gone.uid)
                self.gone.add(gone.uid)
        elif kind == "FETCH":
            if not 1 <= n <= len(self.view):
                self.fail(f"FETCH for message {n} with {len(self.view)} messages")
            items = fetch_items(rest[0])
            verb = self.last_command.upper().split(" ")
            verb = verb[1] if verb[0] == "UID" else verb[0]
            if self.condstore and verb != "FETCH" and not {"UID", "MODSEQ"} <= set(items):
                self.fail(f"a FETCH without UID and MODSEQ while answering {self.last_command!r} "
                          f"after CONDSTORE was enabled (RFC 7162 §3.1)")
            self.fetched(n, items)
        else:
            self.fail(f"unknown numbered response {kind}")

    def vanished(self, args: list) -> None:
        if not self.qresync:
            self.fail("VANISHED without ENABLE QRESYNC")
        earlier = isinstance(args[0], list)
        uids = set(parse_set(args[-1]))
        if earlier and self.resync_exists is None:
            # UID FETCH (CHANGEDSINCE n VANISHED): UIDs expunged before, never ones the view
            # still holds (those go as VANISHED without EARLIER; RFC 7162 §3.2.6, §3.2.10)
            held = uids & set(self.uids_known())
            if held:
                self.fail(f"VANISHED (EARLIER) names {sorted(held)}, which the session still holds")
            return
        for uid in sorted(uids):
            at = self.position(uid)
            if at is None:
                # Not known by UID: one of the messages of unknown UID between its known
                # neighbours (as imaptest does; such messages carry nothing else yet).
                lower = max((i for i, m in enumerate(self.view) if m.uid is not None and m.uid < uid), default=-1)
                upper = min((i for i, m in enumerate(self.view) if m.uid is not None and m.uid > uid),
                            default=len(self.view))
                unknown = [i for i in range(lower + 1, upper) if self.view[i].uid is None]
                if not unknown:
                    if not earlier:
                        self.fail(f"VANISHED names UID {uid}, which the session never had")
                    continue
                at = unknown[-1] + 1
            self.view.pop(at - 1)
        self.truth.expunged |= uids
        self.gone |= uids

    def fetched(self, n: int, items: dict[str, object]) -> None:
        m = self.view[n - 1]
        t = self.truth
        if "UID" in items:
            uid = int(items["UID"])
            if m.uid is not None and m.uid != uid:
                self.fail(f"message {n} changed UID {m.uid} -> {uid}")
            if uid in self.gone:
                self.fail(f"UID {uid}, expunged, came back as message {n}")
            below = [x.uid for x in self.view[:n - 1] if x.uid is not None]
            above = [x.uid for x in self.view[n:] if x.uid is not None]
            if (below and below[-1] >= uid) or (above and above[0] <= uid):
                self.fail(f"UID {uid} at message {n} does not ascend between {below[-1:]} and {above[:1]}")
            m.uid = uid
            t.highest_uid = max(t.highest_uid, uid)
        uid = m.uid
        if "FLAGS" in items:
            flags = items["FLAGS"]
            if not isinstance(flags, list):
                self.fail(f"FLAGS is not a list: {flags!r}")
            for f in flags:
                if f.startswith("\\"):
                    if f.lower() not in VALID_SYSTEM:
                        self.fail(f"unknown system flag {f}")
                elif f not in self.keywords:
                    self.fail(f"keyword {f} in FETCH before any * FLAGS announced it")
            # (an EXAMINE sees \Recent without taking it: RFC 3501 §6.3.2)
            if self.mode == "rev2" and any(f.lower() == "\\recent" for f in flags):
                self.fail("\\Recent after ENABLE IMAP4rev2 (RFC 9051 §2.3.2: there is none)")
            if any(f.lower() == "\\recent" for f in flags) and uid is not None and not self.read_only:
                owner = t.recent_owner.setdefault(uid, self.name)
                if owner != self.name:
                    self.fail(f"\\Recent for UID {uid} in {self.name} and {owner}")
                self.recent.add(uid)
            m.flags = frozenset(f for f in flags if f.lower() != "\\recent")
        if "MODSEQ" in items:
            if not (self.condstore or self.qresync):
                self.condstore = True      # a CONDSTORE enabling command (FETCH MODSEQ, ...) ran
            modseq = int(items["MODSEQ"][0])
            if m.modseq is not None and modseq < m.modseq:
                self.fail(f"MODSEQ of message {n} went down {m.modseq} -> {modseq}")
            m.modseq = modseq
            t.max_modseq = max(t.max_modseq, modseq)
            if uid is not None and "FLAGS" in items:
                seen = t.flags_at.setdefault((uid, modseq), m.flags)
                if seen != m.flags:
                    self.fail(f"UID {uid} MODSEQ {modseq} with flags {sorted(m.flags)}, elsewhere {sorted(seen)}")
        elif self.condstore and "FLAGS" in items:
            self.fail("FETCH FLAGS without MODSEQ after CONDSTORE was enabled (RFC 7162 §3.2)")
        if uid is None:
            return
        for key, book in (("RFC822.SIZE", t.size), ("INTERNALDATE", t.date)):
            if key in items:
                value = items[key]
                if book.setdefault(uid, value) != value:
                    self.fail(f"UID {uid} {key} {value}, before {book[uid]}")
        for key, value in items.items():
            if key.startswith("BODY[") and isinstance(value, bytes):
                found = re.search(rb"X-Id: (\S+)", value)
                if found:
                    xid = found.group(1).decode()
                    if t.body.setdefault(uid, xid) != xid:
                        self.fail(f"UID {uid} has body {xid}, elsewhere {t.body[uid]}")

    # -- helpers for rules ---------------------------------------------------------------------

    def select(self, box: str, qresync: str = "") -> None:
        self.view, self.recent, self.keywords = [], set(), set()
        suffix = " (CONDSTORE)" if self.mode == "condstore" and not qresync else qresync
        verb = "EXAMINE" if self.mode == "examine" else "SELECT"
        text, _ = self.ok(f"{verb} {box}{suffix}")
        self.selected, self.read_only = True, "READ-ONLY" in text
        if self.view:
            self.ok("FETCH 1:* (UID)")     # the model knows every UID from here on
        self.check_below_uidnext()

    def check_below_uidnext(self) -> None:
        for m in self.view:
            if m.uid is not None and m.uid >= self.select_uidnext:
                self.fail(f"UID {m.uid} at or above the UIDNEXT {self.select_uidnext} of the SELECT")

    def silently_stored(self, uids: set[int] | None, mode: str, flags: set, data: list[list]) -> None:
        """A .SILENT STORE succeeded: the client works out the new flags of the messages it
        named (``None``: all) itself, except where the server sent FLAGS anyway."""
        told = set()      # by UID: a UID STORE's own FETCHes carry it (expunges may renumber)
        for d in data:
            items = fetch_items(d[2]) if len(d) >= 3 and d[1] == "FETCH" else {}
            if "FLAGS" in items and "UID" in items:
                told.add(int(items["UID"]))
        for m in self.view:
            if (uids is None or m.uid in uids) and m.uid not in told and m.flags is not None:
                m.flags = apply_mode(m.flags, mode, flags)

    def uids_known(self) -> list[int]:
        return [m.uid for m in self.view if m.uid is not None]

    def position(self, uid: int) -> int | None:
        for i, m in enumerate(self.view):
            if m.uid == uid:
                return i + 1
        return None

    def close(self) -> None:
        try:
            if self.idling:
                self.sock.sendall(b"DONE\r\n")
            self.sock.sendall(b"z LOGOUT\r\n")
        except OSError:
            pass
        self.sock.close()


def message(xid: str, filler: int) -> bytes:
    return (f"From: Alice <alice@example.org>\r\nTo: {BOB}\r\nSubject: stress {xid}\r\n"
            f"Message-ID: <{xid}@stress.example>\r\nX-Id: {xid}\r\n\r\n"
            f"body of {xid}\r\n" + ("x" * 74 + "\r\n") * (filler // 76) + "x" * (filler % 76) + "\r\n").encode()


def apply_mode(old: frozenset, mode: str, flags: set) -> frozenset:
    return frozenset(old | flags if mode == "+" else old - flags if mode == "-" else flags)


flag_sets = st.sets(st.sampled_from(FLAG_CHOICES), max_size=3)
picks = st.lists(st.integers(0, 1000), min_size=1, max_size=4)
who = st.integers(0, 2)
uid_plans = st.lists(st.tuples(st.sampled_from(["uid fetch", "uid fetch all", "uid store", "uid store.silent", "uid expunge", "noop",
                                                "check", "uid search", "append", "uid copy", "uid move"]),
                               flag_sets, picks), min_size=2, max_size=4)


class ImapStateMachine(RuleBasedStateMachine):
    host: str = ""
    port: int = 0
    tls: ssl.SSLContext | None = None     # IMAPS (through an edge)

    def __init__(self) -> None:
        super().__init__()
        self.truth = Truth()
        n = next(_boxes)
        self.box, self.other = f"stress{n}", f"stress{n}-other"
        self.sessions: list[Session] = []
        self.oracle = Session("o", self.host, self.port, self.truth, tls=self.tls)
        self.oracle.read_only = True      # it only EXAMINEs
        self.oracle.ok(f"LOGIN {BOB} {PASSWORD}")
        self.oracle.ok(f"CREATE {self.box}")
        self.oracle.ok(f"CREATE {self.other}")
        for _ in range(3):
            self.append_with(self.oracle, set(), None)

    @initialize(modes=st.tuples(st.sampled_from(["plain", "condstore", "qresync"]),
                                st.lists(st.sampled_from(["plain", "condstore", "qresync", "rev2", "examine"]),
                                         min_size=1, max_size=2)).map(lambda t: [t[0], *t[1]]))
    def open_sessions(self, modes):
        """Two or three sessions, the first read-write; ``examine`` ones are read-only."""
        for i, mode in enumerate(modes):
            s = Session("abc"[i], self.host, self.port, self.truth, mode, tls=self.tls)
            s.ok(f"LOGIN {BOB} {PASSWORD}")
            if mode == "rev2":
                s.ok("ENABLE IMAP4rev2")
            if mode == "qresync":
                s.ok("ENABLE QRESYNC")
                s.qresync = s.condstore = True
            elif mode == "condstore":
                s.condstore = True
            s.select(self.box)
            self.sessions.append(s)

    def teardown(self) -> None:
        try:
            if self.sessions and not self.truth.failed and all(s.selected and not s.idling for s in self.sessions):
                self.checkpoint()
        finally:
            for s in self.sessions:
                s.close()
            # The account would otherwise grow by two mailboxes an example, and every
            # example after slow down with it.
            try:
                if not self.truth.failed:
                    self.oracle.ok(f"DELETE {self.box}")
                    self.oracle.ok(f"DELETE {self.other}")
            finally:
                self.oracle.close()

    def still_there(self, uids) -> set[int]:
        """Which of ``uids`` the mailbox holds now (asked by the oracle, so that a message
        expunged in a way no session was told of yet is not taken for a missed update)."""
        o = self.oracle
        o.view = []
        o.ok(f"EXAMINE {self.box}")
        _, data = o.ok(f"UID SEARCH UID {compress(uids)}")
        o.ok("UNSELECT")
        return {int(x) for d in data if d and d[0] == "SEARCH" for x in d[1:]}

    def oracle_flags(self, uids) -> dict[int, tuple[frozenset, int | None]]:
        """The flags and MODSEQ of ``uids`` as a fresh EXAMINE shows them."""
        uids = sorted(set(uids))
        if not uids:
            return {}
        o = self.oracle
        o.view = []
        o.ok(f"EXAMINE {self.box}")
        _, data = o.ok(f"UID FETCH {compress(uids)} (UID FLAGS MODSEQ)")
        o.ok("UNSELECT")
        out = {}
        for d in data:
            if len(d) >= 3 and d[1] == "FETCH":
                items = fetch_items(d[2])
                out[int(items["UID"])] = (frozenset(f for f in items["FLAGS"] if f != "\\Recent"),
                                          int(items["MODSEQ"][0]))
        return out

    def oracle_modseqs(self, uids) -> dict[int, int]:
        return {u: v[1] for u, v in self.oracle_flags(uids).items()}

    def pick(self, i: int) -> Session:
        return self.sessions[i % len(self.sessions)]

    def seqs(self, s: Session, choices: list[int]) -> list[int]:
        n = len(s.view)
        return sorted({c % n + 1 for c in choices}) if n else []

    # -- commands --

    def append_with(self, s: Session, flags: set, date: str | None, filler: int | None = None) -> int | None:
        xid = f"m{next(_ids)}"
        flag_part = f" ({' '.join(sorted(flags))})" if flags else ""
        date_part = f' "{date}"' if date else ""
        highest = self.truth.highest_uid
        body = message(xid, len(xid) * 7 % 50 if filler is None else filler)
        text, _ = s.ok(f"APPEND {self.box}{flag_part}{date_part}", body)
        m = re.search(r"\[APPENDUID (\d+) (\d+)\]", text)
        if not m:
            s.fail(f"APPEND without APPENDUID: {text}")
        uidvalidity, uid = int(m.group(1)), int(m.group(2))
        if self.truth.uidvalidity and uidvalidity != self.truth.uidvalidity:
            s.fail(f"APPENDUID's UIDVALIDITY {uidvalidity} is not the mailbox's {self.truth.uidvalidity}")
        if uid <= highest:
            s.fail(f"APPENDUID {uid} is not above UID {highest}, already seen (RFC 4315 §3)")
        self.truth.highest_uid = uid
        self.truth.body[uid] = xid
        if s.selected and not any(m.uid in (None, uid) for m in s.view):
            s.fail(f"APPEND to the selected mailbox and no EXISTS for UID {uid} (RFC 9051 §6.3.12)")
        return uid

    @precondition(lambda self: self.sessions)
    @rule(i=who, flags=flag_sets, dated=st.booleans(), large=st.integers(0, 5))
    def append(self, i, flags, dated, large):
        """Now and then a message of 600 KB: two make a FETCH of their bodies go out in
        batches (the server's FETCH_BATCH_BYTES), between which other sessions' commands run."""
        s = self.pick(i)
        if s.idling:
            return
        self.append_with(s, flags, "05-Mar-2024 10:11:12 +0100" if dated else None,
                         600_000 if large == 0 else None)

    @precondition(lambda self: self.sessions)
    @rule(i=who, chosen=picks, by_uid=st.booleans(),
          items=st.sets(st.sampled_from(["FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "MODSEQ",
                                         "BODY.PEEK[HEADER.FIELDS (X-ID)]", "BODY[]"]), min_size=1, max_size=3),
          changed_since=st.none() | st.integers(0, 3), vanished=st.booleans())
    def fetch(self, i, chosen, by_uid, items, changed_since, vanished):
        s = self.pick(i)
        if s.idling or not s.view:
            return
        targets = self.seqs(s, chosen)
        if s.qresync:
            items = items | {"UID"}       # VANISHED names UIDs: the model must know them (as imaptest)
        if by_uid:
            uids = [s.view[n - 1].uid for n in targets if s.view[n - 1].uid is not None]
            if not uids:
                uids = ["1:*"]
            spec = compress(u for u in uids if isinstance(u, int)) or "1:*"
            command = f"UID FETCH {spec}"
        else:
            command = f"FETCH {compress(targets)}"
        modifier = ""
        bound = None
        if changed_since is not None:
            # a bound near what the session saw lately, so that some messages qualify
            bound = max(0, max((m.modseq or 0) for m in s.view) - changed_since)
            modifier = f" (CHANGEDSINCE {bound}{' VANISHED' if vanished and by_uid and s.qresync else ''})"
        before = {m.uid: m.modseq for m in s.view if m.uid is not None}
        peeked = {}
        if s.read_only and "BODY[]" in items:
            peeked = self.oracle_flags(m.uid for n in targets if (m := s.view[n - 1]).uid is not None)
        status, text, data = s.command(f"{command} ({' '.join(sorted(items))}){modifier}")
        if peeked:
            # RFC 9051 §6.3.3: EXAMINE changes nothing, \Seen included
            for uid, (flags, _) in self.oracle_flags(peeked).items():
                if "\\Seen" in flags and "\\Seen" not in peeked[uid][0]:
                    s.fail(f"FETCH BODY[] in an EXAMINEd mailbox set \\Seen on UID {uid}")
        if status == "NO" and not (not by_uid and "EXPUNGEISSUED" in text):
            s.fail(f"{command} answered NO {text}")
        answered = set()
        for d in data:
            if len(d) >= 3 and d[1] == "FETCH":
                got = fetch_items(d[2])
                if by_uid and "UID" not in got and set(got) - {"FLAGS", "MODSEQ"}:
                    s.fail(f"UID FETCH response without UID: {d}")
                if "UID" in got:
                    answered.add(int(got["UID"]))
                if bound is not None and ("RFC822.SIZE" in got or "INTERNALDATE" in got) and int(got["MODSEQ"][0]) <= bound:
                    s.fail(f"CHANGEDSINCE {bound} returned MODSEQ {got['MODSEQ']}")
        if bound is not None and by_uid:
            expected = {u for u, ms in before.items() if ms is not None and ms > bound and u in set(
                parse_set(spec) if spec != "1:*" else before)} - self.truth.expunged
            if not expected <= answered and self.still_there(expected - answered):
                s.fail(f"CHANGEDSINCE {bound} left out {sorted(expected - answered)}, known to have changed")

    @precondition(lambda self: self.sessions)
    @rule(i=who, chosen=picks, by_uid=st.booleans(), mode=st.sampled_from(["+", "-", ""]), flags=flag_sets,
          silent=st.booleans(), unchanged=st.booleans())
    def store(self, i, chosen, by_uid, mode, flags, silent, unchanged):
        s = self.pick(i)
        if s.idling or not s.view or (mode == "" and not flags and not silent) or not (flags or mode == ""):
            return
        targets = self.seqs(s, chosen)
        uids = [s.view[n - 1].uid for n in targets]
        if by_uid:
            uids = [u for u in uids if u is not None]
            if not uids:
                return
            spec = f"UID STORE {compress(uids)}"
        else:
            spec = f"STORE {compress(targets)}"
        modifier = ""
        if unchanged:
            # (in a session without CONDSTORE, UNCHANGEDSINCE enables it: RFC 7162 §3.1)
            known = [s.view[n - 1].modseq for n in targets if s.view[n - 1].modseq is not None]
            if known or s.select_highestmodseq:
                modifier = f" (UNCHANGEDSINCE {min(known) if known else s.select_highestmodseq})"
        before = {n: s.view[n - 1].flags for n in targets}
        before_uid = {n: s.view[n - 1].uid for n in targets}
        flag_text = " ".join(sorted(flags))
        status, text, data = s.command(f"{spec}{modifier} {mode}FLAGS{'.SILENT' if silent else ''} ({flag_text})")
        if s.read_only:
            if status != "NO" or "[READ-ONLY]" not in text:
                s.fail(f"STORE in a read-only mailbox answered {status} {text}")
            return
        if status != "OK":
            s.fail(f"{spec} answered {status} {text}")
        modified: set[int] = set()
        code = re.search(r"\[MODIFIED ([0-9:,]+)\]", text)
        if code:
            numbers = parse_set(code.group(1))
            modified = set(numbers) if by_uid else {before_uid.get(n) for n in numbers}
            bound = int(modifier.split()[1].rstrip(")"))
            # RFC 7162 §3.1.3: left alone because changed after the bound, and MODSEQs only grow
            for uid, modseq in self.oracle_modseqs(u for u in modified if u is not None).items():
                if modseq <= bound:
                    s.fail(f"[MODIFIED] names UID {uid}, whose MODSEQ {modseq} is not above {bound}")
        fetched = {int(fetch_items(d[2]).get("UID", 0)) or s.view[int(d[0]) - 1].uid
                   for d in data if len(d) >= 3 and d[1] == "FETCH" and "FLAGS" in fetch_items(d[2])
                   and int(d[0]) <= len(s.view)}
        wanted = set(flags)
        for n in targets:
            uid = before_uid[n]
            if uid is None and by_uid:
                continue              # not named by the UID STORE
            if uid is not None and (uid in modified or uid in self.truth.expunged):
                continue
            pos = s.position(uid) if uid is not None else n
            if pos is None:
                continue
            m = s.view[pos - 1]
            if silent and (uid is None or uid not in fetched):
                # No FETCH (asked for): the client works the flags out itself; a change another
                # session made meanwhile must have come with a FETCH (RFC 9051 §6.4.6).
                m.flags = apply_mode(before[n], mode, wanted) if before[n] is not None else None
                continue
            ok = m.flags is not None and (
                wanted <= m.flags if mode == "+" else not (wanted & m.flags) if mode == "-"
                else m.flags == frozenset(wanted))
            # (a message of unknown UID may be one another session expunged, which a STORE
            # may pass over, RFC 2180 §4.2.1: only known UIDs are held to it)
            if not ok and uid is not None and self.still_there([uid]):
                s.fail(f"STORE {mode}FLAGS ({flag_text}) left message {pos} (UID {uid}) with "
                       f"{sorted(m.flags) if m.flags is not None else 'no FETCH FLAGS'}")

    @precondition(lambda self: self.sessions)
    @rule(i=who, how=st.sampled_from(["EXPUNGE", "UID EXPUNGE", "CLOSE"]), chosen=picks)
    def expunge(self, i, how, chosen):
        s = self.pick(i)
        if s.idling or not s.view:
            return
        if s.read_only and how != "CLOSE":
            status, text, _ = s.command(how if how == "EXPUNGE" else "UID EXPUNGE 1:*")
            if status != "NO" or "[READ-ONLY]" not in text:
                s.fail(f"{how} in a read-only mailbox answered {status} {text}")
            return
        if how == "UID EXPUNGE":
            uids = [s.view[n - 1].uid for n in self.seqs(s, chosen) if s.view[n - 1].uid is not None]
            if not uids:
                return
            _, data = s.ok(f"UID EXPUNGE {compress(uids)}")
        elif how == "EXPUNGE":
            s.ok("EXPUNGE")
        else:
            s.ok("CLOSE")
            s.selected = False
            self.reselect(s)
        # every message the session knew as \Deleted (and, for UID EXPUNGE, named) is gone now
        for m in ([] if s.read_only else s.view):
            if m.flags and "\\Deleted" in m.flags and (how != "UID EXPUNGE" or m.uid in uids):
                s.fail(f"UID {m.uid}, \\Deleted, still there after {how}")

    def reselect(self, s: Session) -> None:
        if s.qresync and s.select_highestmodseq and s.view and all(m.uid is not None for m in s.view):
            # RFC 7162 §3.2.5: the session's old view, made current by VANISHED (EARLIER) and FETCH
            old, known = [Msg(m.uid, m.flags, m.modseq) for m in s.view], compress(m.uid for m in s.view)
            modseq = s.select_highestmodseq
            s.view = old
            s.keywords = {f for m in old if m.flags for f in m.flags if not f.startswith("\\")}
            s.resync_exists = -1
            try:
                text, _ = s.ok(f"SELECT {self.box} (QRESYNC ({self.truth.uidvalidity} {modseq} {known}))")
            finally:
                exists, s.resync_exists = s.resync_exists, None
            if exists < len(s.view):
                s.fail(f"after VANISHED (EARLIER) the view holds {len(s.view)} messages, EXISTS said {exists}")
            s.view.extend(Msg() for _ in range(exists - len(s.view)))
            s.selected = True
            s.check_below_uidnext()
        else:
            s.select(self.box)

    @precondition(lambda self: self.sessions)
    @rule(i=who, qresync=st.booleans())
    def select_again(self, i, qresync):
        s = self.pick(i)
        if s.idling:
            return
        if qresync and s.qresync:
            # UNSELECT keeps \Deleted messages; the view is resynchronised from what it knew
            s.ok("UNSELECT")
            s.selected = False
            self.reselect(s)
        else:
            s.select(self.box)

    @precondition(lambda self: self.sessions)
    @rule(i=who, chosen=picks, by_uid=st.booleans(), move=st.booleans(), here=st.booleans())
    def copy_or_move(self, i, chosen, by_uid, move, here):
        s = self.pick(i)
        if s.idling or not s.view:
            return
        targets = self.seqs(s, chosen)
        uids = [s.view[n - 1].uid for n in targets]
        target = self.box if here and not move else self.other
        if by_uid:
            uids = [u for u in uids if u is not None]
            if not uids:
                return
            spec = compress(uids)
        else:
            spec = compress(targets)
        verb = "MOVE" if move else "COPY"
        status, text, data = s.command(f"{'UID ' if by_uid else ''}{verb} {spec} {target}")
        if move and s.read_only:
            if status != "NO" or "[READ-ONLY]" not in text:
                s.fail(f"MOVE from a read-only mailbox answered {status} {text}")
            return
        if status != "OK":
            s.fail(f"{verb} answered {status} {text}")
        copyuid = re.search(r"\[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\]", text + " ".join(
            d[1] for d in data if d and d[0] == "OK"))
        if copyuid:
            src, dst = parse_set(copyuid.group(2)), parse_set(copyuid.group(3))
            if len(src) != len(dst):
                s.fail(f"COPYUID names {len(src)} sources and {len(dst)} copies")
            if target == self.box:
                if int(copyuid.group(1)) != self.truth.uidvalidity:
                    s.fail("COPYUID's UIDVALIDITY is not the mailbox's")
                if min(dst) <= self.truth.highest_uid:
                    s.fail(f"COPYUID's new UIDs {dst} not above UID {self.truth.highest_uid}, already seen")
                self.truth.highest_uid = max(dst)
                for a, b in zip(src, dst):
                    if a in self.truth.body:
                        self.truth.body[b] = self.truth.body[a]
        if move:
            moved = set(parse_set(copyuid.group(2))) if copyuid else set(u for u in uids if u)
            still = moved & set(s.uids_known())
            if still:
                s.fail(f"MOVE left {sorted(still)} in the view (RFC 6851 §3.3)")

    @precondition(lambda self: self.sessions)
    @rule(i=who, key=st.sampled_from(["ALL", "FLAGGED", "UNSEEN", "DELETED", "KEYWORD kw1", "MODSEQ"]),
          by_uid=st.booleans())
    def search(self, i, key, by_uid):
        s = self.pick(i)
        if s.idling or not s.view:
            return
        if key == "MODSEQ":
            known = [m.modseq for m in s.view if m.modseq is not None]
            if not known:
                return
            bound = sorted(known)[len(known) // 2]
            key = f"MODSEQ {bound}"
        _, data = s.ok(f"{'UID ' if by_uid else ''}SEARCH {key}")
        if s.mode == "rev2":
            # IMAP4rev2 answers SEARCH with ESEARCH (RFC 9051 §6.4.4), tagged with the command's tag
            found = [d for d in data if d and d[0] == "ESEARCH"]
            if len(found) != 1:
                s.fail(f"SEARCH gave {len(found)} ESEARCH responses")
            words = [x for x in found[0][1:] if not isinstance(x, list)]
            numbers = parse_set(words[words.index("ALL") + 1]) if "ALL" in words else []
        else:
            found = [d for d in data if d and d[0] == "SEARCH"]
            if len(found) != 1:
                s.fail(f"SEARCH gave {len(found)} SEARCH responses")
            numbers = [int(x) for x in found[0][1:] if not isinstance(x, list)]
        if by_uid:
            if all(m.uid is not None for m in s.view):
                extra = set(numbers) - set(s.uids_known())
                if extra:
                    s.fail(f"UID SEARCH found UIDs not in the mailbox: {sorted(extra)}")
        else:
            if any(not 1 <= n <= len(s.view) for n in numbers):
                s.fail(f"SEARCH found message numbers beyond {len(s.view)}: {numbers}")
        if key.startswith("MODSEQ"):
            bound = int(key.split()[1])
            # every message the session knows at or past the bound matches (modseqs only grow)
            for n, m in enumerate(s.view, 1):
                if m.modseq is not None and m.modseq >= bound and m.uid is not None \
                        and m.uid not in self.truth.expunged:
                    if (m.uid if by_uid else n) not in numbers and self.still_there([m.uid]):
                        s.fail(f"SEARCH MODSEQ {bound} left out message {n} (UID {m.uid}, MODSEQ {m.modseq})")
            return
        # The search ran on the flags the same command's updates then reported: every message of
        # known flags matches or not as those flags say (one expunged meanwhile may be left out).
        matches = {"ALL": lambda f: True, "FLAGGED": lambda f: "\\Flagged" in f,
                   "UNSEEN": lambda f: "\\Seen" not in f, "DELETED": lambda f: "\\Deleted" in f,
                   "KEYWORD kw1": lambda f: "kw1" in f}[key]
        for n, m in enumerate(s.view, 1):
            if m.flags is None or m.uid is None:
                continue
            found_it = (m.uid if by_uid else n) in numbers
            if found_it != matches(m.flags) and (found_it or self.still_there([m.uid])):
                s.fail(f"SEARCH {key} {'found' if found_it else 'left out'} message {n} "
                       f"(UID {m.uid}) with flags {sorted(m.flags)}")

    @precondition(lambda self: self.sessions)
    @rule(i=who, how=st.sampled_from(["NOOP", "CHECK"]))
    def noop(self, i, how):
        s = self.pick(i)
        if not s.idling:
            s.ok(how)

    @precondition(lambda self: len(self.sessions) >= 2)
    @rule(i=who, j=who, flags=flag_sets, appends=st.booleans())
    def idle(self, i, j, flags, appends):
        """One session IDLEs while another changes the mailbox: the change reaches it without
        a command (RFC 2177), and DONE ends the IDLE with nothing left over."""
        s, other = self.pick(i), self.pick(j)
        if s is other or s.idling or other.idling:
            return
        tag = s.send("IDLE")
        line = s._read()
        if not line.line.startswith("+"):
            while not line.line.startswith("+"):
                if line.text.startswith(tag.encode()):
                    s.fail(f"IDLE answered {line.line}")
                s.untagged(line)
                line = s._read()
        s.idling = tag
        other.ok("NOOP")          # its view current, so that the toggle below is a change
        target = next((m for m in other.view if m.uid is not None and m.flags is not None), None)
        if appends or target is None or other.read_only:
            self.append_with(other, flags, None)
        else:
            sign = "-" if "kw1" in target.flags else "+"
            other.ok(f"UID STORE {target.uid} {sign}FLAGS (kw1)")
        # the change must arrive by itself: wait for one response, within the deadline
        s.sock.settimeout(TIMEOUT)
        first = s._read()
        if first.text.startswith(b"* "):
            s.untagged(first)
        s.idling = None
        s.sock.sendall(b"DONE\r\n")
        s.note("C:", "DONE")
        s.collect(tag)

    @precondition(lambda self: len(self.sessions) >= 2)
    @rule(plan=st.lists(st.tuples(who, st.sampled_from(["store", "uid store", "uid expunge", "append", "noop",
                                                         "fetch", "uid move", "uid copy", "search"]),
                                  flag_sets, picks), min_size=2, max_size=3, unique_by=lambda p: p[0] % 3))
    def concurrently(self, plan):
        """Commands sent to several sessions before any answer is read: the server runs them in
        some order, and every session's answers must still agree with its own view."""
        sent = []
        for i, what, flags, chosen in plan:
            s = self.pick(i)
            if s.idling or any(s is t for t, _ in sent):
                continue
            n = len(s.view)
            seqs = self.seqs(s, chosen)
            uids = [s.view[k - 1].uid for k in seqs if s.view[k - 1].uid is not None]
            flag_text = " ".join(sorted(flags)) or "kw2"
            if what == "append":
                xid = f"m{next(_ids)}"
                tag = s.send(f"APPEND {self.box}", message(xid, 5))
                sent.append((s, (tag, "append", xid)))
                continue
            if n == 0 or what == "noop" or (s.read_only and what in ("store", "uid store", "uid expunge", "uid move")):
                command = "NOOP"
            elif what == "store":
                command = f"STORE {compress(seqs)} +FLAGS ({flag_text})"
            elif what == "fetch":
                command = f"FETCH {compress(seqs)} (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-ID)])"
            elif what == "search":
                command = "SEARCH DELETED"
            elif not uids:
                command = "NOOP"
            elif what == "uid store":
                command = f"UID STORE {compress(uids)} -FLAGS ({flag_text})"
            elif what == "uid expunge":
                command = f"UID EXPUNGE {compress(uids)}"
            elif what == "uid move":
                command = f"UID MOVE {compress(uids)} {self.other}"
            else:
                command = f"UID COPY {compress(uids)} {self.box}"
            sent.append((s, (s.send(command), command, None)))
        for s, (tag, command, xid) in sent:
            status, text, _ = s.collect(tag)
            if status != "OK" and not (status == "NO" and "EXPUNGEISSUED" in text):
                s.fail(f"{command!r} answered {status} {text}")
            if xid is not None:
                m = re.search(r"\[APPENDUID \d+ (\d+)\]", text)
                uid = int(m.group(1))
                if self.truth.body.setdefault(uid, xid) != xid:
                    s.fail(f"APPENDUID {uid} was given to {self.truth.body[uid]} already")
                self.truth.highest_uid = max(self.truth.highest_uid, uid)

    @precondition(lambda self: self.sessions)
    @rule(i=who, plan=uid_plans)
    def pipelined(self, i, plan):
        """Several commands in one go, each answered in order (RFC 9051 §5.5); by UID only, as a
        client may not send message numbers behind a command that may expunge."""
        s = self.pick(i)
        if s.idling or not s.view:
            return
        self.collect_plan(s, self.send_plan(s, plan))

    @precondition(lambda self: len(self.sessions) >= 2)
    @rule(plans=st.lists(uid_plans, min_size=2, max_size=3), idler=st.booleans())
    def storm(self, plans, idler):
        """Every session pipelines its commands before any answer is read: the server
        interleaves the sessions' commands as it takes them, as under imaptest's load.  With
        ``idler``, the last session IDLEs through the storm and takes what it hears."""
        sessions = self.sessions
        idle_tag = None
        if idler and not sessions[-1].idling:
            watcher, sessions = sessions[-1], sessions[:-1]
            idle_tag = watcher.send("IDLE")
            while not (line := watcher._read()).text.startswith(b"+"):
                if not line.text.startswith(b"* "):
                    watcher.fail(f"IDLE answered {line.line}")
                watcher.untagged(line)
            watcher.idling = idle_tag
        sent = [(s, self.send_plan(s, plan)) for s, plan in zip(sessions, plans)
                if not s.idling and s.view]
        for s, commands in sent:
            self.collect_plan(s, commands)
        if idle_tag is not None:
            watcher.idling = None
            watcher.sock.sendall(b"DONE\r\n")
            watcher.note("C:", "DONE")
            watcher.collect(idle_tag)

    def send_plan(self, s: Session, plan) -> list:
        sent = []
        for what, flags, chosen in plan:
            if s.read_only and what.startswith(("uid store", "uid expunge", "uid move")):
                what = "noop"
            uids = [s.view[k - 1].uid for k in self.seqs(s, chosen) if s.view[k - 1].uid is not None]
            spec = compress(uids) if uids else "1:*"
            flag_text = " ".join(sorted(flags)) or "kw1"
            literal, xid = None, None
            if what == "uid fetch":
                command = f"UID FETCH {spec} (UID FLAGS RFC822.SIZE{' MODSEQ' if s.condstore else ''})"
            elif what == "uid fetch all":
                command = "UID FETCH 1:* (UID FLAGS BODY.PEEK[])"
            elif what.startswith("uid store"):
                sign = "+" if len(flags) % 2 else "-"
                command = f"UID STORE {spec} {sign}FLAGS{'.SILENT' if what.endswith('silent') else ''} ({flag_text})"
                if what.endswith("silent"):
                    xid = (set(uids) if uids else None, sign, set(flag_text.split()))
            elif what == "uid expunge":
                command = f"UID EXPUNGE {spec}"
            elif what == "uid search":
                command = "UID SEARCH UNDELETED"
            elif what == "append":
                xid = f"m{next(_ids)}"
                command, literal = f"APPEND {self.box}", message(xid, 9)
            elif what == "uid copy":
                command = f"UID COPY {spec} {self.box}"
            elif what == "uid move":
                command = f"UID MOVE {spec} {self.other}"
            else:
                command = what.upper()
            sent.append((s.send(command, literal), command, xid))
        return sent

    def collect_plan(self, s: Session, sent: list) -> None:
        for tag, command, xid in sent:
            status, text, data = s.collect(tag)
            if status != "OK":
                s.fail(f"{command!r} answered {status} {text}")
            if isinstance(xid, tuple):
                s.silently_stored(*xid, data)
            elif xid is not None:
                uid = int(re.search(r"\[APPENDUID \d+ (\d+)\]", text).group(1))
                if self.truth.body.setdefault(uid, xid) != xid:
                    s.fail(f"APPENDUID {uid} was given to {self.truth.body[uid]} already")
                self.truth.highest_uid = max(self.truth.highest_uid, uid)

    @precondition(lambda self: self.sessions)
    @rule()
    def checkpoint(self):
        """Every session NOOPs; then its view must be the mailbox as a fresh EXAMINE shows it."""
        for s in self.sessions:
            if s.idling:
                return
        for s in self.sessions:
            s.ok("NOOP")
        o = self.oracle
        o.view = []
        o.ok(f"EXAMINE {self.box}")
        _, data = o.ok("FETCH 1:* (UID FLAGS MODSEQ)") if o.view else ("", [])
        truth = [(m.uid, m.flags, m.modseq) for m in o.view]
        o.ok("UNSELECT")
        _, data = o.ok(f"STATUS {self.box} (MESSAGES UIDNEXT HIGHESTMODSEQ)")
        status = {str(k).upper(): int(v) for d in data if d and d[0] == "STATUS"
                  for k, v in zip(d[2][::2], d[2][1::2])}
        if status["MESSAGES"] != len(truth):
            o.fail(f"STATUS MESSAGES {status['MESSAGES']}, EXAMINE {len(truth)}")
        if status["UIDNEXT"] <= max((t[0] for t in truth), default=0) or status["UIDNEXT"] < self.truth.uidnext:
            o.fail(f"STATUS UIDNEXT {status['UIDNEXT']} not above the UIDs, or below UIDNEXT {self.truth.uidnext}")
        if status["HIGHESTMODSEQ"] < max((t[2] or 0 for t in truth), default=0):
            o.fail(f"STATUS HIGHESTMODSEQ {status['HIGHESTMODSEQ']} below a message's MODSEQ")
        for s in self.sessions:
            if len(s.view) != len(truth):
                s.fail(f"after NOOP the session has {len(s.view)} messages, the mailbox {len(truth)}: "
                       f"{s.uids_known()} vs {[t[0] for t in truth]}")
            for n, (m, (uid, flags, modseq)) in enumerate(zip(s.view, truth), 1):
                if m.uid is not None and m.uid != uid:
                    s.fail(f"message {n} is UID {m.uid} in the session, {uid} in the mailbox")
                if m.flags is not None and m.flags != flags:
                    s.fail(f"message {n} (UID {uid}) has {sorted(m.flags)} in the session, "
                           f"{sorted(flags)} in the mailbox: a change that never reached it")
                if m.modseq is not None and modseq is not None and m.modseq > modseq:
                    s.fail(f"message {n} (UID {uid}) MODSEQ {m.modseq} in the session, {modseq} in the mailbox")
        owners: dict[int, str] = {}
        for s in self.sessions:
            for uid in s.recent:
                if owners.setdefault(uid, s.name) != s.name:
                    s.fail(f"\\Recent for UID {uid} in {s.name} and {owners[uid]}")


async def _run(host: str, port: int, examples: int, tls: ssl.SSLContext | None = None) -> None:
    ImapStateMachine.host, ImapStateMachine.port, ImapStateMachine.tls = host, port, tls
    config = settings(max_examples=examples, stateful_step_count=STEPS, deadline=None, database=None,
                      derandomize=not RANDOM, suppress_health_check=list(HealthCheck), print_blob=True,
                      phases=[Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else []))
    started = time.monotonic()
    await asyncio.to_thread(run_state_machine_as_test, ImapStateMachine, settings=config)
    print(f"{examples} examples in {time.monotonic() - started:.1f}s")


async def test_concurrent_sessions_never_contradict_themselves(imap):
    world, host, port, _, _ = imap
    await _run(host, port, EXAMPLES)


async def test_concurrent_sessions_through_the_edge_never_contradict_themselves(imap, tmp_path):
    """The same through an edge's IMAPS (LOGIN there, the session handed over to the store,
    its octets relayed both ways): pipelined commands and the store's answers must cross the
    relay whole and in order.  A quarter of the examples: the store's rules are the same."""
    world, _host, _port, _view, secret = imap
    async with _edge_imaps(world, secret, tmp_path) as (imaps_port, client):
        await _run("127.0.0.1", imaps_port, max(1, EXAMPLES // 4), client)
