"""TCP listeners that learn the client's address from a trusted balancer's PROXY header.

Theory of operation
-------------------
``start_server`` is ``asyncio.start_server`` for the listeners that face clients (the edge's
SMTP, submission, IMAP and POP3 ports, the SIP farm's TCP, TLS and WebSocket ports).  With
no trusted balancers (``proxy_protocol_from`` empty, the default) it *is*
``asyncio.start_server``.  Otherwise it accepts connections itself and sorts them by their
real source address:

* From a trusted balancer: the connection must begin with a PROXY header (v1 or v2,
  ``colony.protocols.proxy_header``) within ``header_timeout``.  The header is read from
  the socket before asyncio gets it, by peeking and then taking exactly the octets the
  reader says are the header's, so what follows -- a TLS ClientHello on an implicit-TLS
  port, the first SIP request -- is still in the kernel for the TLS layer or the stream
  to read (haproxy's send-proxy-v2 writes the header before the TLS handshake, and so does
  nginx's ``proxy_protocol on``).  A missing, malformed or late header closes the
  connection: a balancer is either configured to send it or it is not, and guessing
  would let a client behind a misconfigured balancer pass as the balancer.
* From anywhere else: served exactly as without a balancer; a PROXY line such a client
  sends is the application protocol's garbage (Postfix, Dovecot and Kamailio do the same:
  only listed senders are believed, since any sender listed can claim any address).

The client's address then *is* the connection's peer address: the accepted socket is
handed to asyncio as a ``socket.socket`` whose ``getpeername()`` answers it, so
``writer.get_extra_info("peername")`` -- what every per-address rule, log line and
``Received:`` header reads -- gives the client, and the shells need no change.  The local
address stays the real one.  A header without a client address (v1 UNKNOWN, v2 LOCAL: the
balancer's own health checks) leaves the real peer.

Once the header is taken, the connection goes through ``loop.connect_accepted_socket``
with the factory ``asyncio.start_server`` uses, so a handler (and a handler that begins
TLS itself, as the edge's implicit-TLS listeners do after the edge gate and the SIP farm
after counting the source) sees what it saw before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from contextlib import suppress

from prometheus_client import CollectorRegistry, Counter

from colony.netaddr import NetworkList
from colony.protocols.proxy_header import HeaderReader, ProxyHeader, ProxyHeaderError

log = logging.getLogger("colony.proxy_listener")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

ACCEPT_RETRY_DELAY = 1.0      # out of descriptors: as asyncio's own accept loop, try again later
TLS_HANDSHAKE_TIMEOUT = 60.0  # asyncio.start_server's default


class Balancers(NetworkList):
    """The networks allowed to send a PROXY header (``proxy_protocol_from``)."""

    @classmethod
    def parse(cls, text: str, key: str = "proxy_protocol_from") -> Balancers:
        return super().parse(text, key)


Refused = Callable[[str, str], None]     # (listener name, reason) of a balancer's connection closed


def refusal_counter(registry: CollectorRegistry) -> Refused:
    """``colony_proxy_header_refusals_total{listener,reason}``: a balancer's connections
    closed for their header -- ``malformed``, ``timeout`` or ``closed`` (ended before a
    whole header; one that sent nothing at all, a TCP health check, is not counted).  A
    steady count means the balancer does not send the header the service expects."""
    counter = Counter("colony_proxy_header_refusals", "Connections from a proxy_protocol_from balancer closed "
                      "for a missing, malformed or late PROXY header.", ["listener", "reason"], registry=registry)
    return lambda listener, reason: counter.labels(listener=listener, reason=reason).inc()


async def start_server(handler: Handler, host: str | None, port: int, *, balancers: Balancers | None = None,
                       header_timeout: float = 5.0, ssl: ssl_module.SSLContext | None = None,
                       limit: int = 64 * 1024, reuse_address: bool | None = None, name: str = "tcp",
                       refused: Refused | None = None):
    """``asyncio.start_server(handler, host, port, ssl=, limit=, reuse_address=)``, taking
    a PROXY header first from ``balancers`` (see the module doc).  The result has what the
    callers use of ``asyncio.Server``: ``sockets``, ``close()``, ``wait_closed()``.
    ``refused(name, reason)`` is told of each balancer connection closed for its header."""
    if not balancers:
        return await asyncio.start_server(handler, host, port, ssl=ssl, limit=limit, reuse_address=reuse_address)
    server = ProxiedServer(handler, balancers, header_timeout, ssl, limit, name, refused)
    server.bind(host, port, reuse_address)
    return server


class _ProxiedSocket(socket.socket):
    """An accepted socket whose peer is the client the balancer's header named."""

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None,
                 *, client: tuple | None = None) -> None:
        super().__init__(family, type, proto, fileno)
        self.client = client

    def getpeername(self):
        return self.client if self.client is not None else super().getpeername()


