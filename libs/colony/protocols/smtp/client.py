"""The SMTP client core (sans-IO): reply parsing and one mail transaction at a time, with
RFC 2920 PIPELINING when the server offers it.  The outbound queue's shell
(``colony_edge.smtp_client``) owns the socket, TLS and the clock.

Theory of operation
-------------------
``ReplyReader`` turns the server's octets (``receive_data``) into whole replies
(``next_reply``; a multi-line reply is one ``RemoteReply``), whatever the segmenting.  It
parses each octet once, keeps at most one reply's worth of partial input (``max_reply``
octets) and raises ``ProtocolError`` for anything that is not a reply line (a code whose
first digit is not 2-5 included), so a broken or hostile server cannot grow memory, spend
the event loop's CPU or be misread.  Reply texts are decoded as UTF-8 with invalid octets
replaced: they travel on into logs, spans and DSNs.  ``pending`` tells the shell whether
octets beyond the replies it took are buffered: after ``220`` to STARTTLS there must be none (they were sent in the
clear and would otherwise be read as if they came over TLS -- the client side of
CVE-2011-0411), so the shell refuses the session then.

``Transaction`` plans one MAIL/RCPT/DATA exchange and folds the replies into a result; the
shell only writes what it hands out and feeds it each reply in order:

* ``start()`` gives the first octets.  With PIPELINING (RFC 2920 §3.1) they are MAIL, every
  RCPT and DATA in one write -- DATA ends the group, the message waits for ``354``; without,
  MAIL alone, then each RCPT and DATA after the previous reply.
* ``receive(reply)`` takes the next reply and gives what to write next (``b""``: nothing, or
  the transaction is ``finished``).  Each RCPT reply is its recipient's own, in order.  The
  message goes out only after ``354`` and only if at least one recipient was accepted; a
  ``354`` with none accepted (a pipelining server that let DATA through) is answered with a
  lone "." so the server ends the empty transaction, whose reply delivers nothing.
* A reply of a class its command cannot have (a 2xx to DATA, a 3xx to anything else)
  raises ``ProtocolError``: the server is out of step, nothing it said after that is
  trusted, and the message was not sent.
* ``421`` at any point means the server is closing the session (RFC 5321 §3.8): the
  transaction ends there (``closing``) and no further reply is awaited; what was not
  answered stays ``None``.
* ``left_open`` says whether the server may still hold a transaction (MAIL accepted and no
  reply to the message's end): the next transaction on the session must start with RSET.
  After the reply to the data or a refused MAIL there is nothing to reset (RFC 5321
  §4.1.1.4, §4.1.1.5), and RSET would cost a round trip per message.

MAIL carries ``options`` and each RCPT its own ``rcpt_options`` (RFC 3461 NOTIFY and ORCPT,
which differ per recipient).  Addresses and parameters are refused (``ValueError``) if they
contain CR or LF: nothing a caller passes may inject a command.  ``encode_message`` dot-stuffs the message and makes
every line end CRLF (RFC 5321 §4.5.2), with a fast path for a message that needs neither.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_REPLY = 64 * 1024    # octets of one reply (every line of it) kept while it is incomplete


class ProtocolError(Exception):
    """The server sent something that is not an SMTP reply, or too much of it."""


class RemoteReply(NamedTuple):
    """A server's reply: its code and its text (the lines' texts joined by "\\n", without the
    code and separator; the enhanced status code, if any, is the text's start)."""

    code: int
    text: str

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300


class ReplyReader:
    def __init__(self, max_reply: int = MAX_REPLY) -> None:
        self._buffer = bytearray()   # octets of the current line not parsed yet
        self._searched = 0           # how much of it is known to hold no line end
        self._code: int | None = None
        self._texts: list[str] = []  # the current (incomplete) reply's lines so far
        self._octets = 0             # ... and their octets on the wire
        self._ready: deque[tuple[RemoteReply, int]] = deque()   # whole replies, with their octets
        self._queued = 0             # octets of the replies in ``_ready``
        self._max = max_reply

    def receive_data(self, data: bytes) -> None:
        """Parse what came, each octet once: a reply dripped in a few octets at a time
        must cost no more than one sent whole (parsing the whole incomplete reply again per
        segment cost 78 s of CPU for a 64 KiB reply sent a line per segment)."""
        buf = self._buffer
        buf += data
        pos = 0
        while (eol := buf.find(b"\n", max(pos, self._searched))) >= 0:
            self._searched = 0
            self._line(bytes(buf[pos:eol]).rstrip(b"\r"), eol + 1 - pos)
            pos = eol + 1
        del buf[:pos]
        self._searched = len(buf)
        if self._octets + len(buf) > self._max:
            raise ProtocolError(f"reply longer than {self._max} octets")

    def _line(self, line: bytes, octets: int) -> None:
        # RFC 5321 4.2: three digits, the first 2 to 5 (1yz is not used in SMTP); anything
        # else would reach the queue's rules as a class they do not know (a "9.0.0" DSN).
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in (b" ", b"-")):
            raise ProtocolError(f"not an SMTP reply line: {line[:80]!r}")
        if line[:1] not in b"2345":
            raise ProtocolError(f"reply code out of range: {line[:80]!r}")
        this = int(line[:3])
        if self._code is not None and this != self._code:
            raise ProtocolError(f"reply code changed within a multi-line reply: {line[:80]!r}")
        self._code = this
        # "replace": the text ends up in logs, spans and DSNs, which must be valid UTF-8.
        self._texts.append(line[4:].decode("utf-8", "replace").strip(" \t"))
        self._octets += octets
        if line[3:4] != b"-":
            self._ready.append((RemoteReply(this, "\n".join(self._texts)), self._octets))
            self._queued += self._octets
            self._code, self._texts, self._octets = None, [], 0

    @property
    def pending(self) -> int:
        """Octets buffered and not yet handed out as a reply."""
        return self._queued + self._octets + len(self._buffer)

    def next_reply(self) -> RemoteReply | None:
        if not self._ready:
            return None
        reply, octets = self._ready.popleft()
        self._queued -= octets
        return reply


