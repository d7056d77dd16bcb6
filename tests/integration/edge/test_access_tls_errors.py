"""A TLS error after the handshake -- a corrupt record, a renegotiation refused, what TLS
scanners (sslyze, testssl.sh) send on purpose -- ends an IMAP or POP3 session at the edge
quietly, as a client gone: not as a handler failure logged with a traceback, once per probe."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import pytest

from test_access_splice import _Store
from test_access_starttls import _edge


def _tls_then_corrupt_record(port: int, proto: str, context: ssl.SSLContext) -> bytes:
    """STARTTLS, a real handshake, then an application-data record no key made; what the
    edge sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        def line() -> bytes:
            got = b""
            while not got.endswith(b"\r\n"):
                chunk = sock.recv(1)
                assert chunk, f"closed after {got!r}"
                got += chunk
            return got
        line()                                                   # the greeting
        sock.sendall(b"a STARTTLS\r\n" if proto == "imap" else b"STLS\r\n")
        assert line().startswith((b"a OK", b"+OK"))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        sock.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))   # fails the record's AEAD tag
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_a_corrupt_record_after_the_handshake_ends_the_session_quietly(loopback_tls, proto):
    server_tls, client_tls = loopback_tls
    async with _edge(_Store(), server_tls, proto) as (port, handlers):
        await asyncio.wait_for(asyncio.to_thread(_tls_then_corrupt_record, port, proto, client_tls), 30)
        done, _ = await asyncio.wait(handlers, timeout=10)
        assert done and all(task.exception() is None for task in done), [t.exception() for t in done]
