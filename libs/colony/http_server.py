"""Running a uvicorn server inside a process whose signals and event loop we own.

uvicorn's ``serve()`` installs its own SIGINT/SIGTERM handlers and re-raises the signal when
it stops; a Colony process must instead drain in order first, so the runtime keeps the
signals and tells the server when to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from colony.tlsfiles import TLS12_CIPHERS, send_fatal_alerts

log = logging.getLogger("colony.http")

REQUEST_GRACE = 10.0        # seconds a request (head and body) may take before the rate counts
REQUEST_MIN_RATE = 1024.0   # bytes a second a request must arrive at after that
LINGER = 5.0                # seconds a connection closed while its request's body still comes reads on


INVALID_REQUEST = "Invalid HTTP request received."     # uvicorn's warning, word for word
INVALID_REQUESTS_EVERY = 60.0   # seconds: at most one such warning in this long, with a count


class InvalidRequestsSummarised(logging.Filter):
    """uvicorn logs a WARNING for every request it cannot parse (and answers it 400): a port
    scanner or ``nmap -sV`` against the ops or admin port wrote a hundred and more into the
    log, burying what an operator needs.  The first one in ``every`` seconds passes; the
    rest are counted, and the next that passes says how many there were."""

    def __init__(self, every: float = INVALID_REQUESTS_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self._passed_at: float | None = None
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != INVALID_REQUEST:
            return True
        now = self.clock()
        if self._passed_at is not None and now - self._passed_at < self.every:
            self._held += 1
            return False
        if self._held:
            record.msg = f"{INVALID_REQUEST} ({self._held} more since the last such warning, not logged)"
        self._passed_at, self._held = now, 0
        return True


_invalid_requests = InvalidRequestsSummarised()


def request_deadline(since: float, received: int, grace: float = REQUEST_GRACE,
                     min_rate: float = REQUEST_MIN_RATE) -> float:
    """When a request begun at ``since`` (the connection, or the end of the previous response)
    has run out of time, having sent ``received`` bytes since: a head within the grace, a body
    at ``min_rate`` or better.  A client that sends a byte now and then gets no longer."""
    return since + grace + received / min_rate


def _framed_twice(headers: list[tuple[bytes, bytes]]) -> bool:
    names = {name for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


class _LingeringTransport:
    """The transport as uvicorn holds it.  uvicorn closes a connection while the client may
    still be sending the request's body (a 413 for a body over the ceiling, any answer with
    ``Connection: close`` that did not read the body).  A socket closed with input unread is
    reset by the kernel, and a client still writing -- one that reads the answer only once its
    body is sent, as http.client does -- gets "connection reset" or "broken pipe" instead of
    the answer (RFC 9112 9.6, the TCP reset problem; a 413 with its reason was lost so).  Such a
    close lingers instead: the answer is out, what the client still sends is read and dropped,
    and the connection closes when the client closes its side or after ``linger`` seconds."""

    def __init__(self, transport: asyncio.Transport, protocol: _TimelyH11Protocol) -> None:
        self._transport, self._protocol = transport, protocol
        self.lingering = False
        self.write = transport.write  # the one called per response: no __getattr__ on its way

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.lingering:
            return  # the linger's end closes it
        if (not self._transport.is_closing() and self._protocol.conn.their_state is h11.SEND_BODY
                and self._transport.get_protocol() is self._protocol):  # not a WebSocket's, after an upgrade
            self.lingering = True
            self._transport.resume_reading()
            self._protocol.lingers()
            return
        self._transport.close()

    def close_now(self) -> None:
        self.lingering = False
        self._transport.close()


class _TimelyH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on reading each request.

    uvicorn waits for a request's head and body without end (its keep-alive timeout counts
    only between requests and is cancelled by any byte), so a client that connects and sends
    nothing, or a byte every few seconds (slowloris), held a connection -- one of the
    process's file descriptors, shared with everything else the instance serves -- for ever,
    on the admin API and on every instance's ops listener.  Here a request not in within
    ``request_deadline`` is answered 408 and the connection closed (closed silently if not a
    byte of it came).  Time the application spends not reading (flow control) is not the
    client's fault and extends the deadline.  A request framed by both Content-Length and
    Transfer-Encoding is the connection's last (RFC 9112 6.1: uvicorn served what followed).
    """

    grace = REQUEST_GRACE
    min_rate = REQUEST_MIN_RATE
    linger = LINGER

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._received, self._timer = 0, None
        super().connection_made(_LingeringTransport(transport, self))
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            return  # the rest of a body already answered: dropped (_LingeringTransport)
        self._received += len(data)
        super().data_received(data)

    def lingers(self) -> None:
        self._arm(self.loop.time() + self.linger)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self.transport.is_closing():
            # uvicorn answered 400 itself (a malformed chunk after the head) and closed, but the
            # application, already started, then sent its own response into a connection h11
            # had closed: LocalProtocolError and an "Exception in ASGI application" traceback in
            # the log, per request.  connection_lost would say so a moment later; say it now.
            cycle.disconnected = True
            cycle.message_event.set()
            return
        if cycle is not None and cycle is not before and _framed_twice(cycle.scope["headers"]):
            # RFC 9112 6.1: h11 reads the body by Transfer-Encoding, but a proxy in front may
            # have used Content-Length; what follows on this connection could be smuggled.
            cycle.keep_alive = False  # the response is the connection's last

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._watch()  # the next request on this connection gets its own time

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        self._since, self._base, self._watched = self.loop.time(), self._received, self.cycle
        self._arm(request_deadline(self._since, 0, self.grace, self.min_rate))

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._check)

    def _waiting_for_client(self) -> bool:
        their = self.conn.their_state
        return their is h11.SEND_BODY or (their is h11.IDLE and self.cycle is self._watched)

    def _check(self) -> None:
        self._timer = None
        if self.transport.lingering:
            self.transport.close_now()
            return
        if self.transport.is_closing() or not self._waiting_for_client():
            return  # answered, or the application has the whole request
        now = self.loop.time()
        if self.flow.read_paused:  # the application is not reading: not the client's time
            self._since = now - self.grace + 1.0
            self._base = self._received
        deadline = request_deadline(self._since, self._received - self._base, self.grace, self.min_rate)
        if now < deadline:
            self._arm(deadline)
            return
        got = self._received - self._base
        if got and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                 b"Connection: close\r\nContent-Length: 22\r\n\r\nrequest not in in time\n")
        self.transport.close_now()  # connection_lost tells a waiting application