def ehlo_extensions(reply: RemoteReply) -> dict[str, str]:
    """The extensions a positive EHLO reply advertises: keyword (upper case) -> parameters.
    The first line is the server's name, not an extension."""
    found = {}
    for line in reply.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            found[keyword.upper()] = params.strip()
    return found


def _clean(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"CR or LF in an SMTP command argument: {value!r}")
    return value


def command(verb: str, argument: str = "") -> bytes:
    return (f"{verb} {_clean(argument)}\r\n" if argument else f"{verb}\r\n").encode("utf-8")


def encode_message(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, leading dots doubled, the final
    CRLF "." CRLF added."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


_MAIL, _RCPT, _DATA, _END = "MAIL", "RCPT", "DATA", "END"


@dataclass
class Transaction:
    """One mail transaction (see the module's docstring).  ``message`` is already encoded
    (``encode_message``)."""

    mail_from: str
    recipients: list[str]
    message: bytes
    options: tuple[str, ...] = ()
    pipelining: bool = False
    # Parameters of each RCPT, in ``recipients``' order (RFC 3461 NOTIFY, ORCPT); none if empty.
    rcpt_options: list[tuple[str, ...]] = field(default_factory=list)

    mail: RemoteReply | None = field(default=None, init=False)
    rcpts: list[RemoteReply | None] = field(default_factory=list, init=False)
    data: RemoteReply | None = field(default=None, init=False)
    final: RemoteReply | None = field(default=None, init=False)
    closing: RemoteReply | None = field(default=None, init=False)
    finished: bool = field(default=False, init=False)
    message_sent: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a transaction needs at least one recipient")
        if self.rcpt_options and len(self.rcpt_options) != len(self.recipients):
            raise ValueError("rcpt_options must name the parameters of every recipient")
        self.rcpts = [None] * len(self.recipients)
        self._expect: deque[tuple[str, int]] = deque()
        self._empty = False   # a lone "." answered a 354 with no recipient accepted

    def start(self) -> bytes:
        mail = command("MAIL", f"FROM:<{_clean(self.mail_from)}>" + "".join(f" {_clean(o)}" for o in self.options))
        self._expect.append((_MAIL, 0))
        if not self.pipelining:
            return mail
        out = [mail]
        for i in range(len(self.recipients)):
            out.append(self._rcpt(i))
            self._expect.append((_RCPT, i))
        out.append(b"DATA\r\n")
        self._expect.append((_DATA, 0))
        return b"".join(out)

    def _rcpt(self, i: int) -> bytes:
        options = self.rcpt_options[i] if self.rcpt_options else ()
        return command("RCPT", f"TO:<{_clean(self.recipients[i])}>" + "".join(f" {_clean(o)}" for o in options))

    @property
    def accepted(self) -> list[str]:
        """Recipients whose RCPT the server accepted (2xx)."""
        return [r for r, reply in zip(self.recipients, self.rcpts) if reply is not None and reply.positive]

    @property
    def delivered(self) -> list[str]:
        """Recipients the server took the message for: the reply to its end was 2xx."""
        if self._empty or self.final is None or not self.final.positive:
            return []
        return self.accepted

    @property
    def left_open(self) -> bool:
        return self.mail is not None and self.mail.positive and self.final is None and self.closing is None

    def receive(self, reply: RemoteReply) -> bytes:
        if self.finished or not self._expect:
            raise ProtocolError(f"a reply nothing asked for: {reply.code} {reply.text[:80]}")
        kind, i = self._expect[0]
        if reply.positive if kind == _DATA else reply.code // 100 == 3:
            # RFC 5321 4.3.2: only DATA has an intermediate reply, and DATA never a 2xx.  A
            # "250" to DATA read as its answer delivered a message that was never sent; a
            # 3xx elsewhere is a server out of step with the commands.
            raise ProtocolError(f"reply {reply.code} to {kind}: {reply.text[:80]}")
        self._expect.popleft()
        if kind == _MAIL:
            self.mail = reply
        elif kind == _RCPT:
            self.rcpts[i] = reply
        elif kind == _DATA:
            self.data = reply
        else:
            self.final = reply
        if reply.code == 421:
            self.closing = reply
            return self._finish()
        if kind == _MAIL:
            if self.pipelining:
                return b""   # the RCPTs' and DATA's replies follow (refused, if MAIL was)
            if not reply.positive:
                return self._finish()
            self._expect.append((_RCPT, 0))
            return self._rcpt(0)
        if kind == _RCPT:
            if self.pipelining:
                return b""
            if i + 1 < len(self.recipients):
                self._expect.append((_RCPT, i + 1))
                return self._rcpt(i + 1)
            if not self.accepted:
                return self._finish()   # no DATA: MAIL stays open, RSET ends it
            self._expect.append((_DATA, 0))
            return b"DATA\r\n"
        if kind == _DATA:
            if reply.code != 354:
                return self._finish()
            self._expect.append((_END, 0))
            if self.accepted and self.mail is not None and self.mail.positive:
                self.message_sent = True
                return self.message
            # RFC 2920 §3.1: DATA accepted although no recipient was; end it empty.
            self._empty = True
            return b".\r\n"
        return self._finish()

    def _finish(self) -> bytes:
        self.finished = True
        self._expect.clear()
        return b""


__all__ = ["MAX_REPLY", "ProtocolError", "RemoteReply", "ReplyReader", "Transaction", "command", "ehlo_extensions",
           "encode_message"]
