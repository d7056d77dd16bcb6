"""Authenticated datagrams of the inner relay: a new transaction handed to its Call-ID's owner
by UDP, member to member, and the owner's answer back.

Theory of operation
-------------------
A packet that arrived over UDP at a member that is not its Call-ID's owner is sent, as one
datagram, to the owner's inner relay listener (``sip_inner`` in the owner's node record), and
the asking member does not wait for it: the owner handles it as if it had arrived there and
sends what is to go out back, as one or more datagrams, to the asking member's inner listener,
which sends each item from the address the phone talked to.  Nothing is kept per frame on
either side.  A frame lost inside the farm is a packet lost on the wire: the phone sends it
again and the owner's answer cache answers the copy.  (Over the bus, request/reply cost each
relayed REGISTER about 0.2 ms of member CPU -- a request future, a subscription's queue and
task, a publish and flush on both sides -- more than handling the packet; ``bench/README.md``,
"SIP: hand-over over the inner network".)

One frame, one datagram::

    CIR1 <kind> <to member> <from member> <from's inner host> <its inner port> <traceparent or ->\\n<body><MAC>

``kind`` is ``P`` (the body is a ``SpreadPacket`` frame, to the owner), ``A`` (a
``SpreadAnswers`` frame, to the member that asked) or ``E`` (an ``Entrusted`` body: a UDP
branch the sender forked and put on the wire itself, for the receiver to cancel should the
sender die, and branches of it that got their final answer -- ``entrusted_branches.py``)::

    <branch to forget> ... (or -)\n[<transport> <host> <port>\n<the INVITE as kept for a CANCEL>]

``to`` is the member the frame is for, so
a frame sent to one member and replayed at another is refused there; the inner address is
where answers go (the owner reads no node record for it).  ``traceparent`` is the W3C trace
context of the asker's span when tracing is on (``-`` otherwise), so the owner's
``sip.handle`` span joins the trace.  The MAC is HMAC-SHA256, cut to 16 bytes, over
everything before it, under a key derived from the farm-wide secret every member already
holds (``RelayKey.from_secret``; a separate key, so a MAC is never a nonce and back).

A datagram can be replayed by whoever sees the inner network: it then is a copy of a packet a
phone did send, which the owner treats as a retransmission (its answer cache, then the
digest's growing nonce counts), or a copy of answers the phone already had.  Frames are not
encrypted: they carry what the phones sent in the clear anyway.

``open_frame`` trusts nothing: anything that is not exactly a frame of this module under this
key -- a bad MAC, a truncated or padded frame, an unknown kind, a body that does not decode --
raises ``FrameError`` (a ``ValueError``) and nothing else; the caller drops the datagram and
counts it (``FrameError.reason`` is the metric's label).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from colony.protocols.sip.transaction import Destination

from colony_sipfarm.entrusted_branches import FORGOTTEN_PER_FRAME
from colony_sipfarm.farm import Outbound
from colony_sipfarm.spread_frames import MAX_LINE, FrameError, SpreadAnswers, SpreadPacket, _fields, _port

MAGIC = b"CIR1"
MAC_SIZE = 16
# The largest UDP payload over IPv4 (65,535 less the IP and UDP headers): a larger frame
# cannot go as one datagram, and the caller hands the packet over the bus instead.
MAX_DATAGRAM = 65_507
PACKET, ANSWERS, ENTRUSTED = "P", "A", "E"
# The first line of an ``E`` body: FORGOTTEN_PER_FRAME branches of at most MAX_BRANCH characters.
MAX_BRANCH = 64
_MAX_FORGOTTEN_LINE = FORGOTTEN_PER_FRAME * (MAX_BRANCH + 1)
_KEY_LABEL = b"colony sip inner relay v1"
_NONE = b"-"


class InnerFrameError(FrameError):
    """A datagram on the inner listener that is not a frame of ours; ``reason`` names why
    (a metric label: a fixed, short set)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class RelayKey:
    """The inner relay's MAC key, derived from the farm's shared secret."""

    __slots__ = ("key", "_keyed")

    def __init__(self, key: bytes) -> None:
        self.key = key
        # The key's HMAC state, copied per frame: a third cheaper than keying HMAC afresh.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def from_secret(cls, secret: bytes) -> RelayKey:
        return cls(hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest())

    def mac(self, data: bytes) -> bytes:
        keyed = self._keyed.copy()
        keyed.update(data)
        return keyed.digest()[:MAC_SIZE]


@dataclass(frozen=True, slots=True)
class Entrusted:
    """The body of an ``E`` frame: branches the sender entrusted before that got their final
    answer, and one it entrusts now (``destination`` and ``invite``), if any."""

    forgotten: list[str]
    destination: Destination | None = None
    invite: bytes = b""

    def to_frame(self) -> bytes:
        if len(self.forgotten) > FORGOTTEN_PER_FRAME or any(len(b) > MAX_BRANCH for b in self.forgotten):
            raise ValueError("too many or too long branches to forget")
        head = _fields(*self.forgotten) if self.forgotten else _NONE
        if self.destination is None:
            return head + b"\n"
        transport, host, port = self.destination
        return b"".join((head, b"\n", _fields(transport, host, int(port)), b"\n", self.invite))

    @classmethod
    def from_frame(cls, body: bytes) -> Entrusted:
        end = body.find(b"\n", 0, _MAX_FORGOTTEN_LINE + 1)
        if end < 0:
            raise FrameError("no line of branches to forget")
        try:
            forgotten = body[:end].decode("ascii").split(" ")
        except UnicodeDecodeError:
            raise FrameError("branches not ASCII") from None
        if forgotten == ["-"]:
            forgotten = []
        if len(forgotten) > FORGOTTEN_PER_FRAME or not all(0 < len(b) <= MAX_BRANCH for b in forgotten):
            raise FrameError("bad branches to forget")
        rest = body[end + 1:]
        if not rest:
            return cls(forgotten)
        line = rest.find(b"\n", 0, MAX_LINE)
        if line < 0:
            raise FrameError("no destination line")
        try:
            fields = rest[:line].decode("ascii").split(" ")
        except UnicodeDecodeError:
            raise FrameError("destination not ASCII") from None
        if len(fields) != 3 or not all(fields):
            raise FrameError(f"{len(fields)} destination fields, not 3")
        return cls(forgotten, (fields[0], fields[1], _port(fields[2])), rest[line + 1:])


