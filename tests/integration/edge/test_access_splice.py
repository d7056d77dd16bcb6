"""After login the edge splices the client's connection to the store's (``_Splice``), over
real sockets on 127.0.0.1, client -> edge -> store: bytes either side had already sent go
first and in order, data far larger than any buffer arrives whole both ways (plain and
TLS), a client that does not read holds the store back rather than filling the edge's
memory, and whichever side closes closes the other and ends the edge's handler -- also when
the client's connection is lost while the store is taking the login."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
import warnings

import pytest

from cluster_harness import wait_until
from colony.settings import Settings
from colony_edge.access_proxy import AccessProxy, LoginThrottle

from test_access_store_refusals import _Auth, _Finder, _Gate, _listen, _Metrics, _Tracker

OK_LINE = b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
EARLY = b"* 3 EXISTS\r\n"          # sent by the store right behind its answer line


class _Store:
    """A stand-in mail store: takes the hand-off, answers OK and one untagged line at once,
    then echoes what it gets; ``BLOB n`` makes it send n octets instead."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.received = bytearray()
        self.writer: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()
        self.release = release      # answer the hand-off only once this is set

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            await reader.readuntil(b"\n")
            if self.release is not None:
                await self.release.wait()
            writer.write(OK_LINE + EARLY)
            while data := await reader.read(65536):
                self.received += data
                if data.startswith(b"BLOB "):
                    size = int(data.split()[1])
                    writer.write(_blob(size))
                else:
                    writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()


def _blob(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@contextlib.asynccontextmanager
async def _edge(store: _Store, server_tls: ssl.SSLContext | None = None):
    settings = Settings(access_plaintext_auth=True)
    handlers: list[asyncio.Task] = []
    readers: list[asyncio.StreamReader] = []
    async with _listen(store.handle) as store_addr:
        proxy = AccessProxy(settings, b"s" * 32, _Auth(), _Finder(store_addr), LoginThrottle(settings, None, _Gate()),
                            _Gate(), server_tls, _Tracker(), _Metrics(), "edge.test")

        async def serve(reader, writer):
            handlers.append(asyncio.current_task())
            readers.append(reader)
            try:
                await proxy.imap(reader, writer, server_tls is not None)
            finally:      # as the edge's listener does (colony.cluster.sessions)
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 5)

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
        try:
            yield server.sockets[0].getsockname()[1], handlers, readers
        finally:
            server.close()


async def _login(port: int, client_tls: ssl.SSLContext | None, pipelined: bytes = b""):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls,
                                                  server_hostname="localhost" if client_tls else None)
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"* OK")
    writer.write(b"a1 LOGIN alice@acme.example secret\r\n" + pipelined)
    return reader, writer


@pytest.mark.parametrize("use_tls", [False, True])
async def test_pipelined_and_early_bytes_go_first_and_large_data_arrives_whole(loopback_tls, use_tls):
    server_tls, client_tls = loopback_tls if use_tls else (None, None)
    store = _Store()
    async with _edge(store, server_tls) as (port, handlers, _):
        reader, writer = await _login(port, client_tls, pipelined=b"a2 NOOP\r\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"a1 " + OK_LINE
        assert await asyncio.wait_for(reader.readline(), 10) == EARLY           # the store's, held by the edge
        assert await asyncio.wait_for(reader.readline(), 10) == b"a2 NOOP\r\n"  # the client's, echoed
        payload = _blob(3 * 1024 * 1024 + 17)

        async def send():
            writer.write(payload)
            await writer.drain()

        sender = asyncio.ensure_future(send())
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
        await sender
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        writer.close()                                  # the client leaves: the store hears of it
        await asyncio.wait_for(store.closed.wait(), 10)
        await asyncio.wait_for(asyncio.gather(*handlers), 10)    # and the edge's handler is done


async def test_a_client_that_does_not_read_holds_the_store_back(loopback_tls):
    store = _Store()
    size = 64 * 1024 * 1024
    async with _edge(store) as (port, handlers, _):
        reader, writer = await _login(port, None)
        assert await asyncio.wait_for(reader.readline(), 10) == b"a1 " + OK_LINE
        assert await asyncio.wait_for(reader.readline(), 10) == EARLY
        writer.write(f"BLOB {size}\r\n".encode())
        # The client reads nothing: once the kernel's buffers are full the edge must stop
        # reading from the store, so most of the blob waits in the store's own buffer.
        await wait_until(lambda: _async(store.writer is not None and
                                        store.writer.transport.get_write_buffer_size() > size // 2),
                         60, "the store's writes to back up")
        got = await asyncio.wait_for(reader.readexactly(size), 120)
        assert got == _blob(size)
        # The store closes: the client sees the end and the edge's handler is done.
        store.writer.close()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await asyncio.wait_for(asyncio.gather(*handlers), 10)
        writer.close()


async def test_a_client_gone_before_the_splice_ends_the_session_at_once():
    # The client logs in and leaves at once: its EOF reaches the edge while the hand-off is
    # under way, before the splice exists; the store must still hear that it left, not keep
    # the session until its idle timeout.
    release = asyncio.Event()
    store = _Store(release)
    async with _edge(store) as (port, handlers, readers):
        reader, writer = await _login(port, None)
        await writer.drain()
        writer.write_eof()
        # The store answers only once the edge has taken the client's EOF (before the splice).
        await wait_until(lambda: _async(bool(readers) and readers[0].at_eof()), 10, "the edge to see the EOF")
        release.set()
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"a1 " + OK_LINE)
        await asyncio.wait_for(store.closed.wait(), 10)
        await asyncio.wait_for(asyncio.gather(*handlers), 10)
        writer.close()


async def _async(value):
    return value


@pytest.mark.parametrize("use_tls", [False, True])
async def test_a_client_lost_while_the_store_takes_its_login_has_the_store_session_closed(loopback_tls, use_tls):
    # Lost rather than half-closed (a reset; over TLS a close_notify, at which asyncio closes):
    # the edge cannot write the store's OK to the client.  It must close the store's connection
    # itself, not leave it to the writer's finalizer (asyncio's "unclosed StreamWriter"), which
    # runs only once nothing refers to the session any more -- a logged traceback, a reference
    # cycle -- while the store holds the account's session open.
    server_tls, client_tls = loopback_tls if use_tls else (None, None)
    release = asyncio.Event()
    store = _Store(release)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        async with _edge(store, server_tls) as (port, handlers, readers):
            reader, writer = await _login(port, client_tls)
            await writer.drain()
            if use_tls:
                writer.close()
            else:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()        # an RST, not a FIN
            await wait_until(lambda: _async(bool(readers) and (readers[0].at_eof() or readers[0].exception() is not None)),
                             10, "the edge to see the client gone")
            release.set()       # the store takes the login only now
            await asyncio.wait_for(store.closed.wait(), 10)
            await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 10)
    unclosed = [str(w.message) for w in seen if "unclosed <StreamWriter" in str(w.message)]
    assert not unclosed, unclosed
