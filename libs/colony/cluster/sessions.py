"""Connection sessions of a protocol service, and the workload base that drains them.

Theory of operation
-------------------
A connection-based service (SMTP/IMAP/POP edge, mail store, SIP farm over TCP/TLS/WS) has
work that is *sessions*: a drain must wait for them to end and, after ``drain_timeout``, ask
each to end with its protocol's own goodbye (SMTP ``421 4.3.2``, IMAP ``* BYE``, POP3
``-ERR``, a SIP ``503`` ...).  ``SessionTracker`` is that bookkeeping and nothing else (no
sockets, no clock):

* ``tracker.track(protocol, peer, goodbye)`` is a context manager around one connection's
  life; ``goodbye`` is an ``async () -> None`` that says the protocol's goodbye and closes
  the connection.  Use ``tracker.accepting`` (False while draining) to refuse a new
  connection with the protocol's "try later" before tracking it.
* ``active_work()`` counts live sessions (``/metrics``, the node record's load, drain).
* ``await hand_over(timeout)`` calls every goodbye at once, each bounded by ``timeout``; a
  goodbye that raises or hangs is logged and its session forgotten, so a drain always ends.

``ConnectionWorkload`` is the ``colony.cluster.node.Workload`` for such services: subclass
it, open listeners in ``open_listeners`` with ``self.listen(...)`` and track sessions in
the handler::

    class EdgeWorkload(ConnectionWorkload):
        async def open_listeners(self, runtime) -> dict[str, str]:
            return {"smtp": await self.listen("smtp", host, port, self.smtp_session,
                                              refuse=lambda w: w.write(b"421 4.3.2 try later\\r\\n"))}

        async def smtp_session(self, reader, writer) -> None:
            conn = SmtpShell(reader, writer)
            with self.tracker.track("smtp", conn.peer, conn.goodbye):
                await conn.run()

``listen`` refuses connections (``refuse`` then close) while the instance is not accepting,
logs a handler that raises with its protocol and peer (and counts it), and always closes
the transport.  ``stop`` closes the listeners and hands over what is left.  A service whose
listeners face clients through a balancer sets ``balancers`` (``proxy_protocol_from``):
``listen`` then takes the balancer's PROXY header first (``colony.proxy_listener``) and the
handler's peer address is the client's.

An implicit-TLS listener (``ssl=``) accepts plain TCP and begins TLS itself, after the
``gate`` (``ConnectionGate``: the edge's deny list, connection rate and sessions per address)
admitted the connection: a listener's own handshake would come first, paid for (~0.8 ms of
CPU and ~40 KB each) by every connection from a denied network or over its rate, and a
silent one would hold its descriptor for asyncio's 60 s.  A connection the gate refuses is
closed without a word (a TLS client cannot read a plaintext answer); the gate counts it.
The handshake then has ``TLS_HANDSHAKE_TIMEOUT``, and the gate's session is released when
the connection ends, however it ends.  The PROXY header, when a balancer sends one, comes
before all of it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from colony.proxy_listener import Balancers, Refused, refusal_counter, start_server
from colony.tasks import describe

if TYPE_CHECKING:
    from colony.cluster.node import NodeRuntime

log = logging.getLogger("colony.sessions")

Goodbye = Callable[[], Awaitable[None]]

# Seconds an implicit-TLS connection has for its handshake once admitted.  A client sends its
# ClientHello as it connects and the handshake is two round trips: 10 s (the SIP farm's too)
# leaves a slow mobile link room, while a silent connection holds one of its address's
# sessions a sixth of asyncio's default of 60 s.
TLS_HANDSHAKE_TIMEOUT = 10.0


@dataclass(eq=False)
class Session:
    id: int
    protocol: str
    peer: str
    goodbye: Goodbye
    said_goodbye: bool = field(default=False)


class SessionTracker:
    def __init__(self) -> None:
        self.accepting = True
        self._sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        # Every protocol that had a session: its gauge reads 0 when the last one closes rather
        # than vanishing from /metrics (a dashboard would show "no data" for an idle edge).
        # A handful of names fixed by the code, so the set stays small.
        self._protocols: set[str] = set()

    def register(self, protocol: str, peer: str, goodbye: Goodbye) -> Session:
        session = Session(next(self._ids), protocol, peer, goodbye)
        self._sessions[session.id] = session
        self._protocols.add(protocol)
        return session

    def unregister(self, session: Session) -> None:
        """Idempotent: a session handed over may also end by itself."""
        self._sessions.pop(session.id, None)

    @contextmanager
    def track(self, protocol: str, peer: str, goodbye: Goodbye) -> Iterator[Session]:
        session = self.register(protocol, peer, goodbye)
        try:
            yield session
        finally:
            self.unregister(session)

    def active_work(self) -> int:
        return len(self._sessions)

    def by_protocol(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(self._protocols, 0)
        for s in self._sessions.values():
            counts[s.protocol] = counts.get(s.protocol, 0) + 1
        return counts

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    async def hand_over(self, timeout: float = 10.0) -> int:
        """Ask every live session to say goodbye and close; returns how many were asked."""
        sessions = [s for s in self._sessions.values() if not s.said_goodbye]
        for s in sessions:
            s.said_goodbye = True
        await asyncio.gather(*(self._goodbye(s, timeout) for s in sessions))
        return len(sessions)

    async def _goodbye(self, session: Session, timeout: float) -> None:
        try:
            await asyncio.wait_for(session.goodbye(), timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.warning("%s session %d from %s did not say goodbye within %.1fs; dropped",
                        session.protocol, session.id, session.peer, timeout)
        except Exception as exc:
            log.warning("%s session %d from %s failed to say goodbye: %s",
                        session.protocol, session.id, session.peer, describe(exc))
        finally:
            # Its handler normally unregisters it as the connection closes; a goodbye that
            # failed must not keep the instance from ever being drained.
            self.unregister(session)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Refuse = Callable[[asyncio.StreamWriter], Awaitable[None] | None]


class GateShare:
    """One connection's session at its gate (``ConnectionGate.on_connect`` admitted it), given
    back once: when the connection ends, or earlier by its handler (``current_gate_share``)
    -- an IMAP or POP3 client that logged in counts against its account from then on."""

    def __init__(self, gate: ConnectionGate, ip: str) -> None:
        self.gate, self.ip, self.held = gate, ip, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.on_disconnect(self.ip)


# The handler of an implicit-TLS listener with a gate runs with its connection's share here.
_gate_share: ContextVar[GateShare | None] = ContextVar("gate_share", default=None)


def current_gate_share() -> GateShare | None:
    """The share the listener's gate holds for the connection being handled, if any."""
    return _gate_share.get()


