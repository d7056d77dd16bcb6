"""SEARCH, SORT and THREAD evaluation (RFC 9051 §6.4.4, RFC 5256), pure.

The session hands over the mailbox's messages as ``MessageView`` objects (sequence number,
UID, flags, size, dates, MODSEQ and on-demand access to header fields and body text) and a
parsed search key (``commands.SearchKey``); out come the matching messages, sorted lists
or thread trees.  Nothing here reads storage or the clock: "now" (for OLDER/YOUNGER) is an
argument.

String matching is what RFC 9051 §6.4.4 asks: case-insensitive substring on the decoded
text -- header fields with their RFC 2047 encoded-words decoded, bodies with their
Content-Transfer-Encoding undone.  Charsets: UTF-8 and US-ASCII (``BADCHARSET`` for others,
which the session answers with ``NO [BADCHARSET (UTF-8 US-ASCII)]``).

SORT and THREAD use the RFC 5256 base subject (re:/fwd: and [blob] prefixes and (fwd)
trailers removed) and the sent date (Date: header, else the internal date).
"""

from __future__ import annotations

import email.header
import email.utils
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Protocol

from colony.protocols.imap.syntax import SequenceSet

CHARSETS = ("UTF-8", "US-ASCII")


class BadCharset(ValueError):
    pass


class MessageView(Protocol):
    seq: int
    uid: int
    flags: frozenset[str]
    size: int
    internal_date: datetime
    modseq: int

    def header(self, name: str) -> str | None:
        """The raw value of the first header field ``name`` (None if absent)."""

    def headers_text(self) -> str:
        """The whole header section, decoded for searching."""

    def body_text(self) -> str:
        """The body with transfer encodings undone, for BODY/TEXT searches."""


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def decode_header_value(value: str | None) -> str:
    """The field unfolded (RFC 5322 §2.2.3: each CRLF before white space removed), then its
    RFC 2047 encoded-words decoded; anything undecodable kept as it is.  Unfolded first: a
    long Subject folded by its sender ("Subject: quarterly\r\n report") did not match
    SEARCH SUBJECT "quarterly report" unless an encoded-word made the decoder unfold it."""
    if not value:
        return ""
    value = _FOLD.sub("", value)
    try:
        parts = email.header.decode_header(value)
    except Exception:
        return value
    out = []
    for data, charset in parts:
        if isinstance(data, bytes):
            try:
                out.append(data.decode(charset or "utf-8", "replace"))
            except LookupError:
                out.append(data.decode("utf-8", "replace"))
        else:
            out.append(data)
    return "".join(out)


def _fold(text: str) -> str:
    return text.casefold()


@dataclass
class SearchContext:
    highest_seq: int
    highest_uid: int
    now: datetime
    saved: SequenceSet | None = None          # SEARCHRES "$" (as UIDs)
    saved_uids: frozenset[int] = frozenset()


def check_charset(charset: str | None) -> None:
    if charset is not None and charset.upper() not in CHARSETS:
        raise BadCharset(charset)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _sent_date(m: MessageView) -> date:
    raw = m.header("Date")
    if raw:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
            if parsed is not None:
                return parsed.date()
        except (TypeError, ValueError, IndexError):
            pass
    return m.internal_date.date()


def _internal_day(m: MessageView) -> date:
    # RFC 9051: the internal date's *date*, disregarding time and timezone.
    return m.internal_date.date()


# Search keys answered from a message's octets (headers or body) rather than its metadata.
_CONTENT_KEYS = {"SENTBEFORE", "SENTON", "SENTSINCE", "FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER", "BODY", "TEXT"}


def reads_message(key: tuple) -> bool:
    """Whether evaluating ``key`` reads any message's octets (a shell may then want the
    bodies at hand first); flags, sizes, dates, UIDs and MODSEQ are metadata."""
    kind = key[0]
    if kind == "AND":
        return any(reads_message(k) for k in key[1])
    if kind == "OR":
        return reads_message(key[1]) or reads_message(key[2])
    if kind == "NOT":
        return reads_message(key[1])
    return kind in _CONTENT_KEYS


