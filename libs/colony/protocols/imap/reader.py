"""Reading IMAP commands off the wire: lines, literals and continuation requests, with
bounded memory (RFC 3501 §2.2, RFC 9051 §2.2, LITERAL+ RFC 7888, BINARY RFC 3516).

Theory of operation
-------------------
A client command is one line, except that a *literal* (``{n}``, ``{n+}``, ``~{n}``) at the
end of a line announces ``n`` octets that follow the line's CRLF, after which the command
line continues.  ``CommandReader`` is fed bytes and hands out, in order:

* ``Continue(text)`` -- a synchronizing literal ``{n}`` was announced and is acceptable:
  the server must now send ``+ text`` before the client sends the octets;
* ``Command(parts)`` -- a whole command: ``parts`` alternates line text (``bytes``) and
  ``Literal`` objects, starting and ending with line text;
* ``TooBig(tag, limit)`` -- a literal larger than ``max_literal`` was announced.  For a
  synchronizing literal nothing more is read for that command (the client waits for a
  continuation that never comes, and the server answers ``tag NO [TOOBIG]``... or ``BAD``);
  a non-synchronizing one is *discarded as it arrives* (RFC 7888 §4: the client sends it
  anyway), never buffered;
* ``LineTooLong(tag)`` -- a command line longer than ``max_line`` (the rest of the line is
  skipped as it arrives; answer ``BAD``).

The reader never holds more than ``max_line`` octets of line text plus ``max_command``
octets of accepted literals for the command in progress, whatever the client sends, and it
never expands anything: a literal is copied once into the command's parts.

``continue_allowed(bool)`` lets the rules say that literals are not welcome right now (for
example an APPEND before authentication): announced synchronizing literals are then
refused like too large ones.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

MAX_LINE = 64 * 1024          # RFC 7162 §4 asks servers to accept lines of at least 8192 octets
MAX_LITERAL = 64 * 1024 * 1024
MAX_COMMAND = 80 * 1024 * 1024

_LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,20})(\+)?\}$")
_TAG = re.compile(rb"^([^\x00-\x20\x7f(){%*\"\\+\]]+)")


@dataclass(frozen=True)
class Literal:
    data: bytes
    binary: bool = False      # literal8 (~{n}): may contain NUL

    def __repr__(self) -> str:
        return f"Literal({len(self.data)} octets{', binary' if self.binary else ''})"


@dataclass(frozen=True)
class Command:
    parts: tuple[bytes | Literal, ...]

    @property
    def tag(self) -> str:
        return tag_of(self.parts[0] if self.parts and isinstance(self.parts[0], bytes) else b"")


@dataclass(frozen=True)
class Continue:
    text: str = "Ready for literal data"


@dataclass(frozen=True)
class TooBig:
    tag: str
    limit: int
    synchronizing: bool


@dataclass(frozen=True)
class LineTooLong:
    tag: str


Event = Command | Continue | TooBig | LineTooLong


def tag_of(line: bytes) -> str:
    match = _TAG.match(line)
    return match.group(1).decode("ascii", "replace") if match else "*"


class CommandReader:
    def __init__(self, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL,
                 max_command: int = MAX_COMMAND) -> None:
        self.max_line, self.max_literal, self.max_command = max_line, max_literal, max_command
        self._buffer = bytearray()
        self._events: deque[Event] = deque()
        self._parts: list[bytes | Literal] = []     # the command in progress
        self._size = 0                              # octets held for it
        self._literal_left = 0                      # octets of an accepted literal still to come
        self._literal_binary = False
        self._literal_buf = bytearray()
        self._discard_left = 0                      # octets of a refused literal still to skip
        self._skip_line = False                     # skipping the rest of an over-long line
        self._first_tag = "*"
        self._literals_ok = True

    def continue_allowed(self, allowed: bool) -> None:
        self._literals_ok = allowed

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        self._run()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def buffered(self) -> int:
        """Octets held right now (for tests of the memory bound)."""
        return len(self._buffer) + self._size + len(self._literal_buf)

    @property
    def holds_input(self) -> bool:
        """Whether anything was received beyond the commands taken so far (a command not
        yet taken, or a part of one)."""
        return bool(self._events) or self.buffered > 0 or bool(self._literal_left or self._discard_left)

    @property
    def skipping(self) -> bool:
        """Whether what arrives next is dropped unread because of the last event taken (a
        refused non-synchronizing literal, a literal where no command can have one, the rest
        of an over-long line); with events still to take, the skip is one of theirs."""
        return (bool(self._discard_left) or self._skip_line) and not self._events

    def _reset(self) -> None:
        self._parts, self._size = [], 0

    def _run(self) -> None:
        buf = self._buffer
        while buf:
            if self._discard_left:
                n = min(self._discard_left, len(buf))
                del buf[:n]
                self._discard_left -= n
                continue
            if self._literal_left:
                n = min(self._literal_left, len(buf))
                self._literal_buf += buf[:n]
                del buf[:n]
                self._literal_left -= n
                if not self._literal_left:
                    self._parts.append(Literal(bytes(self._literal_buf), self._literal_binary))
                    self._size += len(self._literal_buf)
                    self._literal_buf = bytearray()
                continue
            end = buf.find(b"\n")
            if self._skip_line:
                if end < 0:
                    buf.clear()
                    return
                del buf[:end + 1]
                self._skip_line = False
                continue
            if end < 0:
                if len(buf) > self.max_line:
                    self._line_too_long(bytes(buf[:200]))
                    buf.clear()
                    self._skip_line = True
                return
            if end + 1 > self.max_line:
                self._line_too_long(bytes(buf[:200]))
                del buf[:end + 1]
                continue
            line = bytes(buf[:end])
            del buf[:end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line)

    def _line_too_long(self, head: bytes) -> None:
        tag = tag_of(head) if not self._parts else self._first_tag
        self._reset()
        self._events.append(LineTooLong(tag))

    def _line(self, line: bytes) -> None:
        if not self._parts:
            self._first_tag = tag_of(line)
        self._parts.append(line)
        self._size += len(line)
        match = _LITERAL_AT_END.search(line)
        if not match:
            self._events.append(Command(tuple(self._parts)))
            self._reset()
            return
        binary = bool(match.group(1))
        size = int(match.group(2))
        # "{n}" waits; "{n+}" does not (LITERAL+, advertised: any size).  RFC 7888 has no "{n-}"
        # (LITERAL- is the same "{n+}", up to 4096 octets): such a line holds no literal.
        sync = match.group(3) is None
        if len(self._parts) == 1 and b" " not in line[:match.start()].rstrip(b" "):
            # A literal where the tag or the command name goes ("{3}", "a {3}"): both are
            # atoms (RFC 9051 §9), so this is no command; the rules answer it BAD, and the
            # client gets no continuation that would make the next command's first octets
            # its literal.  A non-synchronizing one is coming anyway: skip it.
            self._events.append(Command(tuple(self._parts)))
            self._reset()
            if not sync:
                self._discard_left, self._skip_line = size, True
            return
        if (size > self.max_literal or self._size + size > self.max_command
                or (sync and not self._literals_ok)):
            self._events.append(TooBig(self._first_tag, self.max_literal, sync))
            self._reset()
            if not sync:
                self._discard_left = size      # it is coming anyway: skip it as it arrives
                self._skip_line = True         # and the rest of that command line
                if size == 0:
                    self._discard_left = 0
            return
        self._literal_left = size
        self._literal_binary = binary
        if size == 0:
            self._parts.append(Literal(b"", binary))
        if sync:
            self._events.append(Continue())
