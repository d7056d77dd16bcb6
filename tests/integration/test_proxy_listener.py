"""``colony.proxy_listener`` on real loopback sockets: a connection from a trusted balancer
is its header's client, with the bytes after the header (plain text, a TLS ClientHello)
intact; one from elsewhere is served as without a balancer; a trusted one without a valid
header in time is closed before its handler runs."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from colony.protocols.proxy_header import encode_v1, encode_v2
from colony.proxy_listener import Balancers, start_server

CLIENT = ("203.0.113.7", 40001)
FRONT = ("192.0.2.10", 25)
WAIT = 10.0


class Recorder:
    """A handler that answers with the peer it sees and the first line it reads."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.calls = 0
        self.tls = tls        # begin TLS in the handler, as the SIP farm does after counting the source

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.calls += 1
        if self.tls is not None:
            await writer.start_tls(self.tls)
        peer = writer.get_extra_info("peername")
        line = await reader.readline()
        writer.write(f"{peer[0]} {peer[1]} {len(peer)} ".encode() + line)
        await writer.drain()
        writer.close()


async def serve(handler, balancers: str = "127.0.0.1/32", **kw):
    server = await start_server(handler, "127.0.0.1", 0, balancers=Balancers.parse(balancers), **kw)
    return server, server.sockets[0].getsockname()[1]


async def exchange(port: int, *chunks: bytes, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return b"<reset>"   # closed with what the client sent unread
    finally:
        writer.close()


async def test_v1_and_v2_headers_make_the_client_the_peer_and_leave_what_follows():
    handler = Recorder()
    server, port = await serve(handler)
    try:
        assert await exchange(port, encode_v1(CLIENT, FRONT) + b"EHLO a\r\n") == b"203.0.113.7 40001 2 EHLO a\r\n"
        assert await exchange(port, encode_v2(CLIENT, FRONT) + b"EHLO b\r\n") == b"203.0.113.7 40001 2 EHLO b\r\n"
        six = encode_v2(("2001:db8::7", 5), ("2001:db8::1", 25), tlvs=((0x01, b"smtp"),))
        assert await exchange(port, six + b"EHLO c\r\n") == b"2001:db8::7 5 4 EHLO c\r\n"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_header_trickled_a_byte_at_a_time_is_read_exactly():
    handler = Recorder()
    server, port = await serve(handler)
    try:
        header = encode_v1(CLIENT, FRONT)
        pieces = [header[i:i + 1] for i in range(len(header))] + [b"NOOP\r\n"]
        assert await exchange(port, *pieces) == b"203.0.113.7 40001 2 NOOP\r\n"
    finally:
        server.close()


async def test_local_and_unknown_keep_the_real_peer():
    handler = Recorder()
    server, port = await serve(handler)
    try:
        assert (await exchange(port, encode_v2(None, local=True) + b"x\r\n")).startswith(b"127.0.0.1 ")
        assert (await exchange(port, b"PROXY UNKNOWN\r\ny\r\n")).startswith(b"127.0.0.1 ")
    finally:
        server.close()


async def test_from_an_untrusted_source_a_header_is_just_data():
    handler = Recorder()
    server, port = await serve(handler, balancers="127.0.0.2/32")
    try:
        answer = await exchange(port, encode_v1(CLIENT, FRONT), source="127.0.0.1")
        assert answer.startswith(b"127.0.0.1 ") and answer.endswith(b"PROXY TCP4 203.0.113.7 192.0.2.10 40001 25\r\n")
        # The listed balancer is believed.
        answer = await exchange(port, encode_v1(CLIENT, FRONT) + b"z\r\n", source="127.0.0.2")
        assert answer == b"203.0.113.7 40001 2 z\r\n"
    finally:
        server.close()


async def test_a_trusted_connection_without_a_valid_header_is_closed_unserved():
    handler, refusals = Recorder(), []
    server, port = await serve(handler, header_timeout=0.5, name="smtp",
                               refused=lambda name, reason: refusals.append((name, reason)))
    try:
        assert await exchange(port, b"EHLO client\r\n") in (b"", b"<reset>")
        assert await exchange(port, b"PROXY TCP4 203.0.113.7 192.0.2.10 40001 99999\r\nEHLO\r\n") in (b"", b"<reset>")
        assert await exchange(port, encode_v2(CLIENT, FRONT)[:20]) == b""    # cut short, then silence
        assert await exchange(port) == b""                                    # silence: closed at the timeout
        assert handler.calls == 0
        assert refusals == [("smtp", "malformed"), ("smtp", "malformed"), ("smtp", "timeout"), ("smtp", "timeout")]

        # A header cut short by the balancer closing is counted; a connection closed before
        # its first byte (a TCP health check) is not.
        for sent in (b"PROXY TCP4 203.0", b""):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
            writer.close()
        assert refusals[4:] == [("smtp", "closed")]
    finally:
        server.close()


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    import trustme

    from colony.tlsfiles import server_context

    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server_context(tmp / "cert.pem", tmp / "key.pem"), client


def tls_exchange(port: int, header: bytes, client: ssl.SSLContext, line: bytes) -> bytes:
    """The header and the TLS ClientHello in one segment (the hardest case for a server that
    must not read past the header), the handshake, ``line``, and all the answer."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        first = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            raw.sendall((header if first else b"") + outgoing.read())
            first = False
            incoming.write(raw.recv(65536) or b"")
        tls.write(line)
        raw.sendall(outgoing.read())
        out = b""
        while True:
            try:
                chunk = tls.read(4096)
            except ssl.SSLWantReadError:
                data = raw.recv(65536)
                if not data:
                    return out
                incoming.write(data)
                continue
            except ssl.SSLZeroReturnError:
                return out
            if not chunk:
                return out
            out += chunk


async def test_implicit_tls_after_the_header(tls_pair):
    server_tls, client_tls = tls_pair
    server, port = await serve(Recorder(), ssl=server_tls)
    try:
        answer = await asyncio.to_thread(tls_exchange, port, encode_v2(CLIENT, FRONT), client_tls, b"a001 NOOP\r\n")
        assert answer == b"203.0.113.7 40001 2 a001 NOOP\r\n"
    finally:
        server.close()


async def test_tls_begun_by_the_handler_after_the_header(tls_pair):
    # The SIP farm counts the source, then starts TLS itself: the ClientHello that came right
    # behind the header must still be there for it.
    server_tls, client_tls = tls_pair
    server, port = await serve(Recorder(tls=server_tls))
    try:
        for header in (encode_v1(CLIENT, FRONT), encode_v2(CLIENT, FRONT)):
            answer = await asyncio.to_thread(tls_exchange, port, header, client_tls, b"OPTIONS sip:x SIP/2.0\r\n")
            assert answer == b"203.0.113.7 40001 2 OPTIONS sip:x SIP/2.0\r\n"
    finally:
        server.close()


async def test_close_stops_accepting():
    server, port = await serve(Recorder())
    server.close()
    await asyncio.wait_for(server.wait_closed(), WAIT)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_without_balancers_it_is_asyncio_start_server():
    server = await start_server(Recorder(), "127.0.0.1", 0, balancers=Balancers.parse(""))
    try:
        assert isinstance(server, asyncio.Server)
    finally:
        server.close()
