"""The frames of a new transaction handed to the member its Call-ID hashes to.

Theory of operation
-------------------
A member that receives a packet starting new work asks its owner over
``colony.sip.spread.<owner>`` (request/reply, ``workload.SipWorkload._ask_owner``); the owner
handles it as if it had arrived there and answers with what to send, which the asking member
sends itself, from the address the phone talked to.  Both frames are binary: the SIP bytes
travel as they are, behind one short line of metadata, because the previous JSON + base64
payloads (``colony.sip.handle``) cost as much CPU per relayed packet as a good part of its SIP
work (encoding, decoding and the copies of every packet on both members).

Request (``SpreadPacket``)::

    <transport> <host> <port> <member it arrived at> <that member's SIP host> <its SIP port>\\n<SIP bytes>

Reply (``SpreadAnswers``): zero or more items, one after the other, each::

    <length of its SIP bytes> <transport> <host> <port> <member token, or "-" for the member that asked>\\n<SIP bytes>

A datagram that arrived over UDP is handed over as a datagram instead, member to member, with
the same ``SpreadPacket`` and ``SpreadAnswers`` frames as its body (``inner_frames``).

Fields are ASCII tokens without spaces (transports, IP addresses and host names, decimal
ports, node ids and their bus tokens); encoding refuses a field that is not one.  Decoding
takes bytes from the bus and trusts nothing: anything that is not exactly such a frame raises
``FrameError`` (a ``ValueError``), never another exception, and the caller drops the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from colony.protocols.sip.transaction import Destination

from colony_sipfarm.farm import Outbound

# A metadata line is a few addresses and names: a longer one is not ours (and is not looked
# for past this, so a frame of garbage costs a bounded search).
MAX_LINE = 1024
_NO_MEMBER = b"-"


class FrameError(ValueError):
    """Bytes from the bus that are not a frame of this module."""


def _field(value: str | int) -> bytes:
    raw = str(value).encode("ascii")     # UnicodeEncodeError is a ValueError too
    if not raw or b" " in raw or b"\n" in raw or b"\r" in raw or raw == _NO_MEMBER:
        raise ValueError(f"not a frame field: {value!r}")
    return raw


def _fields(*values: str | int) -> bytes:
    """``values`` as one line of fields joined by single spaces, each checked as ``_field``
    checks one -- in one pass over the joined line (per field, the checks were a good part of
    a hand-over's framing: every relayed packet is framed twice)."""
    raw = " ".join([str(value) for value in values]).encode("ascii")
    if (not raw or raw.count(b" ") != len(values) - 1 or b"\n" in raw or b"\r" in raw or b"  " in raw
            or raw[0] == 32 or raw[-1] == 32 or b" - " in b" " + raw + b" "):
        for value in values:
            _field(value)      # says which field
        raise ValueError(f"not frame fields: {values!r}")
    return raw


def _line(frame: bytes, start: int) -> tuple[list[str], int]:
    """The space-separated fields of the line starting at ``start``, and where its data begins."""
    end = frame.find(b"\n", start, start + MAX_LINE)
    if end < 0:
        raise FrameError("no metadata line")
    try:
        return frame[start:end].decode("ascii").split(" "), end + 1
    except UnicodeDecodeError as exc:
        raise FrameError("metadata not ASCII") from exc


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5:   # isdigit: no sign, no spaces, no underscores
        raise FrameError(f"bad port {text[:20]!r}")
    port = int(text)
    if port > 65535:
        raise FrameError(f"bad port {port}")
    return port


def _text(field: str) -> str:
    if not field:
        raise FrameError("empty field")
    return field


@dataclass(frozen=True, slots=True)
class SpreadPacket:
    """A packet that arrived at member ``arrived_at`` (its SIP address ``address``) from ``source``."""

    data: bytes
    source: Destination
    arrived_at: str
    address: tuple[str, int]

    def to_frame(self) -> bytes:
        transport, host, port = self.source
        return b"".join((_fields(transport, host, int(port), self.arrived_at, self.address[0], int(self.address[1])),
                         b"\n", self.data))

    @classmethod
    def from_frame(cls, frame: bytes) -> SpreadPacket:
        fields, start = _line(frame, 0)
        if len(fields) != 6:
            raise FrameError(f"{len(fields)} fields, not 6")
        if not all(fields):
            raise FrameError("empty field")
        transport, host, port, member, farm_host, farm_port = fields
        return cls(frame[start:], (transport, host, _port(port)), member, (farm_host, _port(farm_port)))


class SpreadAnswers:
    """The owner's answer: what the asking member sends (``Outbound``, in order)."""

    @staticmethod
    def to_frame(items: list[Outbound]) -> bytes:
        parts: list[bytes] = []
        for item in items:
            transport, host, port = item.destination
            if item.member is None:
                parts.append(_fields(len(item.data), transport, host, int(port)))
                parts.append(b" -\n")
            else:
                parts.append(_fields(len(item.data), transport, host, int(port), item.member))
                parts.append(b"\n")
            parts.append(item.data)
        return b"".join(parts)

    @staticmethod
    def from_frame(frame: bytes) -> list[Outbound]:
        items: list[Outbound] = []
        position, size = 0, len(frame)
        while position < size:
            fields, start = _line(frame, position)
            if len(fields) != 5:
                raise FrameError(f"{len(fields)} fields, not 5")
            length, transport, host, port, member = fields
            if not length.isdigit() or len(length) > 9:
                raise FrameError(f"bad length {length[:20]!r}")
            position = start + int(length)
            if position > size:
                raise FrameError("an item longer than the frame")
            items.append(Outbound(frame[start:position], (_text(transport), _text(host), _port(port)),
                                  None if member == "-" else _text(member)))
        return items