def _peer_tuple(source: tuple[str, int]) -> tuple:
    """The form getpeername() has for the address's family (IPv6 has flow info and scope)."""
    return (source[0], source[1], 0, 0) if ":" in source[0] else (source[0], source[1])


class ProxiedServer:
    def __init__(self, handler: Handler, balancers: Balancers, header_timeout: float,
                 ssl: ssl_module.SSLContext | None, limit: int, name: str, refused: Refused | None = None) -> None:
        self._handler = handler
        self._refused = refused
        self._balancers = balancers
        self._header_timeout = header_timeout
        self._ssl = ssl
        self._limit = limit
        self._name = name
        self.sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting: list[asyncio.Task] = []
        self._arriving: set[asyncio.Task] = set()     # connections before their handler starts

    def bind(self, host: str | None, port: int, reuse_address: bool | None) -> None:
        """One listening socket per address ``host`` resolves to, as asyncio's create_server."""
        loop = self._loop = asyncio.get_running_loop()
        infos = socket.getaddrinfo(host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                if reuse_address is not False:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # Each family on its own socket, as asyncio does (no v4-mapped twins).
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(100)
                sock.setblocking(False)
        except OSError:
            for sock in self.sockets:
                sock.close()
            raise
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    def is_serving(self) -> bool:
        return any(not t.done() for t in self._accepting)

    def close(self) -> None:
        """Stop accepting; connections being served go on (as ``asyncio.Server.close``),
        those still before their header are dropped."""
        for task in [*self._accepting, *self._arriving]:
            task.cancel()
        for sock in self.sockets:
            # The accept waiting on it is unregistered now, not when its task next runs: by
            # then the descriptor's number may belong to another socket (as asyncio's own
            # Server does in _stop_serving).
            if sock.fileno() != -1:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        tasks = [*self._accepting, *self._arriving]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(listener)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("%s listener: cannot accept (%s); trying again in %.0f s",
                              self._name, exc.strerror, ACCEPT_RETRY_DELAY)
                    await asyncio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                log.error("%s listener stopped accepting: %s", self._name, exc)
                raise
            task = loop.create_task(self._arrive(conn, address))
            self._arriving.add(task)
            task.add_done_callback(self._arriving.discard)

    async def _arrive(self, conn: socket.socket, address) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            if address[0] in self._balancers:
                reader = HeaderReader()
                try:
                    async with asyncio.timeout(self._header_timeout):
                        header = await read_header(conn, reader)
                except (ProxyHeaderError, ConnectionError, TimeoutError) as exc:
                    conn.close()
                    self._refuse(address[0], exc, reader)
                    return
                if header.source is not None:
                    conn = _ProxiedSocket(conn.family, conn.type, conn.proto, conn.detach(),
                                          client=_peer_tuple(header.source))
            await loop.connect_accepted_socket(self._protocol, conn, ssl=self._ssl,
                                               ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self._ssl else None)
        except asyncio.CancelledError:
            conn.close()
            raise
        except OSError as exc:    # a reset, a failed TLS handshake (ssl.SSLError is an OSError)
            log.debug("%s listener: connection from %s ended before its handler: %s", self._name, address[0], exc)
            conn.close()
        except Exception:
            log.exception("%s listener: connection from %s failed before its handler", self._name, address[0])
            conn.close()

    def _refuse(self, balancer: str, exc: Exception, reader: HeaderReader) -> None:
        if isinstance(exc, ConnectionError) and reader.untouched:
            # Connected and closed without a byte: a balancer's TCP check, not a fault.
            log.debug("%s listener: balancer %s closed a connection before sending anything", self._name, balancer)
            return
        reason = "malformed" if isinstance(exc, ProxyHeaderError) else "timeout" if isinstance(exc, TimeoutError) \
            else "closed"
        why = "no whole PROXY header in time" if reason == "timeout" else str(exc)
        log.warning("%s listener: closing a connection from balancer %s: %s", self._name, balancer, why)
        if self._refused is not None:
            self._refused(self._name, reason)

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        # What asyncio.start_server's factory makes: the handler runs as its own task.
        reader = asyncio.StreamReader(limit=self._limit)
        return asyncio.StreamReaderProtocol(reader, self._handler)


async def read_header(conn: socket.socket, reader: HeaderReader | None = None) -> ProxyHeader:
    """The PROXY header at the front of non-blocking ``conn``, and not one octet more: peek,
    judge, take what the reader says is the header's (module doc of proxy_header)."""
    loop = asyncio.get_running_loop()
    reader = reader or HeaderReader()
    while reader.header is None:
        try:
            peeked = conn.recv(reader.wanted(), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, conn)
            continue
        if not peeked:
            raise ConnectionResetError("closed before its PROXY header was complete")
        taken = reader.feed(peeked)
        while taken:     # peeked, so already here: recv does not wait
            taken -= len(conn.recv(taken))
    return reader.header


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    ready = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        with suppress(Exception):
            loop.remove_reader(fd)