def matches(key: tuple, m: MessageView, ctx: SearchContext) -> bool:
    kind = key[0]
    if kind == "AND":
        return all(matches(k, m, ctx) for k in key[1])
    if kind == "OR":
        return matches(key[1], m, ctx) or matches(key[2], m, ctx)
    if kind == "NOT":
        return not matches(key[1], m, ctx)
    if kind == "ALL":
        return True
    flag_keys = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft", "FLAGGED": "\\Flagged",
                 "SEEN": "\\Seen", "RECENT": "\\Recent"}
    if kind in flag_keys:
        return flag_keys[kind] in m.flags
    if kind.startswith("UN") and kind[2:] in flag_keys:
        return flag_keys[kind[2:]] not in m.flags
    if kind == "NEW":
        return "\\Recent" in m.flags and "\\Seen" not in m.flags
    if kind == "OLD":
        return "\\Recent" not in m.flags
    if kind == "KEYWORD":
        return any(f.casefold() == key[1].casefold() for f in m.flags)
    if kind == "UNKEYWORD":
        return not any(f.casefold() == key[1].casefold() for f in m.flags)
    if kind == "SEQ":
        s: SequenceSet = key[1]
        if s.saved:
            return m.uid in ctx.saved_uids
        return s.contains(m.seq, ctx.highest_seq)
    if kind == "UID":
        s = key[1]
        if s.saved:
            return m.uid in ctx.saved_uids
        return s.contains(m.uid, ctx.highest_uid)
    if kind == "LARGER":
        return m.size > key[1]
    if kind == "SMALLER":
        return m.size < key[1]
    if kind in ("BEFORE", "ON", "SINCE"):
        return _compare_day(kind, _internal_day(m), key[1].date())
    if kind in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _compare_day(kind[4:], _sent_date(m), key[1].date())
    if kind == "OLDER":
        return m.internal_date <= ctx.now - timedelta(seconds=key[1])
    if kind == "YOUNGER":
        return m.internal_date >= ctx.now - timedelta(seconds=key[1])
    if kind == "MODSEQ":
        return m.modseq >= key[1]
    if kind == "SUBJECT":
        return _fold(_text(key[1])) in _fold(decode_header_value(m.header("Subject")))
    if kind in ("FROM", "TO", "CC", "BCC"):
        value = m.header(kind.capitalize() if kind != "BCC" else "Bcc")
        return _fold(_text(key[1])) in _fold(_address_text(value))
    if kind == "HEADER":
        name, needle = key[1], _text(key[2])
        value = m.header(name)
        if value is None:
            return False
        return not needle or _fold(needle) in _fold(decode_header_value(value))
    if kind == "BODY":
        return _fold(_text(key[1])) in _fold(m.body_text())
    if kind == "TEXT":
        needle = _fold(_text(key[1]))
        return needle in _fold(m.headers_text()) or needle in _fold(m.body_text())
    raise ValueError(f"unknown search key {kind}")


def _address_text(value: str | None) -> str:
    """What FROM/TO/CC/BCC search: RFC 9051 §6.4.4's "envelope structure's FROM field", each
    address as ENVELOPE gives it -- the display name (encoded-words decoded), the source
    route and ``mailbox@host``, and a group's name -- without the comments and blanks of
    the field as written: ``<jo (x)@ (y) example.org>`` matches ``jo@example.org``, and
    ``Pete(A nice chap) <pete@silly.test>`` does not match "nice"."""
    if not value:
        return ""
    from colony.protocols.imap.encode import parse_addresses   # encode imports mime, not us

    lines = []
    for name, adl, mailbox, host in parse_addresses(value):
        if mailbox is None:
            continue                                  # the end of a group
        if host is None:
            lines.append(decode_header_value(mailbox))         # a group's name
            continue
        route = f"{adl}:" if adl else ""
        lines.append(f"{decode_header_value(name or '')} <{route}{mailbox}@{host}>")
    return "\n".join(lines)


def _compare_day(kind: str, day: date, against: date) -> bool:
    if kind == "BEFORE":
        return day < against
    if kind == "ON":
        return day == against
    return day >= against   # SINCE


def search(messages: Iterable[MessageView], key: tuple, ctx: SearchContext) -> list[MessageView]:
    return [m for m in messages if matches(key, m, ctx)]


# --- base subject (RFC 5256 §2.1) ----------------------------------------------------------------

