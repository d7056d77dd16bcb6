"""A TLS listener built on ``colony.tlsfiles.server_context`` that refuses a handshake says
why, with the fatal alert RFC 5246 §7.2.2 / RFC 8446 §6.2 ask for, before it closes: a client
offering only TLS 1.1 gets ``protocol_version``, one offering only CBC suites gets
``handshake_failure``, on implicit TLS and after STARTTLS alike (real sockets on 127.0.0.1
through asyncio's SSL protocol, as every listener is served).  Without the alert a client saw
a bare end of stream, and scanners could not tell the port speaks TLS at all."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import pytest

ALERT, FATAL = 21, 2
PROTOCOL_VERSION = 70   # RFC 5246 §7.2 AlertDescription


def old_client_hello(version: bytes = b"\x03\x02") -> bytes:
    """A TLS 1.1 (default) ClientHello as an old client or a scanner's probe sends it: RSA and
    ECDHE CBC suites, no extensions."""
    suites = [0x002F, 0x0035, 0xC013, 0xC014]
    body = (version + os.urandom(32) + b"\x00" + (2 * len(suites)).to_bytes(2, "big")
            + b"".join(s.to_bytes(2, "big") for s in suites) + b"\x01\x00")
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


async def _serve(server_ctx, mode: str):
    """An echo server over TLS: from the first octet (``implicit``), or after the client's
    ``STARTTLS`` line (asyncio's ``start_tls``, as the edge's STARTTLS/STLS does)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            if mode == "starttls":
                await reader.readline()
                writer.write(b"go ahead\r\n")
                await writer.drain()
                await writer.start_tls(server_ctx)
            writer.write(await reader.readline())
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):   # ssl.SSLError is an OSError
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx if mode == "implicit" else None)
    return server, server.sockets[0].getsockname()[1]


def _plain_prelude(sock: socket.socket, mode: str) -> None:
    if mode == "starttls":
        sock.sendall(b"STARTTLS\r\n")
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = sock.recv(100)
            assert chunk, "closed before the go-ahead"
            line += chunk


def _raw_answer(port: int, mode: str, hello: bytes) -> bytes:
    """Everything the server sends back to ``hello`` until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        _plain_prelude(sock, mode)
        sock.sendall(hello)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


def _tls_client(port: int, mode: str, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        _plain_prelude(sock, mode)
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"still here\r\n")
            return tls.recv(100)


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_a_tls11_hello_gets_a_protocol_version_alert(loopback_tls, mode):
    server_ctx, _ = loopback_tls
    server, port = await _serve(server_ctx, mode)
    try:
        answer = await asyncio.wait_for(asyncio.to_thread(_raw_answer, port, mode, old_client_hello()), 30)
    finally:
        server.close()
        await server.wait_closed()
    assert answer, "the server closed without an alert"
    assert answer[0] == ALERT and answer[5:7] == bytes([FATAL, PROTOCOL_VERSION]), answer.hex()


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_a_client_offering_only_cbc_suites_hears_handshake_failure_and_others_carry_on(loopback_tls, mode):
    server_ctx, client_ctx = loopback_tls
    server, port = await _serve(server_ctx, mode)
    cbc_only = ssl.create_default_context()
    cbc_only.check_hostname, cbc_only.verify_mode = False, ssl.CERT_NONE
    cbc_only.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc_only.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
    try:
        with pytest.raises(ssl.SSLError) as refused:
            await asyncio.wait_for(asyncio.to_thread(_tls_client, port, mode, cbc_only), 30)
        # the listener still serves a client it can agree with
        echoed = await asyncio.wait_for(asyncio.to_thread(_tls_client, port, mode, client_ctx), 30)
    finally:
        server.close()
        await server.wait_closed()
    assert "ALERT_HANDSHAKE_FAILURE" in str(refused.value), refused.value   # not an EOF
    assert echoed == b"still here\r\n"
