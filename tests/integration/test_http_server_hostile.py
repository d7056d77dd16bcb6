"""The embedded HTTP server (admin API, every ops listener) over real sockets: a client
that sends nothing, or its request a byte at a time, does not keep a connection open, and
a request framed twice (Content-Length and Transfer-Encoding) ends its connection."""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from colony.http_server import EmbeddedHttpServer


async def _echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{len(await request.body())}")


APP = Starlette(routes=[Route("/echo", _echo, methods=["GET", "POST"])])


async def _serve(grace: float = 0.5, min_rate: float = 1000.0) -> tuple[EmbeddedHttpServer, int]:
    server = EmbeddedHttpServer(APP, "127.0.0.1", 0, request_grace=grace, request_min_rate=min_rate)
    return server, await server.start()


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drip: bytes = b"",
                        every: float = 0.1, timeout: float = 20.0) -> tuple[bytes, float]:
    """Drip ``drip`` a byte at a time until the server closes; what it said, and when."""
    started, answer = time.monotonic(), b""

    async def read() -> None:
        nonlocal answer
        with contextlib.suppress(ConnectionError):  # a byte dripped after the server closed
            while data := await reader.read(4096):
                answer += data

    reading = asyncio.create_task(read())
    try:
        async with asyncio.timeout(timeout):
            for i in range(len(drip)):
                if reading.done() or answer:  # answered: writing on would only draw a reset
                    break
                writer.write(drip[i:i + 1])
                await asyncio.sleep(every)
            await reading
    finally:
        reading.cancel()
        writer.close()
    return answer, time.monotonic() - started


async def test_a_silent_connection_is_closed_without_a_word():
    server, port = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer, took = await _until_closed(reader, writer)
        assert answer == b"" and took < 5
    finally:
        await server.stop()


async def test_a_head_sent_a_byte_at_a_time_is_answered_408():
    server, port = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 500 + b"\r\n\r\n"
        answer, took = await _until_closed(reader, writer, head)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert took < 5
    finally:
        await server.stop()


async def test_a_body_sent_too_slowly_is_answered_408_and_a_brisk_one_is_served():
    server, port = await _serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        answer, took = await _until_closed(reader, writer, b"b" * 5000)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert took < 5

        # Kept alive, two requests, the second with a body well above the grace's worth.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"c" * 200_000
        for _ in range(2):
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            assert await reader.readexactly(length) == b"200000"
        writer.close()
    finally:
        await server.stop()


async def test_a_request_with_both_content_length_and_chunked_is_the_connections_last():
    server, port = await _serve(grace=5.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        smuggled = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(smuggled)) + smuggled)
        answer, _ = await _until_closed(reader, writer, timeout=4.0)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1, answer
    finally:
        await server.stop()


async def test_a_malformed_chunk_is_answered_400_without_an_application_traceback():
    """The application answers without reading the body (as a 401 does); the chunk after the
    head is malformed, so uvicorn answers 400 and closes first.  The application's answer
    used to hit the closed h11 connection: an "Exception in ASGI application" traceback."""
    finished = asyncio.Event()
    failures: list[BaseException] = []

    async def quick(scope, receive, send):
        if scope["type"] != "http":
            return
        try:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        except Exception as exc:  # what uvicorn then logs as "Exception in ASGI application"
            failures.append(exc)
            raise
        finally:
            finished.set()

    server = EmbeddedHttpServer(quick, "127.0.0.1", 0, request_grace=5.0)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/domains HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n")
        answer, _ = await _until_closed(reader, writer, timeout=4.0)
        await asyncio.wait_for(finished.wait(), 5)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert failures == []
    finally:
        await server.stop()


async def _refuse_unread(scope, receive, send):
    """Answers 413 from the head, never reading the body (as the admin API's body ceiling does)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-length", b"9"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"too large"})


def _post_with_http_client(port: int, size: int) -> int | str:
    """As http.client (and urllib3 1.x under requests) posts: the whole body, then the answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/imports", body=b"x" * size, headers={"Content-Type": "text/csv"})
        return conn.getresponse().status
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


async def test_a_refusal_before_the_body_lingers_so_a_client_still_sending_reads_it():
    """Closed at once with the body unread, the socket was reset under a client still
    writing: BrokenPipeError / ConnectionResetError instead of the 413 and its reason."""
    server = EmbeddedHttpServer(_refuse_unread, "127.0.0.1", 0, linger=30.0)
    port = await server.start()
    try:
        statuses = [await asyncio.to_thread(_post_with_http_client, port, 8 * 1024 * 1024) for _ in range(3)]
        assert statuses == [413] * 3, statuses
    finally:
        await server.stop()


async def test_a_lingering_connection_is_closed_when_its_time_is_up():
    server = EmbeddedHttpServer(_refuse_unread, "127.0.0.1", 0, linger=0.5)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/imports HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
        answer, _ = await _until_closed(reader, writer, timeout=10.0)  # neither side sends more
        assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b"too large"), answer
    finally:
        await server.stop()


async def test_a_refused_websocket_upgrade_is_closed_at_once_not_lingered():
    """After an upgrade the connection is the WebSocket protocol's; the HTTP request it came
    as never ended in h11's eyes, which is no body still coming to wait for."""
    async def no_websockets(scope, receive, send):
        if scope["type"] == "websocket":
            await send({"type": "websocket.close"})

    server = EmbeddedHttpServer(no_websockets, "127.0.0.1", 0, linger=30.0)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        answer, _ = await _until_closed(reader, writer, timeout=10.0)  # TimeoutError if it lingered
        assert answer.startswith(b"HTTP/1.1 403 "), answer
    finally:
        await server.stop()


async def test_a_scanners_garbage_gets_400_each_time_and_one_warning_in_the_log():
    """uvicorn warns once per request it cannot parse; a scanner sent hundreds.  Each still
    gets its 400, the log one line (the count goes with the next that passes)."""
    import logging

    from colony.http_server import INVALID_REQUEST

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    server, port = await _serve()
    kept = Kept()       # on uvicorn's own logger: it does not propagate to the root
    logging.getLogger("uvicorn.error").addHandler(kept)
    try:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
            answer, _ = await _until_closed(reader, writer)
            assert answer.startswith(b"HTTP/1.1 400"), answer
    finally:
        logging.getLogger("uvicorn.error").removeHandler(kept)
        await server.stop()
    assert len([m for m in kept.messages if m.startswith(INVALID_REQUEST)]) <= 1, kept.messages