_BLOB = r"\[[^\[\]]*\]"
_SUBJ_LEADER = re.compile(rf"^(?:(?:{_BLOB}\s*)*(?:re|fwd?)\s*(?:{_BLOB}\s*)?:\s*)", re.IGNORECASE)
_BLOB_LEADER = re.compile(rf"^{_BLOB}\s*")
_BLOB_AT = re.compile(rf"{_BLOB}\s*")
_TRAILER = re.compile(r"\s*\(fwd\)\s*$", re.IGNORECASE)


def base_subject(raw: str | None) -> str:
    return _base_subject(raw)[0]


def is_reply_or_forward(raw: str | None) -> bool:
    """Whether extracting the base subject removed a reply or forward marker -- a "re:" or
    "fwd:" leader (after blobs too), a "(fwd)" trailer or a "[fwd: ...]" wrapper: what RFC
    5256 §4 step 5 calls a reply or forward when it merges threads by subject."""
    return _base_subject(raw)[1]


def _base_subject(raw: str | None) -> tuple[str, bool]:
    s = decode_header_value(raw or "")
    s = re.sub(r"\s+", " ", s).strip()
    marked = False
    while True:
        before = s
        while True:                            # (2) trailers
            trimmed = _TRAILER.sub("", s)
            if trimmed == s:
                break
            s = trimmed.strip()
            marked = True
        while True:                            # (3)-(5) leaders and blobs
            before_leader = s
            s = _SUBJ_LEADER.sub("", s, count=1)
            if s != before_leader:
                marked = True
                blob = _BLOB_LEADER.match(s)
                if blob and s[blob.end():].strip():
                    s = s[blob.end():]
                continue
            # No leader, and removing blobs cannot make one (a leader may begin with any run
            # of them): the leading blobs go, each while something is left after it, in one
            # pass -- one blob and one failed leader match per round was quadratic, minutes
            # of SORT/THREAD for a subject of "[a]" repeated.
            last, pos = len(s.rstrip()), 0
            while (blob := _BLOB_AT.match(s, pos)) and blob.end() < last:
                pos = blob.end()
            s = s[pos:]
            break
        if s.lower().startswith("[fwd:") and s.endswith("]"):   # (6)
            s = s[5:-1].strip()
            marked = True
            continue
        if s == before:
            break
    return s.casefold(), marked


# --- SORT (RFC 5256 §3) ------------------------------------------------------------------------

def _first_address(value: str | None, display: bool) -> str:
    """The SORT value of an address field: the first address's mailbox (RFC 5256 §3: its
    addr-mailbox, as ENVELOPE gives it), or for DISPLAYFROM/DISPLAYTO its decoded display
    name, else ``mailbox@host`` (RFC 5957 §3).  The addresses are read by ENVELOPE's own
    parser, so a source route (``<@a.test:jo@b.test>``), a quoted local part or a group
    (whose name is no address: its first member counts) gives what ENVELOPE shows."""
    if not value:
        return ""
    from colony.protocols.imap.encode import parse_addresses   # encode imports mime, not us

    first = next(((name, mailbox, host) for name, _adl, mailbox, host in parse_addresses(value)
                  if mailbox is not None and host is not None), None)
    if first is None:
        return ""
    name, mailbox, host = first
    if display:
        shown = decode_header_value(name or "").strip()
        return (shown or f"{mailbox}@{host}").casefold()
    return mailbox.casefold()


def sort_key(m: MessageView, key: str):
    if key == "ARRIVAL":
        return m.internal_date
    if key == "DATE":
        raw = m.header("Date")
        try:
            parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed or m.internal_date
    if key == "SIZE":
        return m.size
    # Strings order as the collations SORT names compare them (i;ascii-casemap, RFC 5256 §3;
    # i;unicode-casemap, RFC 5051, titlecases likewise): letters as capitals, so "a" sorts
    # before "[" and "_" (0x41 < 0x5B < 0x5F), which lowercase keys would put first.
    if key == "SUBJECT":
        return base_subject(m.header("Subject")).upper()
    if key in ("FROM", "TO", "CC"):
        return _first_address(m.header(key.capitalize()), False).upper()
    if key in ("DISPLAYFROM", "DISPLAYTO"):
        return _first_address(m.header(key[7:].capitalize()), True).upper()
    raise ValueError(key)