class _QuietSignalsServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_requested = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def main_loop(self) -> None:
        """uvicorn's loop wakes every 0.1 s to look at ``should_exit`` and refreshes its Date
        header every tenth time: ten wake-ups a second in every Colony process, nearly all of
        them idle (an idle mail store's largest single timer).  Here it ticks once a second,
        the Date header's own resolution (``on_tick`` is given tenths, so it refreshes every
        time), and ``EmbeddedHttpServer.stop`` wakes it at once."""
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.exit_requested.wait()
            should_exit = await self.on_tick(counter)


class EmbeddedHttpServer:
    def __init__(self, app, host: str, port: int, lifespan: str = "off", access_log: bool = False,
                 tls_cert_file: Path | None = None, tls_key_file: Path | None = None,
                 request_grace: float = REQUEST_GRACE, request_min_rate: float = REQUEST_MIN_RATE,
                 linger: float = LINGER) -> None:
        # HTTPS when a certificate is given (the admin API on the management network), with
        # the TLS 1.2 suites of every other listener (uvicorn would keep Python's defaults,
        # CBC suites included).
        protocol = type("TimelyH11Protocol", (_TimelyH11Protocol,),
                        {"grace": request_grace, "min_rate": request_min_rate, "linger": linger})
        config = uvicorn.Config(app, host=host, port=port, lifespan=lifespan, log_level="warning",
                                access_log=access_log, timeout_graceful_shutdown=10, http=protocol,
                                ssl_certfile=str(tls_cert_file) if tls_cert_file else None,
                                ssl_keyfile=str(tls_key_file) if tls_key_file else None,
                                ssl_ciphers=TLS12_CIPHERS)
        if tls_cert_file:
            send_fatal_alerts()   # uvicorn serves TLS through asyncio's SSL protocol too
        uvicorn_log = logging.getLogger("uvicorn.error")     # after Config, which configures it
        if _invalid_requests not in uvicorn_log.filters:
            uvicorn_log.addFilter(_invalid_requests)
        self.server = _QuietSignalsServer(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> int:
        """Serve in the background; returns the bound port once the socket listens."""
        self._task = asyncio.create_task(self.server.serve(), name="http-server")
        self._task.add_done_callback(self._ended)
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises the bind error (port taken, ...)
                raise RuntimeError("http server exited before it started")
            await asyncio.sleep(0.01)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def _ended(self, task: asyncio.Task) -> None:
        """The server belongs to this object, not to a task owner (it starts before the
        instance registers); a server that dies on its own must still be said out loud."""
        if task.cancelled() or self.server.should_exit:
            return
        exc = task.exception()
        if exc is not None:
            log.error("HTTP server on %s:%s failed", self.server.config.host, self.server.config.port, exc_info=exc)
        else:
            log.error("HTTP server on %s:%s stopped by itself", self.server.config.host, self.server.config.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        self.server.exit_requested.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._task
