"""The IMAP grammar's building blocks (RFC 9051 §9 / RFC 3501 §9) over a read command.

``Cursor`` walks a ``Command`` (line text with literals between, from ``reader``) and reads
one grammar element at a time; every reader raises ``ParseError`` naming what it expected,
so a command parser is a straight sequence of calls and the server answers ``BAD <why>``.
Strings come back as ``bytes`` (the caller decides on UTF-8 or modified UTF-7 per the
session's IMAP4rev2/UTF8=ACCEPT state).

``SequenceSet`` keeps ranges, never the numbers: ``1:4294967295`` costs two integers, and
``members(highest)``/``ranges(highest)`` resolve ``*`` against the mailbox at hand.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from colony.protocols.imap.reader import Command, Literal

MAX_NUMBER = 4_294_967_295      # number = 1*DIGIT fitting in 32 bits unsigned
MAX_NUMBER64 = 2 ** 63 - 1      # number64 (RFC 9051: MODSEQ and friends)

ATOM_SPECIALS = b'(){ %*"\\]'
_ATOM = re.compile(rb'[^\x00-\x20\x7f(){ %*"\\\]]+')
_ASTRING_CHARS = re.compile(rb'[^\x00-\x20\x7f(){ %*"\\]+')      # atom chars plus "]"
_LIST_CHARS = re.compile(rb'[^\x00-\x20\x7f(){ "\\]+')           # atom chars plus % * ]
_SEQ = re.compile(rb"[0-9*:,$]+")
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class ParseError(ValueError):
    """The command does not follow the grammar; the message says what was expected."""


@dataclass(frozen=True)
class SequenceSet:
    """``ranges``: (low, high) pairs as written, ``None`` for ``*``; ``saved``: ``$``."""

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False
    # (highest, starts, spans) of the last ``contains``: SEARCH asks once per message, and
    # resolving a set of thousands of ranges each time cost seconds per command.
    _resolved: tuple | None = field(default=None, compare=False, repr=False)

    def resolved(self, highest: int) -> list[tuple[int, int]]:
        """Ordered, merged (low, high) ranges with ``*`` = ``highest`` (RFC 9051 §9: a range
        may be written backwards, ``4:2`` is ``2:4``)."""
        spans = []
        for low, high in self.ranges:
            a = highest if low is None else low
            b = highest if high is None else high
            if a > b:
                a, b = b, a
            spans.append((a, b))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def contains(self, n: int, highest: int) -> bool:
        cached = self._resolved
        if cached is None or cached[0] != highest:
            spans = self.resolved(highest)
            cached = (highest, [a for a, _ in spans], spans)
            object.__setattr__(self, "_resolved", cached)
        _, starts, spans = cached
        i = bisect.bisect_right(starts, n) - 1
        return i >= 0 and n <= spans[i][1]

    def __str__(self) -> str:
        if self.saved:
            return "$"
        def one(x: int | None) -> str:
            return "*" if x is None else str(x)
        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


def parse_sequence_set(text: bytes) -> SequenceSet:
    if text == b"$":
        return SequenceSet(saved=True)
    ranges = []
    for item in text.split(b","):
        low, sep, high = item.partition(b":")
        a = _seq_number(low)
        b = _seq_number(high) if sep else a
        ranges.append((a, b))
    if not ranges:
        raise ParseError("expected a sequence set")
    return SequenceSet(tuple(ranges))


def _seq_number(text: bytes) -> int | None:
    if text == b"*":
        return None
    if not text.isdigit() or text.startswith(b"0") or len(text) > 10 or int(text) > MAX_NUMBER:
        raise ParseError(f"bad sequence number {text[:20]!r}")
    return int(text)


class Cursor:
    def __init__(self, command: Command | bytes) -> None:
        parts = command.parts if isinstance(command, Command) else (command,)
        self._parts = list(parts)
        self._i = 0          # index into parts (always a bytes segment)
        self._pos = 0        # offset into that segment

    # --- position ---------------------------------------------------------------------------

    @property
    def _line(self) -> bytes:
        return self._parts[self._i]  # type: ignore[return-value]

    def at_end(self) -> bool:
        return self._i == len(self._parts) - 1 and self._pos >= len(self._line)

    def peek(self, n: int = 1) -> bytes:
        return self._line[self._pos:self._pos + n]

    def rest(self) -> bytes:
        return self._line[self._pos:]

    def end(self) -> None:
        if not self.at_end():
            raise ParseError(f"unexpected text at the end: {self.rest()[:30]!r}")

    def expect(self, token: bytes, what: str | None = None) -> None:
        if self._line[self._pos:self._pos + len(token)].upper() != token.upper():
            raise ParseError(f"expected {what or token.decode()}")
        self._pos += len(token)

    def accept(self, token: bytes) -> bool:
        if self._line[self._pos:self._pos + len(token)].upper() == token.upper():
            self._pos += len(token)
            return True
        return False

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def match(self, pattern: re.Pattern, what: str) -> bytes:
        """Read what ``pattern`` matches here (raises ``ParseError`` naming ``what``)."""
        found = pattern.match(self._line, self._pos)
        if not found:
            raise ParseError(f"expected {what}")
        self._pos = found.end()
        return found.group(0)

    _match = match

    def save(self) -> tuple[int, int]:
        return self._i, self._pos

    def restore(self, state: tuple[int, int]) -> None:
        self._i, self._pos = state

    def take_rest(self) -> bytes:
        """The rest of the current line (e.g. a SASL initial response)."""
        rest = self._line[self._pos:]
        self._pos = len(self._line)
        return rest

    # --- elements -------------------------------------------------------------------------

    def atom(self, what: str = "an atom") -> bytes:
        return self._match(_ATOM, what)

    def keyword(self) -> str:
        """An atom read as an upper-case command or item name."""
        return self.atom("a keyword").decode("ascii", "replace").upper()

    def number(self, what: str = "a number", limit: int = MAX_NUMBER) -> int:
        match = re.compile(rb"\d+").match(self._line, self._pos)
        if not match or len(match.group(0)) > len(str(limit)) or int(match.group(0)) > limit:
            raise ParseError(f"expected {what}")
        self._pos = match.end()
        return int(match.group(0))

    def nz_number(self, what: str = "a non-zero number") -> int:
        n = self.number(what)
        if n == 0:
            raise ParseError(f"expected {what}")
        return n

    def sequence_set(self) -> SequenceSet:
        return parse_sequence_set(self._match(_SEQ, "a sequence set"))

    def _literal_marker(self) -> bool:
        match = re.compile(rb"~?\{\d+\+?\}$").match(self._line, self._pos)
        return bool(match) and self._i + 1 < len(self._parts)

    def literal(self) -> Literal:
        if not self._literal_marker():
            raise ParseError("expected a literal")
        literal = self._parts[self._i + 1]
        assert isinstance(literal, Literal)
        self._i += 2
        self._pos = 0
        return literal

    def quoted(self) -> bytes:
        if self.peek() != b'"':
            raise ParseError("expected a quoted string")
        out = bytearray()
        line, i = self._line, self._pos + 1
        while i < len(line):
            c = line[i]
            if c == 0x5C:  # backslash: only \" and \\ are quoted-specials
                if i + 1 >= len(line) or line[i + 1] not in b'"\\':
                    raise ParseError("bad escape in a quoted string")
                out.append(line[i + 1])
                i += 2
                continue
            if c == 0x22:
                self._pos = i + 1
                return bytes(out)
            if c in (0x0D, 0x0A, 0x00):
                raise ParseError("CR, LF or NUL in a quoted string")
            out.append(c)
            i += 1
        raise ParseError("unterminated quoted string")

    def string(self) -> bytes:
        if self.peek() == b'"':
            return self.quoted()
        literal = self.literal()
        if b"\x00" in literal.data and not literal.binary:
            raise ParseError("NUL in a literal (use literal8)")
        return literal.data

    def astring(self, what: str = "a string") -> bytes:
        if self.peek() == b'"' or self._literal_marker():
            return self.string()
        return self._match(_ASTRING_CHARS, what)

    def nstring(self) -> bytes | None:
        if self.accept(b"NIL"):
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        if self.peek() == b'"' or self._literal_marker():
            return self.string()
        return self._match(_LIST_CHARS, "a mailbox pattern")

    def mailbox(self) -> bytes:
        """``INBOX`` in any case is INBOX (RFC 9051 §5.1)."""
        name = self.astring("a mailbox name")
        return b"INBOX" if name.upper() == b"INBOX" else name

    def flag(self) -> str:
        """``\\Seen``, ``\\Answered``... or a keyword; ``\\*`` only where the caller allows."""
        if self.accept(b"\\"):
            if self.accept(b"*"):
                return "\\*"
            return "\\" + self.atom("a flag").decode("ascii", "replace").capitalize()
        return self.atom("a flag keyword").decode("ascii", "replace")

    def flag_list(self) -> list[str]:
        self.expect(b"(", "a flag list")
        flags: list[str] = []
        while not self.accept(b")"):
            if flags:
                self.sp()
            flags.append(self.flag())
        return flags

    def paren_list(self, item) -> list:
        """``(a b c)`` with ``item(cursor)`` reading each element."""
        self.expect(b"(")
        out = []
        while not self.accept(b")"):
            if out:
                self.sp()
            out.append(item(self))
        return out

    def date(self) -> datetime:
        """date = date-text / DQUOTE date-text DQUOTE; date-text = 1*2DIGIT "-" Mon "-" 4DIGIT."""
        quoted = self.accept(b'"')
        match = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})").match(self._line, self._pos)
        if not match:
            raise ParseError("expected a date like 1-Feb-2024")
        self._pos = match.end()
        if quoted:
            self.expect(b'"')
        return _date(match.group(1), match.group(2), match.group(3))

    def date_time(self) -> datetime:
        """date-time = DQUOTE date-day-fixed "-" Mon "-" year SP time SP zone DQUOTE."""
        match = re.compile(rb'"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"').match(
            self._line, self._pos)
        if not match:
            raise ParseError('expected a date-time like "01-Feb-2024 10:00:00 +0000"')
        self._pos = match.end()
        day, month, year, hh, mm, ss, sign, zh, zm = match.groups()
        base = _date(day.strip(), month, year)
        offset = timedelta(hours=int(zh), minutes=int(zm)) * (1 if sign == b"+" else -1)
        try:
            value = base.replace(hour=int(hh), minute=int(mm), second=int(ss), tzinfo=timezone(offset))
        except ValueError:
            raise ParseError("bad time of day") from None
        try:
            value.astimezone(timezone.utc)    # 1-Jan-0001 ahead of UTC has no UTC time in Python
        except OverflowError:
            raise ParseError("date-time out of range") from None
        return value


def _date(day: bytes, month: bytes, year: bytes) -> datetime:
    try:
        m = [x.lower() for x in _MONTHS].index(month.decode().lower()) + 1
        return datetime(int(year), m, int(day), tzinfo=timezone.utc)
    except ValueError:
        raise ParseError("bad date") from None


# --- mailbox names: modified UTF-7 (RFC 3501 §5.1.3) ------------------------------------------

def encode_mutf7(name: str) -> bytes:
    import base64

    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode())
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def decode_mutf7(data: bytes) -> str:
    import base64

    out: list[str] = []
    i = 0
    while i < len(data):
        c = data[i:i + 1]
        if c != b"&":
            if not 0x20 <= data[i] <= 0x7E:
                raise ParseError("mailbox name is not modified UTF-7")
            out.append(c.decode())
            i += 1
            continue
        end = data.find(b"-", i)
        if end < 0:
            raise ParseError("unterminated modified UTF-7 sequence")
        chunk = data[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(b",", b"/")
            try:
                out.append(base64.b64decode(b64 + b"=" * (-len(b64) % 4), validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise ParseError("bad modified UTF-7 sequence") from None
        i = end + 1
    return "".join(out)
