"""STARTTLS / STLS at the edge over real sockets on 127.0.0.1: what a client (or a man in
the middle) sends in the clear behind the command is never read as part of the encrypted
session (RFC 9051 §6.2.1, RFC 2595 §4, CVE-2011-0411), however much of it there is, and a
handshake that fails ends the session quietly rather than as a handler failure."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from colony.settings import Settings
from colony_edge.access_proxy import AccessProxy, LoginThrottle

from test_access_splice import _Store
from test_access_store_refusals import _Auth, _Finder, _Gate, _listen, _Metrics, _Tracker


@contextlib.asynccontextmanager
async def _edge(store: _Store, server_tls, proto: str):
    settings = Settings(access_plaintext_auth=False)
    handlers: list[asyncio.Task] = []
    async with _listen(store.handle) as store_addr:
        proxy = AccessProxy(settings, b"s" * 32, _Auth(), _Finder(store_addr), LoginThrottle(settings, None, _Gate()),
                            _Gate(), server_tls, _Tracker(), _Metrics(), "edge.test")

        async def serve(reader, writer):
            handlers.append(asyncio.current_task())
            try:
                await getattr(proxy, proto)(reader, writer, False)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1], handlers
        finally:
            server.close()


async def _lines_until(reader: asyncio.StreamReader, end: bytes) -> list[bytes]:
    lines = []
    while not (lines and lines[-1].startswith(end)):
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line, f"connection closed; got {lines}"
        lines.append(line)
    return lines


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_what_was_sent_in_the_clear_behind_starttls_is_dropped(loopback_tls, proto):
    server_tls, client_tls = loopback_tls
    store = _Store()
    if proto == "imap":
        command, injected = b"a STARTTLS\r\n", b"x" * 6000 + b"\r\nb LOGIN alice@acme.example secret\r\n"
        after, end = b"c CAPABILITY\r\n", b"c "
    else:
        command, injected = b"STLS\r\n", b"NOOP\r\n" * 1500 + b"USER alice@acme.example\r\nPASS secret\r\n"
        after, end = b"CAPA\r\n", b"."
    async with _edge(store, server_tls, proto) as (port, handlers):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(reader.readline(), 10)
        # One write: the injected octets reach the edge with the command, beyond its first read.
        writer.write(command + injected)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith((b"a OK", b"+OK"))
        await writer.start_tls(client_tls, server_hostname="localhost")
        writer.write(after)
        lines = await _lines_until(reader, end)
        assert lines[0].startswith((b"* CAPABILITY", b"+OK Capability")), lines
        assert not any(b"BAD" in line or b"-ERR" in line or line.startswith(b"b ") for line in lines), lines
        assert store.writer is None           # nobody was logged in by the injected LOGIN / PASS
        writer.close()


@pytest.mark.parametrize("proto", ["imap", "pop3"])
async def test_a_failed_handshake_ends_the_session_without_a_handler_failure(loopback_tls, proto):
    server_tls, _ = loopback_tls
    async with _edge(_Store(), server_tls, proto) as (port, handlers):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(reader.readline(), 10)
        writer.write(b"a STARTTLS\r\n" if proto == "imap" else b"STLS\r\n")
        await asyncio.wait_for(reader.readline(), 10)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")         # not a ClientHello
        assert await asyncio.wait_for(reader.read(), 10) == b""
        done, _ = await asyncio.wait(handlers, timeout=10)
        assert done and all(task.exception() is None for task in done)
        writer.close()
