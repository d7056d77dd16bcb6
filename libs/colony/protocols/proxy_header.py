"""The PROXY protocol header (HAProxy's spec, versions 1 and 2): the client's address that a
layer-4 balancer puts before the application protocol's first byte.

Theory of operation
-------------------
A balancer in TCP mode hands the server a connection from itself; with ``send-proxy`` (v1,
one text line) or ``send-proxy-v2`` (binary) it first writes the address of the client it
accepted.  The server reads exactly that header, then the application protocol (SMTP's
greeting wait, a TLS ClientHello, a SIP request) begins with the very next byte.  So the
reader here is built around one rule: **it never takes a byte past the header.**

``HeaderReader.feed(data)`` is given the bytes available *from the current position* and
answers how many of them belong to the header; the caller removes exactly that many from its
source and leaves the rest.  A caller that can look without taking (``recv(MSG_PEEK)``)
peeks at most ``wanted()`` bytes, feeds them, and takes what ``feed`` answered; the next
peek starts after them.  Each byte fed is judged as it comes, so a client that is not a
balancer (``EHLO``, a ClientHello) is refused at its first byte that fits neither
signature, not after a timeout:

* v1 (``PROXY TCP4 192.0.2.1 198.51.100.2 5000 25\\r\\n``): the header is the first line; a
  byte is the header's while no LF was seen.  At most 107 octets with the CRLF (the spec's
  bound); ``TCP4``/``TCP6`` with addresses of that family and decimal ports, or ``UNKNOWN``
  with anything up to the CRLF (the balancer's own connection: use the real endpoints).
* v2: a 12-octet signature, a version/command octet (version 2; LOCAL or PROXY), a
  family/transport octet, a 16-bit length, and that many octets: the addresses, then TLVs.
  The length is bounded (``MAX_V2_LENGTH``) before anything is buffered, so memory is
  bounded by the header whatever a peer sends.  LOCAL (a health check) and PROXY with an
  UNSPEC or UNIX family carry no client address: the real endpoints stand.  TLVs are
  walked only to check that each fits in the block, and skipped.

Anything malformed raises ``ProxyHeaderError`` (and only that): the spec leaves a receiver
nothing to guess, so the connection is to be closed.  ``encode_v1``/``encode_v2`` write
headers (tests, and anything that must forward a client's address).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["MAX_V1_LENGTH", "MAX_V2_LENGTH", "V2_SIGNATURE", "HeaderReader", "ProxyHeader", "ProxyHeaderError",
           "encode_v1", "encode_v2", "parse"]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1_LENGTH = 107          # the whole line with its CRLF (spec §2.1)
# Addresses (at most 216 octets, AF_UNIX) plus TLVs: haproxy's own (ALPN, authority, SSL
# details, unique id) fit in a few hundred; a length beyond this is refused before any of
# it is read.
MAX_V2_LENGTH = 4096

_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESS_LENGTH = {_INET: 12, _INET6: 36, _UNIX: 216}

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are no valid PROXY header; the message says what is wrong."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header said: ``source`` is the client, ``destination`` the address it reached
    on the balancer; both None when the real endpoints stand (v1 UNKNOWN, v2 LOCAL, a v2
    family without IP addresses).  ``length`` is the header's size on the wire."""

    version: int
    source: Address | None
    destination: Address | None
    length: int


class HeaderReader:
    """Takes a PROXY header from the front of a stream, never a byte more (see module doc)."""

    def __init__(self, max_v2_length: int = MAX_V2_LENGTH) -> None:
        self._buf = bytearray()
        self._max_v2 = max_v2_length
        self._version = 0            # 0 while the first bytes match both signatures' fronts
        self._needed = 0             # v2: the whole header's size, once its length field came
        self.header: ProxyHeader | None = None

    @property
    def done(self) -> bool:
        return self.header is not None

    @property
    def untouched(self) -> bool:
        """Nothing was fed yet (a connection closed now sent no byte at all)."""
        return not self._buf

    def wanted(self) -> int:
        """How many bytes a caller may usefully peek at now (some may not be the header's)."""
        if self.done:
            return 0
        if self._version == 1:
            return MAX_V1_LENGTH - len(self._buf)
        if self._version == 2 and self._needed:
            return self._needed - len(self._buf)
        return 16 - len(self._buf)

    def feed(self, data: bytes) -> int:
        """Judge ``data`` (what follows the bytes already taken); return how many of its
        first bytes are the header's.  Sets ``header`` when they complete it."""
        if self.done:
            return 0
        taken = 0
        view = memoryview(data)
        while taken < len(view) and not self.done:
            if self._version == 0:
                taken += self._signature(view[taken:])
            elif self._version == 1:
                taken += self._v1(view[taken:])
            else:
                taken += self._v2(view[taken:])
        return taken

    def _signature(self, data: memoryview) -> int:
        """One byte at a time until it tells v1 from v2 (or neither)."""
        byte = data[0:1].tobytes()
        at = len(self._buf)
        if at < len(V1_PREFIX) and V1_PREFIX[at:at + 1] == byte and (at == 0 or self._buf[0:1] == b"P"):
            self._buf += byte
            if len(self._buf) == len(V1_PREFIX):
                self._version = 1
            return 1
        if V2_SIGNATURE[at:at + 1] == byte and (at == 0 or self._buf[0:1] == b"\r"):
            self._buf += byte
            if len(self._buf) == len(V2_SIGNATURE):
                self._version = 2
            return 1
        raise ProxyHeaderError("no PROXY protocol signature (v1 'PROXY ' or the v2 binary signature) "
                               "at the start of the connection")

    def _v1(self, data: memoryview) -> int:
        room = MAX_V1_LENGTH - len(self._buf)
        chunk = data[:room].tobytes()
        end = chunk.find(b"\n")
        if end < 0:
            if len(chunk) == room:
                raise ProxyHeaderError(f"PROXY v1 line longer than {MAX_V1_LENGTH} octets")
            self._buf += chunk
            return len(chunk)
        self._buf += chunk[:end + 1]
        self.header = _parse_v1(bytes(self._buf))
        return end + 1

    def _v2(self, data: memoryview) -> int:
        if not self._needed:
            chunk = data[:16 - len(self._buf)].tobytes()
            self._buf += chunk
            if len(self._buf) < 16:
                return len(chunk)
            version, command = self._buf[12] >> 4, self._buf[12] & 0xF
            if version != 2:
                raise ProxyHeaderError(f"PROXY v2 header with version {version}")
            if command not in (_LOCAL, _PROXY):
                raise ProxyHeaderError(f"PROXY v2 header with unknown command {command:#x}")
            family, transport = self._buf[13] >> 4, self._buf[13] & 0xF
            if family > _UNIX or transport > 0x2:
                raise ProxyHeaderError(f"PROXY v2 header with unknown family/transport {self._buf[13]:#04x}")
            (length,) = struct.unpack_from("!H", self._buf, 14)
            if length > self._max_v2:
                raise ProxyHeaderError(f"PROXY v2 header of {length} octets after its first 16; "
                                       f"at most {self._max_v2} are accepted")
            self._needed = 16 + length
            if length == 0:
                self.header = _parse_v2(bytes(self._buf))
            return len(chunk)
        chunk = data[:self._needed - len(self._buf)].tobytes()
        self._buf += chunk
        if len(self._buf) == self._needed:
            self.header = _parse_v2(bytes(self._buf))
        return len(chunk)


