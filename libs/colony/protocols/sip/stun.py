"""STUN Binding answers for RFC 5626 keep-alives over UDP, sans-IO.

Theory of operation
-------------------
A phone that registered with outbound (RFC 5626) over UDP keeps its flow -- its NAT binding
-- alive with STUN Binding requests (RFC 5389) sent to the SIP port it registered at, and
takes the flow for dead when they go unanswered (§4.4.2); an edge proxy must answer them on
its SIP UDP ports (§8).  A STUN message is told from SIP by its first two bits (zero, where a
SIP message starts with a letter) and the magic cookie (RFC 5389 §6; RFC 7983's
demultiplexing).  ``binding_response`` answers a Binding request with a success response
carrying XOR-MAPPED-ADDRESS, the address the request came from (§15.2) -- what the phone
compares to notice its NAT binding changed.  No authentication: RFC 5626 §8 has keep-alives
sent without credentials.  Anything else (a response, an indication, a request of another
method, a malformed header, a comprehension-required attribute we do not know, which
§7.3.1 would answer 420) gets no answer: the datagram is dropped as any garbage.  An answer
is 32 octets (44 for IPv6) to a request of at least 20: no amplifier worth a forger's while.
"""

from __future__ import annotations

import ipaddress
import struct

MAGIC_COOKIE = 0x2112A442
_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")
BINDING_REQUEST, BINDING_SUCCESS = 0x0001, 0x0101
XOR_MAPPED_ADDRESS = 0x0020
# Comprehension-required attributes (below 0x8000) a Binding request may carry that we can
# ignore in an answer without authentication (RFC 5389 §18.2).
_KNOWN_REQUIRED = frozenset({0x0001, 0x0006, 0x0008, 0x0014, 0x0015, 0x0020})
HEADER = 20


def is_stun(data: bytes) -> bool:
    """``data`` has a STUN header (RFC 5389 §6): first two bits zero, the magic cookie."""
    return len(data) >= HEADER and data[0] & 0xC0 == 0 and data[4:8] == _COOKIE


def binding_response(data: bytes, host: str, port: int) -> bytes | None:
    """The success response to a STUN Binding request ``data`` from ``host``:``port``, or
    None when ``data`` is not one we answer."""
    if not is_stun(data):
        return None
    kind, length = struct.unpack_from("!HH", data)
    if kind != BINDING_REQUEST or length != len(data) - HEADER or length % 4:
        return None
    offset = HEADER
    while offset < len(data):
        if offset + 4 > len(data):
            return None
        attribute, size = struct.unpack_from("!HH", data, offset)
        if attribute < 0x8000 and attribute not in _KNOWN_REQUIRED:
            return None
        offset += 4 + size + (-size % 4)
        if offset > len(data):
            return None
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    transaction = data[8:HEADER]
    if address.version == 4:
        family, xored = 0x01, (int(address) ^ MAGIC_COOKIE).to_bytes(4, "big")
    else:
        family, xored = 0x02, bytes(a ^ b for a, b in zip(address.packed, _COOKIE + transaction))
    value = struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored
    attribute = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    return struct.pack("!HH", BINDING_SUCCESS, len(attribute)) + _COOKIE + transaction + attribute