def sort(messages: list[MessageView], criteria: tuple[tuple[bool, str], ...]) -> list[MessageView]:
    """Stable multi-key sort; ties broken by sequence number (RFC 5256 §3)."""
    ordered = sorted(messages, key=lambda m: m.seq)
    for reverse, key in reversed(criteria):
        ordered.sort(key=lambda m, k=key: sort_key(m, k), reverse=reverse)
    return ordered


# --- THREAD (RFC 5256 §4) -----------------------------------------------------------------------

@dataclass
class ThreadNode:
    message: MessageView | None = None
    children: list[ThreadNode] = field(default_factory=list)


def thread_orderedsubject(messages: list[MessageView]) -> list[ThreadNode]:
    by_subject: dict[str, list[MessageView]] = {}
    for m in sorted(messages, key=lambda m: (sort_key(m, "SUBJECT"), sort_key(m, "DATE"), m.seq)):
        by_subject.setdefault(sort_key(m, "SUBJECT"), []).append(m)
    threads = []
    for group in by_subject.values():
        root = ThreadNode(group[0], [ThreadNode(m) for m in group[1:]])
        threads.append(root)
    threads.sort(key=lambda t: (sort_key(t.message, "DATE"), t.message.seq))
    return threads


_MSGID = re.compile(r"<[^<>\s]+>")


def _ids(value: str | None) -> list[str]:
    return _MSGID.findall(value or "")


# Steps up the trees one THREAD REFERENCES may take to refuse links that would close a loop.
# A References header can name one deep ancestor again and again ('<a> <deep>' pairs): every
# pair walked the whole chain, seconds of CPU per header.  Past the budget a link is not made
# (threads join less; no message is lost and no loop is made).  Real mail needs few steps:
# most references are new containers or already have a parent, which are not walked.
_THREAD_WALK_BUDGET = 1_000_000


