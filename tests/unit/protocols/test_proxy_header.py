"""The PROXY protocol header reader: v1 and v2 headers as haproxy writes them, every way a
header can be malformed, and the rule the listeners depend on -- the reader never takes a
byte of what follows the header (a TLS ClientHello, SMTP's first command)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colony.protocols.proxy_header import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    HeaderReader,
    ProxyHeader,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    parse,
)

CLIENT, BALANCER = ("203.0.113.7", 51234), ("192.0.2.10", 25)


def read_bytewise(data: bytes) -> tuple[ProxyHeader, int]:
    """Feed one byte at a time, as a peer that trickles would; returns the header and the
    octets taken."""
    reader, taken = HeaderReader(), 0
    for i in range(len(data)):
        taken += reader.feed(data[i:i + 1])
        if reader.done:
            break
    assert reader.header is not None
    return reader.header, taken


# --- v1 ---------------------------------------------------------------------------------

def test_v1_tcp4_as_haproxy_sends_it():
    data = b"PROXY TCP4 203.0.113.7 192.0.2.10 51234 25\r\nEHLO client\r\n"
    header = parse(data)
    assert header == ProxyHeader(1, CLIENT, BALANCER, data.index(b"EHLO"))


def test_v1_tcp6():
    header = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 993\r\n")
    assert header.source == ("2001:db8::7", 4000) and header.destination == ("2001:db8::1", 993)


def test_v1_unknown_keeps_the_real_endpoints_and_ignores_the_rest_of_its_line():
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, None, None, 15)
    line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse(line + b"x").length == len(line)


def test_v1_in_pieces_takes_exactly_the_line():
    data = encode_v1(CLIENT, BALANCER) + b"\x16\x03\x01 a ClientHello"
    header, taken = read_bytewise(data)
    assert header.source == CLIENT and taken == len(encode_v1(CLIENT, BALANCER))


def test_v1_feed_returns_only_the_header_octets_of_a_chunk():
    reader = HeaderReader()
    line = encode_v1(CLIENT, BALANCER)
    assert reader.feed(line[:10]) == 10 and not reader.done
    assert reader.feed(line[10:] + b"QUIT\r\n") == len(line) - 10 and reader.done
    assert reader.feed(b"more") == 0


@pytest.mark.parametrize("data, why", [
    (b"EHLO client.example\r\n", "signature"),
    (b"\x16\x03\x01\x02\x00", "signature"),        # a TLS ClientHello where a header was due
    (b"PROXY\r\n", "signature"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "signature"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +25 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "non-ASCII"),   # an Arabic-Indic digit
])
def test_v1_malformed_lines_are_refused(data, why):
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


def test_v1_line_longer_than_107_octets_is_refused_without_waiting_for_its_end():
    reader = HeaderReader()
    with pytest.raises(ProxyHeaderError, match="107"):
        reader.feed(b"PROXY UNKNOWN " + b"x" * 200)
    # 107 octets including the CRLF is still a header.
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 16) + b"\r\n"
    assert len(line) == MAX_V1_LENGTH and parse(line).length == MAX_V1_LENGTH


# --- v2 ---------------------------------------------------------------------------------

def test_v2_inet_as_haproxy_sends_it():
    data = encode_v2(CLIENT, BALANCER)
    assert len(data) == 16 + 12
    assert parse(data + b"220 ") == ProxyHeader(2, CLIENT, BALANCER, 28)


def test_v2_inet6():
    header = parse(encode_v2(("2001:db8::7", 1), ("2001:db8::1", 5061)))
    assert header.source == ("2001:db8::7", 1) and header.length == 16 + 36


def test_v2_tlvs_are_skipped():
    data = encode_v2(CLIENT, BALANCER, tlvs=((0x01, b"smtp"), (0x05, b"id-1234"), (0xEE, b"")))
    header, taken = read_bytewise(data + b"\x16\x03")
    assert header.source == CLIENT and taken == len(data)


def test_v2_local_keeps_the_real_endpoints_whatever_its_family_says():
    assert parse(encode_v2(None, local=True)) == ProxyHeader(2, None, None, 16)
    # LOCAL with an INET family and an address block: the block is ignored.
    header = encode_v2(CLIENT, BALANCER)
    local = header[:12] + b"\x20" + header[13:]
    assert parse(local).source is None


@pytest.mark.parametrize("fam", [0x00, 0x01, 0x02, 0x12, 0x31, 0x32])
def test_v2_proxy_without_a_tcp_address_keeps_the_real_endpoints(fam):
    block = b"\x00" * {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}[fam >> 4]
    data = V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(block)) + block
    assert parse(data) == ProxyHeader(2, None, None, len(data))


def v2(ver_cmd: int = 0x21, fam: int = 0x11, body: bytes = b"\x00" * 12, length: int | None = None) -> bytes:
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", len(body) if length is None else length) + body


@pytest.mark.parametrize("data, why", [
    (v2(ver_cmd=0x11), "version 1"),
    (v2(ver_cmd=0x31), "version 3"),
    (v2(ver_cmd=0x22), "command"),
    (v2(ver_cmd=0x2F), "command"),
    (v2(fam=0x41), "family"),
    (v2(fam=0x13), "family"),
    (v2(fam=0x11, body=b"\x00" * 11), "needs 12"),
    (v2(fam=0x21, body=b"\x00" * 12), "needs 36"),
    (v2(body=b"\x00" * 12 + b"\x01\x00"), "TLV cut short"),
    (v2(body=b"\x00" * 12 + b"\x01\x00\x05abcd"), "TLV longer"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "signature"),
])
def test_v2_malformed_headers_are_refused(data, why):
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


def test_v2_length_is_bounded_before_the_block_is_read():
    reader = HeaderReader()
    with pytest.raises(ProxyHeaderError, match=str(MAX_V2_LENGTH)):
        reader.feed(v2(body=b"", length=MAX_V2_LENGTH + 1))
    assert parse(v2(body=b"\x00" * 12 + b"\x01" + struct.pack("!H", MAX_V2_LENGTH - 15) + b"x" * (MAX_V2_LENGTH - 15)))


def test_wanted_never_asks_past_a_v2_header():
    reader = HeaderReader()
    data = encode_v2(CLIENT, BALANCER)
    assert reader.wanted() == 16
    reader.feed(data[:16])
    assert reader.wanted() == 12
    reader.feed(data[16:])
    assert reader.done and reader.wanted() == 0


# --- fuzz -------------------------------------------------------------------------------

addresses4 = st.builds(lambda n, p: (str(ipaddress.IPv4Address(n)), p), st.integers(0, 2**32 - 1), st.integers(0, 65535))
addresses6 = st.builds(lambda n, p: (str(ipaddress.IPv6Address(n)), p), st.integers(0, 2**128 - 1), st.integers(0, 65535))
pairs = st.one_of(st.tuples(addresses4, addresses4), st.tuples(addresses6, addresses6))
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5).map(tuple)


@settings(max_examples=300, deadline=None)
@given(pair=pairs, version=st.sampled_from([1, 2]), tlv=tlvs, rest=st.binary(max_size=64),
       cuts=st.lists(st.integers(1, 40), max_size=20))
def test_round_trip_in_any_pieces_takes_exactly_the_header(pair, version, tlv, rest, cuts):
    source, destination = pair
    header = encode_v1(source, destination) if version == 1 else encode_v2(source, destination, tlvs=tlv)
    data, reader, at = header + rest, HeaderReader(), 0
    for cut in [*cuts, len(header) + len(rest)]:
        taken = reader.feed(data[at:at + cut])
        # Each feed takes a prefix of what it was given, never beyond the header.
        assert 0 <= taken <= cut and at + taken <= len(header)
        at += taken
        if reader.done:
            break
    assert reader.done and at == len(header)
    assert reader.header == ProxyHeader(version, source, destination, len(header))


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=200).map(lambda b: b"PROXY " + b),
                 st.binary(max_size=200).map(lambda b: V2_SIGNATURE + b)))
def test_any_bytes_give_a_header_a_need_for_more_or_a_proxy_header_error(data):
    reader = HeaderReader()
    try:
        taken = reader.feed(data)
    except ProxyHeaderError:
        return
    assert 0 <= taken <= len(data)
    if reader.done:
        assert reader.header.length == taken
    else:
        assert taken == len(data) and reader.wanted() > 0