def parse(data: bytes, max_v2_length: int = MAX_V2_LENGTH) -> ProxyHeader | None:
    """The header at the front of ``data`` (``header.length`` octets), or None while
    ``data`` holds only its beginning."""
    reader = HeaderReader(max_v2_length)
    reader.feed(data)
    return reader.header


def _parse_v1(line: bytes) -> ProxyHeader:
    if not line.endswith(b"\r\n"):
        raise ProxyHeaderError("PROXY v1 line not ended by CRLF")
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line with non-ASCII octets") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # The spec: the receiver ignores whatever follows UNKNOWN and uses the real endpoints.
        return ProxyHeader(1, None, None, len(line))
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport' "
                               f"nor 'PROXY UNKNOWN': {text[:60]!r}")
    kind = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    source = (_v1_address(parts[2], kind), _v1_port(parts[4]))
    destination = (_v1_address(parts[3], kind), _v1_port(parts[5]))
    return ProxyHeader(1, source, destination, len(line))


def _v1_address(text: str, kind) -> str:
    try:
        if "%" in text:     # a zone is meaningless across machines
            raise ValueError
        return str(kind(text))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address {text[:45]!r} is not an {'IPv4' if kind is ipaddress.IPv4Address else 'IPv6'} address") from None


def _v1_port(text: str) -> int:
    # Decimal digits only (int() would take "+25", " 25", "2_5"), no leading zero, <= 65535.
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or (len(text) > 1 and text[0] == "0") \
            or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {text[:8]!r} is not a decimal number from 0 to 65535")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader:
    command, family, transport = data[12] & 0xF, data[13] >> 4, data[13] & 0xF
    block = data[16:]
    if command == _LOCAL:
        # The balancer's own connection (a health check): the spec has the receiver ignore
        # the family and the whole block.
        return ProxyHeader(2, None, None, len(data))
    needed = _ADDRESS_LENGTH.get(family, 0)
    if len(block) < needed:
        raise ProxyHeaderError(f"PROXY v2 address block of {len(block)} octets; this family needs {needed}")
    _check_tlvs(block[needed:])
    if family == _INET and transport == _STREAM:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        return ProxyHeader(2, (str(ipaddress.IPv4Address(src)), sport), (str(ipaddress.IPv4Address(dst)), dport),
                           len(data))
    if family == _INET6 and transport == _STREAM:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        return ProxyHeader(2, (str(ipaddress.IPv6Address(src)), sport), (str(ipaddress.IPv6Address(dst)), dport),
                           len(data))
    # UNSPEC, UNIX, or datagrams on a stream listener: no client address to use.
    return ProxyHeader(2, None, None, len(data))


def _check_tlvs(tlvs: bytes) -> None:
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyHeaderError("PROXY v2 TLV cut short (fewer than 3 octets left for type and length)")
        (length,) = struct.unpack_from("!H", tlvs, at + 1)
        at += 3 + length
        if at > len(tlvs):
            raise ProxyHeaderError("PROXY v2 TLV longer than the header's remaining octets")


def encode_v1(source: Address | None, destination: Address | None = None) -> bytes:
    """``PROXY TCP4|TCP6 ...`` for a source, ``PROXY UNKNOWN`` for None."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    if destination is None:
        raise ValueError("a v1 header with a source needs a destination")
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination of different families")
    kind = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {kind} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: Address | None, destination: Address | None = None, *, local: bool = False,
              tlvs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """A v2 header: LOCAL when ``local``, PROXY over TCP otherwise (UNSPEC when no source)."""
    if local or source is None:
        fam, addresses = _UNSPEC << 4, b""
    else:
        if destination is None:
            raise ValueError("a v2 header with a source needs a destination")
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        if src.version != dst.version:
            raise ValueError("source and destination of different families")
        fam = ((_INET if src.version == 4 else _INET6) << 4) | _STREAM
        addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body = addresses + b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    return V2_SIGNATURE + bytes([0x20 | (_LOCAL if local else _PROXY), fam]) + struct.pack("!H", len(body)) + body