@dataclass(slots=True)       # not frozen: its __init__ then costs a setattr per field less
class InnerFrame:
    """A frame that passed its MAC: exactly one of ``packet``, ``answers`` and ``entrusted`` is set."""

    to: str
    sender: str
    reply_to: tuple[str, int]
    traceparent: str | None
    packet: SpreadPacket | None = None
    answers: list[Outbound] | None = None
    entrusted: Entrusted | None = None


@lru_cache(maxsize=1024)      # a member sends to a few others, always the same line but the trace
def _prefix(kind: str, to: str, sender: str, host: str, port: int) -> bytes:
    return b" ".join((MAGIC, kind.encode(), _fields(to, sender, host, int(port)), b""))


def _head(kind: str, to: str, sender: str, reply_to: tuple[str, int], traceparent: str | None) -> bytes:
    return b"".join((_prefix(kind, to, sender, reply_to[0], reply_to[1]),
                     _fields(traceparent) if traceparent else _NONE, b"\n"))


def seal_packet(key: RelayKey, packet: SpreadPacket, to: str, sender: str, reply_to: tuple[str, int],
                traceparent: str | None = None) -> bytes:
    """The datagram handing ``packet`` to member ``to``.  Raises ``ValueError`` for a field no
    frame can carry (as ``SpreadPacket.to_frame``); the caller checks the size against
    ``MAX_DATAGRAM``."""
    data = _head(PACKET, to, sender, reply_to, traceparent) + packet.to_frame()
    return data + key.mac(data)


def seal_answers(key: RelayKey, items: list[Outbound], to: str, sender: str, reply_to: tuple[str, int],
                 traceparent: str | None = None) -> tuple[list[bytes], int]:
    """The datagrams carrying ``items`` (in order) to member ``to``, each at most
    ``MAX_DATAGRAM`` bytes, and how many items were left out: one whose destination no frame
    can carry (a Contact maddr with a space, from a phone's packet), or too large for any
    datagram.  No items, no datagram."""
    head = _head(ANSWERS, to, sender, reply_to, traceparent)
    room = MAX_DATAGRAM - len(head) - MAC_SIZE
    frames: list[bytes] = []
    parts: list[bytes] = []
    size = left_out = 0
    for item in items:
        try:
            part = SpreadAnswers.to_frame([item])
        except ValueError:
            left_out += 1
            continue
        if len(part) > room:
            left_out += 1
            continue
        if size + len(part) > room:
            frames.append(_sealed(key, head, parts))
            parts, size = [], 0
        parts.append(part)
        size += len(part)
    if parts:
        frames.append(_sealed(key, head, parts))
    return frames, left_out


def seal_entrusted(key: RelayKey, entrusted: Entrusted, to: str, sender: str, reply_to: tuple[str, int]) -> bytes:
    """The datagram entrusting a branch to member ``to`` (and the branches it may forget).
    Raises ``ValueError`` for a field no frame can carry; the caller checks the size."""
    data = _head(ENTRUSTED, to, sender, reply_to, None) + entrusted.to_frame()
    return data + key.mac(data)


def _sealed(key: RelayKey, head: bytes, parts: list[bytes]) -> bytes:
    data = b"".join((head, *parts))
    return data + key.mac(data)


def open_frame(key: RelayKey, frame: bytes) -> InnerFrame:
    """The frame in ``frame``, checked against ``key``; ``InnerFrameError`` for anything else."""
    if len(frame) < len(MAGIC) + MAC_SIZE or not frame.startswith(MAGIC + b" "):
        raise InnerFrameError("foreign")     # not ours at all: a scan, a stray datagram
    data = frame[:-MAC_SIZE]
    if not hmac.compare_digest(key.mac(data), frame[-MAC_SIZE:]):
        raise InnerFrameError("bad mac")
    # Past the MAC the frame was made by a member: still decoded without trust (a member of
    # another version, a bug), but a failure here is a bug or a version skew, not an attack.
    end = data.find(b"\n", 0, MAX_LINE)
    if end < 0:
        raise InnerFrameError("undecodable", "no metadata line")
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise InnerFrameError("undecodable", "metadata not ASCII") from None
    if len(fields) != 7 or not all(fields):
        raise InnerFrameError("undecodable", f"{len(fields)} fields, not 7")
    _, kind, to, sender, host, port, traceparent = fields
    body = data[end + 1:]
    try:
        reply_to = (host, _port(port))
        trace = None if traceparent == "-" else traceparent
        if kind == PACKET:
            return InnerFrame(to, sender, reply_to, trace, SpreadPacket.from_frame(body), None)
        if kind == ANSWERS:
            return InnerFrame(to, sender, reply_to, trace, None, SpreadAnswers.from_frame(body))
        if kind == ENTRUSTED:
            return InnerFrame(to, sender, reply_to, trace, entrusted=Entrusted.from_frame(body))
    except InnerFrameError:
        raise
    except FrameError as exc:
        raise InnerFrameError("undecodable", str(exc)) from None
    raise InnerFrameError("undecodable", f"kind {kind[:8]!r}")