class ConnectionGate(Protocol):
    """What an implicit-TLS listener asks before the handshake (the edge's ``EdgeGate``)."""

    async def on_connect(self, ip: str) -> object | None:
        """None: admitted, and ``on_disconnect(ip)`` is owed when the connection ends; else a
        refusal, already counted and logged by the gate."""

    def on_disconnect(self, ip: str) -> None: ...


class ConnectionWorkload:
    """Listeners plus a ``SessionTracker``: the ``Workload`` of a connection-based service."""

    role: str = ""
    hand_over_timeout = 10.0  # seconds each session gets to say goodbye
    # Networks whose connections begin with a PROXY header (none: no header is read), and
    # the seconds they have to send it.
    balancers: Balancers | None = None
    proxy_header_timeout = 5.0

    def __init__(self, role: str | None = None) -> None:
        if role:
            self.role = role
        self.tracker = SessionTracker()
        self.runtime: NodeRuntime | None = None
        self._servers: list = []     # asyncio.Server or colony.proxy_listener.ProxiedServer
        self._handler_failures: Counter | None = None
        self._header_refusals: Refused | None = None

    # --- to override ----------------------------------------------------------------------

    async def open_listeners(self, runtime: NodeRuntime) -> dict[str, str]:
        """Open listeners (``self.listen``) and background work (``runtime.spawn``)."""
        return {}

    async def close_resources(self) -> None:
        """Close whatever ``open_listeners`` opened besides listeners (after sessions ended)."""

    # --- Workload -------------------------------------------------------------------------

    async def start(self, runtime: NodeRuntime) -> dict[str, str]:
        self.runtime = runtime
        self._handler_failures = self._failure_counter(runtime.metrics.registry)
        if self.balancers:
            self._header_refusals = refusal_counter(runtime.metrics.registry)
        runtime.metrics.add_callback(self._session_gauge)
        return await self.open_listeners(runtime)

    def _session_gauge(self):
        family = GaugeMetricFamily("colony_sessions", "Connection sessions open now, by protocol.", labels=["protocol"])
        for protocol, n in sorted(self.tracker.by_protocol().items()):
            family.add_metric([protocol], n)
        yield family

    def set_accepting(self, accepting: bool) -> None:
        self.tracker.accepting = accepting

    def active_work(self) -> int:
        return self.tracker.active_work()

    async def hand_over(self) -> None:
        await self.tracker.hand_over(self.hand_over_timeout)

    async def stop(self) -> None:
        self.tracker.accepting = False
        for server in self._servers:
            server.close()
        await self.tracker.hand_over(self.hand_over_timeout)
        for server in self._servers:
            with suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), self.hand_over_timeout)
        await self.close_resources()

    # --- listeners ------------------------------------------------------------------------

    async def listen(self, protocol: str, host: str, port: int, handler: Handler, *,
                     refuse: Refuse | None = None, ssl: ssl_module.SSLContext | None = None,
                     gate: ConnectionGate | None = None,
                     advertised_host: str | None = None, limit: int = 64 * 1024) -> str:
        """Serve ``handler`` on host:port; return "advertised-host:bound-port".

        With ``ssl`` the handler gets the connection once TLS is up, and with ``gate`` only if
        the gate admitted it before the handshake (module doc); the handler must then not ask
        the gate again.  ``limit`` bounds the StreamReader's buffer (a line longer than it is
        an error the handler sees, not memory growth)."""

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = _peer(writer)
            share: GateShare | None = None  # the session the gate counted, given back however it ends
            aborted = False                 # closed before the handler: nothing to wait for
            if ssl is not None:
                # Nothing is read yet (this task runs before the transport's first read): the
                # ClientHello stays in the kernel while the gate is asked, for the TLS layer to
                # read, instead of landing in the stream's buffer where the handshake never
                # sees it.  start_tls resumes reading.
                writer.transport.pause_reading()
            try:
                if gate is not None and self.tracker.accepting:
                    address = writer.get_extra_info("peername")
                    if not isinstance(address, tuple) or await gate.on_connect(address[0]) is not None:
                        # Refused, or reset before here: no handshake, no answer.
                        aborted = True
                        writer.transport.abort()
                        return
                    share = GateShare(gate, address[0])
                    _gate_share.set(share)
                if ssl is not None:
                    try:
                        await writer.start_tls(ssl, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
                    except (OSError, TimeoutError) as exc:    # ssl.SSLError is an OSError
                        # The client's doing (a scanner, a silent or broken client): not a failure.
                        log.debug("%s handshake from %s failed: %s", protocol, peer, describe(exc))
                        aborted = True
                        writer.transport.abort()
                        return
                if not self.tracker.accepting:
                    if refuse is not None:
                        result = refuse(writer)
                        if asyncio.iscoroutine(result):
                            await result
                        with suppress(Exception):
                            await asyncio.wait_for(writer.drain(), 5)
                    return
                await handler(reader, writer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._handler_failures is not None:
                    self._handler_failures.labels(protocol=protocol).inc()
                log.error("%s session from %s failed: %s", protocol, peer, describe(exc), exc_info=exc)
            finally:
                if share is not None:
                    share.release()
                if not aborted:
                    writer.close()
                    with suppress(Exception):
                        await asyncio.wait_for(writer.wait_closed(), 5)

        # Plain TCP even with ``ssl``: connected() begins TLS once the gate admitted the client.
        server = await start_server(connected, host, port, limit=limit, balancers=self.balancers,
                                    header_timeout=self.proxy_header_timeout, name=protocol,
                                    refused=self._header_refusals)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        if advertised_host is None:
            advertised_host = self.runtime.settings.advertised_host if self.runtime else host
        return f"{advertised_host}:{bound}"

    @staticmethod
    def _failure_counter(registry: CollectorRegistry) -> Counter:
        return Counter("colony_session_failures", "Connection handlers that raised (a bug or a broken peer).",
                       ["protocol"], registry=registry)


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info or "?")