def thread_references(messages: list[MessageView]) -> list[ThreadNode]:
    """The REFERENCES algorithm: link by Message-ID / References / In-Reply-To, prune dummies,
    group the roots by base subject, order by sent date."""
    containers: dict[str, ThreadNode] = {}
    parent: dict[int, ThreadNode | None] = {}

    def container(msgid: str) -> ThreadNode:
        node = containers.get(msgid)
        if node is None:
            node = containers[msgid] = ThreadNode()
            parent[id(node)] = None
        return node

    budget = [_THREAD_WALK_BUDGET]

    def is_ancestor(a: ThreadNode, b: ThreadNode) -> bool:
        """Whether ``a`` is ``b`` or above it; True (the link is not made) once this THREAD's
        budget of steps is spent.  Walks are exact, never cut at a depth: a cut walk said
        "not an ancestor" for a chain deeper than the cut, the link closed a loop, and the
        messages of that loop (reachable from no root) were missing from the answer."""
        node: ThreadNode | None = b
        while node is not None:
            if node is a or budget[0] <= 0:
                return True
            budget[0] -= 1
            node = parent.get(id(node))
        return False

    def link(child: ThreadNode, new_parent: ThreadNode) -> None:
        old = parent.get(id(child))
        # A container without children is no one's ancestor: no walk up the tree.  The
        # references of one message are mostly new containers, and walking up from each
        # (up to 10,000 levels) made one References header of 16,000 IDs cost 9 s of CPU.
        if old is new_parent or child is new_parent or (child.children and is_ancestor(child, new_parent)):
            return
        if old is not None:
            old.children.remove(child)
        new_parent.children.append(child)
        parent[id(child)] = new_parent

    for m in sorted(messages, key=lambda m: m.seq):
        own = _ids(m.header("Message-ID"))
        msgid = own[0] if own else f"<colony-{m.uid}@nomessageid>"
        node = container(msgid)
        if node.message is not None:                  # a duplicate Message-ID: a fresh container
            node = ThreadNode(m)
            parent[id(node)] = None
            containers[f"<dup-{m.uid}>"] = node
        else:
            node.message = m
        refs = _ids(m.header("References")) or _ids(m.header("In-Reply-To"))[:1]
        previous: ThreadNode | None = None
        for ref in refs:
            ref_node = container(ref)
            if previous is not None and parent.get(id(ref_node)) is None:
                link(ref_node, previous)
            previous = ref_node
        if previous is not None:
            link(node, previous)
        elif parent.get(id(node)) is not None:
            old = parent[id(node)]
            old.children.remove(node)
            parent[id(node)] = None

    roots = [n for n in containers.values() if parent.get(id(n)) is None]

    def prune(nodes: list[ThreadNode], is_root: bool) -> list[ThreadNode]:
        """One level: ``nodes``' own children are pruned already."""
        out: list[ThreadNode] = []
        for n in nodes:
            if n.message is None:
                if not n.children:
                    continue
                if not is_root or len(n.children) == 1:
                    out.extend(n.children)     # promote the children of a dummy
                    continue
            out.append(n)
        return out

    # Trees are as deep as a chain of replies or one References header is long (thousands),
    # so they are walked with a stack, never by recursion: a node after all its descendants.
    for n in reversed(_preorder(roots)):
        n.children = prune(n.children, False)
    roots = prune(roots, True)

    def first_date(n: ThreadNode):
        # Only roots lack a message once pruned, and their children have one (or are the
        # two-level holders made below): this recursion is a few levels deep at most.
        if n.message is not None:
            return (sort_key(n.message, "DATE"), n.message.seq)
        return min((first_date(c) for c in n.children), default=(datetime.max.replace(tzinfo=timezone.utc), 0))

    def order(nodes: list[ThreadNode]) -> None:
        levels = [nodes]
        while levels:
            level = levels.pop()
            level.sort(key=first_date)
            levels.extend(n.children for n in level if n.children)

    # Group roots by base subject (RFC 5256 §4 step 5): a table holds, per subject, a dummy
    # if there is one, else a message that is no reply if there is one (5.B); every other
    # root of that subject then joins it (5.C).
    def thread_subject(root: ThreadNode) -> tuple[str, bool]:
        msg = root.message or (root.children[0].message if root.children else None)
        return _base_subject(msg.header("Subject")) if msg is not None else ("", False)

    ordered_roots = sorted(roots, key=first_date)
    subjects = {id(r): thread_subject(r) for r in ordered_roots}
    table: dict[str, ThreadNode] = {}
    for root in ordered_roots:
        subject, reply = subjects[id(root)]
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (held.message is not None
                            and (root.message is None or (subjects[id(held)][1] and not reply))):
            table[subject] = root
    joined: set[int] = set()                      # roots now under another one
    replaced: dict[int, ThreadNode] = {}           # a root -> the dummy that took its place
    for root in ordered_roots:
        subject, reply = subjects[id(root)]
        held = table.get(subject) if subject else None
        if held is None or held is root:
            continue
        joined.add(id(root))
        if held.message is None and root.message is None:
            held.children.extend(root.children)        # two dummies: the children are siblings
        elif held.message is None or (reply and not subjects[id(held)][1]):
            held.children.append(root)
        else:
            holder = ThreadNode(None, [held, root])
            replaced[id(held)] = holder
            table[subject] = holder
    grouped = [replaced.get(id(r), r) for r in ordered_roots if id(r) not in joined]
    order(grouped)
    return grouped


def _preorder(roots: list[ThreadNode]) -> list[ThreadNode]:
    """Every node under ``roots``, each before its descendants, without recursion."""
    out: list[ThreadNode] = []
    seen: set[int] = set()
    stack = list(reversed(roots))
    while stack:
        n = stack.pop()
        if id(n) in seen:       # never twice, even if a link made a loop
            continue
        seen.add(id(n))
        out.append(n)
        stack.extend(reversed(n.children))
    return out


def format_threads(threads: list[ThreadNode], number: Callable[[MessageView], int]) -> str:
    """The THREAD response body: ``(2)(3 6 (4 23)(44 7 96))`` (RFC 5256 §4).  A run of
    only children is one list of numbers; each branch is a parenthesized list of its own.
    Written with a stack: a thread may be thousands of branches deep."""
    out: list[str] = []
    stack: list[str | ThreadNode] = []
    for t in reversed(threads):
        stack += [")", t, "("]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        parts = []
        current = item
        while True:
            if current.message is not None:
                parts.append(str(number(current.message)))
            if len(current.children) != 1:
                break
            current = current.children[0]
        out.append(" ".join(parts))
        if current.children:
            if parts:
                out.append(" ")
            for c in reversed(current.children):
                stack += [")", c, "("]
    return "".join(out)
