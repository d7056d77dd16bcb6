"""The SIP farm member's asyncio shell: UDP and TCP listeners around ``SipFarm``.

New work is spread: a request that starts a transaction of its own (``SipFarm.spread_key``)
is handled by the READY member its Call-ID hashes to (rendezvous hashing over the members
this one sees in the ``nodes`` bucket with a fresh heartbeat), so every packet of one
registration or call setup meets the same member's nonce counts and answer cache, and a
draining member gets none.

A packet that arrived over UDP goes to the owner as a datagram, member to member (the inner
relay, ``inner_frames``: the packet frame behind one signed line, to the owner's ``sip_inner``
listener from its node record), and this member waits for nothing: the owner handles it and
sends what is to go out to this member's inner listener, which sends it from the address the
phone talked to (its NAT expects that).  A frame lost on the way is a packet lost on the wire:
the phone sends it again and the owner's answer cache answers the copy.  Over the bus's
request/reply a hand-over cost both members about 0.2 ms of CPU -- more than handling the
packet (``bench/README.md``, "SIP: hand-over over the inner network").  Each owner is sent to
over a socket connected to its listener, so the ICMP port-unreachable of an owner that died
comes back as ``ConnectionRefusedError`` on the next send: that packet is handled here and the
owner passed over for ``SUSPECT_FOR``.  An owner that stopped without closing its port
(SIGSTOP, a host gone) is not noticed so: its packets are lost until its heartbeat goes stale
(``node_ttl``), and the phones retransmit.

A packet from a connection (TCP, TLS, WS, WSS) is asked over ``colony.sip.spread.<owner>``
(request/reply, binary frames -- ``spread_frames``): its phone does not send it again, so the
hand-over must not be lossy.  So is a datagram whose frame would not fit a datagram, and one
for an owner whose record names no inner listener (a member of the previous version).  The
trace context rides in the frame's line (inner relay) or the headers (bus) when a tracer
provider is installed; with none, neither side builds a span or headers for it (as for a
packet handled where it arrives).  Over the bus: an owner
that has no responder, or answers with a frame that does not decode, is skipped for ten
seconds and the packet handled here; a request frame that does not decode is dropped with a
log line (its sender times out); an answer to a destination no frame can carry (a registered
Contact's maddr with a space) is left out and the rest answered.  An owner that does not answer a
REGISTER datagram within a second is not taken for dead while its heartbeat is fresh: it may be waiting on the bus (a first
credential lookup waits on the auth service, up to its own 5 s), and handling the packet here
as well did the work twice and took a live member out of the spread for ten seconds -- at a
farm's start under load, every member passed every other over.  The answer to the datagram
is then lost as on the wire (``colony_sip_dropped{reason="owner slow"}``): the phone sends it
again, and the owner answers the copy from its answer cache -- while the owner has answered
some hand-over in the last ``SLOW_OWNER_GRACE`` seconds (one that answers none is not slow).  Everything else that times out
is handled here and its owner passed over, as before: a proxied request's answer is its
forwarding, which the owner does not keep for a copy; a packet from a connection is never
sent again; an owner whose heartbeat is stale is out of the spread anyway.

Each datagram or framed stream message is handed to ``SipFarm.handle`` at once, and goes on
in a task of its own from its first wait on the bus (``colony.eager_task``; bounded: at most
``MAX_INFLIGHT`` such tasks, more UDP packets are dropped as a full socket buffer would); the
answers go out on the UDP socket, on the TCP connection to that peer
(kept by (host, port), as RFC 3261 §18 reuses connections), or -- when another member holds
that connection -- over ``colony.sip.relay.<member>`` with the trace context in the headers.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import os
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace

from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from datetime import datetime, timedelta, timezone

from nats.errors import NoRespondersError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError

from colony.bus import names
from colony.bus.pipelined import landed, publish_pipelined
from colony.metrics import BusRequestMetrics
from colony.cluster.membership import NodeRecord, NodeState
from colony.hashing import choose
from colony.netaddr import counting_unit
from colony.bus.tokens import from_token
from colony.contracts.auth import AuthClient
from colony.counters import SharedCounters
from colony.eager_task import start_eagerly
from colony.events import USAGE_SUMS_PER_EVENT, UsageSummed
from colony.protocols.sip.message import SipRequest, SipResponse, make_response
from colony.protocols.sip.parser import SipParseError, StreamFramer, parse_message
from colony.protocols.sip.transaction import Destination, Timers, build_ack
from colony.protocols.sip.uri import URIError
from colony.protocols.sip.websocket import SipWebSocket
from colony.proxy_listener import Balancers, refusal_counter, start_server
from colony.settings import Settings
from colony.telemetry import extract_context, inject_headers
from colony.tlsfiles import configured, server_context

from colony_sipfarm.bindings import BindingStore
from colony_sipfarm.entrusted_branches import Entrustments
from colony_sipfarm.farm import FARM_BRANCH, FORK_LIFETIME, IN_DIALOG, Outbound, SipFarm, UsageCount, method_label
from colony_sipfarm.inner_frames import (MAX_DATAGRAM, Entrusted, InnerFrame, InnerFrameError, RelayKey, open_frame,
                                         seal_answers, seal_entrusted, seal_packet)
from colony_sipfarm.retransmission import ProxyClientTransactions
from colony_sipfarm.sent_invites import cancel_of, kept_of
from colony_sipfarm.spread_frames import FrameError, SpreadAnswers, SpreadPacket

_tracer = trace.get_tracer("colony.sipfarm")  # a proxy: follows the provider setup_tracing installs


def _frames(item: Outbound) -> bool:
    """Whether ``item`` fits a ``SpreadAnswers`` frame (every field an ASCII token)."""
    try:
        SpreadAnswers.to_frame([item])
    except ValueError:
        return False
    return True


def _made_by(items: list[Outbound], member: str) -> list[Outbound]:
    """Answers the member ``member`` (a node key) made to a hand-over, for this one to send: an
    INVITE among them belongs to that member's fork (_Flow.forked_by)."""
    return [replace(item, forker=member) if item.data.startswith(b"INVITE ") else item for item in items]


def _span_name(parsed) -> str:
    if isinstance(parsed, SipRequest):
        return f"sip {method_label(parsed.method)}"  # a fixed set of names, as the metrics' labels
    return "sip response" if isinstance(parsed, SipResponse) else "sip unparsable"


def _span_attributes(parsed, source: Destination) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {"network.transport": source[0].lower(), "colony.sip.source": f"{source[1]}:{source[2]}"}
    if isinstance(parsed, (SipRequest, SipResponse)):
        attributes["colony.sip.call_id"] = parsed.call_id[:200]
    if isinstance(parsed, SipResponse):
        attributes["colony.sip.status"] = parsed.status
    return attributes

log = logging.getLogger("colony.sipfarm")

MAX_INFLIGHT = 2000
MAX_CONNECTIONS = 10_000
MAX_WRITE_BUFFER = 1 << 20    # bytes queued for a phone that does not read: then its flow is closed
HANDSHAKE_TIMEOUT = 10.0      # seconds a new TLS or WebSocket connection has to complete its handshake
# Seconds a TCP or TLS connection has for its first SIP message, and any message from its first
# byte to its last: a connection that sends nothing, or a message a byte at a time, held a
# descriptor and a slot of MAX_CONNECTIONS forever.  A flow that has sent a message and is
# quiet between messages is kept (phones choose their own keep-alive intervals).
MESSAGE_TIMEOUT = 10.0
# Seconds a closing connection has to take what is still queued for it, then it is aborted: a
# peer that reads nothing held a close() for good -- its descriptor and up to MAX_WRITE_BUFFER
# of ours -- after the connection had left its source's count (_close_flow).
CLOSE_TIMEOUT = 10.0
# Packets being worked on beyond which this member sends no retransmission copies (their
# timers still double, and Timer B/F still ends an unanswered branch): a member that far
# behind has likely not read the answers yet, and every copy would come back as more work.
RETRANSMIT_BUSY = 200
UDP_BUFFER = 4 << 20      # bytes of receive buffer asked for the SIP UDP socket
UDP_DRAIN = 64            # datagrams read per readiness of the UDP socket at most (_UdpSocket)
UDP_MAX_DATAGRAM = 65535  # bytes: the largest UDP payload (a larger SIP message is refused by the parser)
NAME_TTL = 60.0           # seconds a host name's address is used for datagrams (_UdpSocket)
NAMES_KEPT = 4096         # host names remembered at most
MAX_LOOKUPS = 64          # host name lookups running at once at most
LOOKUP_TIMEOUT = 5.0      # seconds a lookup may take before its datagram is lost
HANDLE_TIMEOUT = 1.0     # seconds an owner has to answer a spread packet
# Requests relayed to the member holding a phone's connection are watched this long for the
# bus's "no responders" (nobody reads that member's relay subject: it is dead), at most this many.
RELAY_WATCH = 5.0
RELAY_WATCHED = 10_000
# INVITEs sent on one connection that have no final answer from it yet, kept at most (the
# oldest go first): a connection that closes fails each at once (_Flow.ringing).
RINGING_PER_FLOW = 64
# Seconds an INVITE cancelled because its forking member died waits for the phone's 487, which
# is ACKed here (64*T1 with the default T1: a CANCELled INVITE's answer comes within Timer F),
# and how many such INVITEs are kept at most (as many as client transactions).
CANCELLED_KEPT = 32.0
CANCELLED_LIMIT = 20_000
# A member whose record says so holds no connection any more (FAILED: the controller saw its
# heartbeats stop; STOPPED: it closes them as it stops).
GONE_STATES = frozenset({NodeState.FAILED, NodeState.STOPPED})
USAGE_ACK_TIMEOUT = 10.0  # seconds the bus has to store one interval's usage sums
# Seconds a packet that starts new work may wait for its turn before it is refused with 503:
# two T1s, by when its sender has retransmitted twice -- this member is behind.
LATE = 1.0
# A probe's send failing so says its host is gone (not our own shortage of descriptors or buffers).
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})
TURN_PROBE = 0.1         # seconds between measurements of how long the event loop takes to come round
SUSPECT_FOR = 10.0       # seconds an owner that did not answer is passed over
# Seconds since an owner last answered a hand-over within which a late answer to a REGISTER
# is taken as slowness (left to the phone's copy), not failure: an owner that answers nothing
# at all -- hung, or unable to be reached on the spread subject (say, a bus whose permissions
# predate it) -- gets its packets handled where they arrive, as any other timeout.
SLOW_OWNER_GRACE = 5.0
READY_RECHECK = 0.5      # seconds ready_members() is reused (unless a record or suspicion changes)
INNER_PEERS_KEPT = 256   # connected sockets to other members' inner listeners kept at most


class _UdpSocket:
    """The member's UDP socket, read by draining: up to ``UDP_DRAIN`` datagrams per readiness.

    asyncio's datagram transport reads one datagram per readiness, so every packet cost a
    whole event-loop pass (an ``epoll_wait``, the ready list, the handle) before any SIP
    work, and it reads into a 256 KiB buffer per datagram.  Under a REGISTER load strace saw
    one ``epoll_wait`` per datagram before, one per ~60 after; bench/sip_floor.py measured a
    responder that does no SIP work at 0.065-0.072 ms CPU per registration through
    ``DatagramProtocol``, 0.027-0.029 ms with ``add_reader`` and one 64 KiB ``recvfrom`` per
    readiness (the big buffer was most of the difference there; in the member's larger heap
    it costs little) and 0.021-0.024 ms drained (Kamailio: 0.048 ms).  The drain is bounded
    so that a flood of phones cannot starve the bus connection's reads (credential replies)
    and the timers; what is left waits in the kernel's buffer for the next pass.  Backpressure
    and the overload rule are the shell's as before: every datagram goes through
    ``SipWorkload.received``, whose ``_track`` drops past ``MAX_INFLIGHT``.

    Sending is ``sendto`` at once; only when the kernel's send buffer is full (EAGAIN) are
    datagrams queued, up to ``MAX_WRITE_BUFFER`` bytes, and flushed when writable -- past that
    they are lost as on the wire (asyncio's transport queued without a bound).

    A destination named by a host name (a Via's sent-by, a Contact or Request-URI host) is
    looked up with the loop's ``getaddrinfo`` (in a thread), not by ``sendto``: given a name,
    ``sendto`` resolves it itself, blocking the loop for as long as DNS takes -- a phone that
    names a slow domain would stall every call and registration of the member.  Answers are
    remembered for ``NAME_TTL`` seconds (at most ``NAMES_KEPT`` names); at most
    ``MAX_LOOKUPS`` run at once (past that the datagram is lost, as on the wire), each for at
    most ``LOOKUP_TIMEOUT`` seconds; a name that does not resolve loses its datagram, logged.
    Every such name came from a phone's message (the farm's answers go to the address a
    request came from), so what it resolves to is asked of ``refused`` (``sip_contact_deny_
    networks``) at each lookup: a name for 127.0.0.1, or one that rebinds there after its
    REGISTER was taken, loses its datagram."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, received,
                 refused: Callable[[str], bool] = lambda address: False) -> None:
        self.loop, self.sock, self._received, self._refused = loop, sock, received, refused
        self._fd = sock.fileno()
        self._queue: deque[tuple[bytes, tuple]] = deque()
        self._queued = 0
        self._names: dict[str, tuple[str, float]] = {}   # host name -> (address, good until)
        self._lookups: set[asyncio.Task] = set()
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(self._fd, self._read)

    def _read(self) -> None:
        recvfrom, received = self.sock.recvfrom, self._received
        for _ in range(UDP_DRAIN):
            try:
                data, addr = recvfrom(UDP_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:     # an ICMP error reported on the socket: nothing to read
                if self.closed:        # closed by the work on an earlier datagram (stop)
                    return
                log.debug("SIP UDP socket: %s", exc)
                continue
            received(data, ("UDP", addr[0], addr[1]))

    def sendto(self, data: bytes, addr) -> None:
        if self.closed:
            return
        if not _is_address(addr[0]):
            known = self._names.get(addr[0])
            if known is None or known[1] < self.loop.time():
                self._look_up(data, addr)
                return
            addr = (known[0], addr[1])
        if not self._queue:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self._fd, self._flush)
            except (OSError, OverflowError) as exc:     # as asyncio's transport: reported, not raised
                # (the caller's send is one of many); OverflowError: a port no datagram can have.
                log.info("could not send a SIP datagram to %s: %s", addr, exc)
                return
        if self._queued + len(data) > MAX_WRITE_BUFFER:
            return
        self._queue.append((bytes(data), addr))
        self._queued += len(data)

    def _look_up(self, data: bytes, addr) -> None:
        if len(self._lookups) >= MAX_LOOKUPS:
            log.info("SIP datagram to %s lost: %d host name lookups running", addr[0], MAX_LOOKUPS)
            return
        task = self.loop.create_task(self._resolve_and_send(bytes(data), addr))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _resolve_and_send(self, data: bytes, addr) -> None:
        host, port = addr[0], addr[1]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                infos = await self.loop.getaddrinfo(host, port, family=self.sock.family, type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError, ValueError) as exc:     # ValueError: no DNS name (a label over 63)
            log.info("SIP datagram to %s lost: the name does not resolve (%s)", host[:100], exc)
            return
        if not infos:
            return
        address = infos[0][4][0]
        if self._refused(address):
            log.info("SIP datagram to %s lost: it resolves to %s, in sip_contact_deny_networks", host[:100], address)
            return
        if len(self._names) >= NAMES_KEPT:
            self._names.clear()
        self._names[host] = (address, self.loop.time() + NAME_TTL)
        self.sendto(data, (address, port))

    def _flush(self) -> None:
        while self._queue:
            data, addr = self._queue[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, OverflowError) as exc:
                log.info("could not send a SIP datagram to %s: %s", addr, exc)
            self._queue.popleft()
            self._queued -= len(data)
        self.loop.remove_writer(self._fd)

    def get_extra_info(self, name: str):
        return {"socket": self.sock, "sockname": self.sock.getsockname()}.get(name)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._lookups:
            task.cancel()
        self.loop.remove_reader(self._fd)
        self.loop.remove_writer(self._fd)
        self.sock.close()


def _is_address(host: str) -> bool:
    """An IPv4 or IPv6 literal (``sendto`` takes it as it is, with no lookup)."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host.partition("%")[0])   # a zone index is sendto's to read
        return True
    except OSError:
        return False


async def _bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port), the first address of host that binds (as
    ``loop.create_datagram_endpoint`` chose)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"cannot bind UDP to {host}:{port}")


def _write(writer: asyncio.StreamWriter, data: bytes, transport: str) -> None:
    """Write to a phone's connection, or close it when MAX_WRITE_BUFFER is queued already: a
    peer that does not read -- what it asked for included (pongs to a ping flood) -- must not
    grow the member's memory.  Aborted, not closed: a close waits to write out what is queued,
    which that peer never reads, so it held the connection for good."""
    if writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
        log.info("closing a %s flow whose peer does not read", transport)
        writer.transport.abort()
        return
    writer.write(data)


async def _close_flow(writer: asyncio.StreamWriter) -> None:
    """Close a connection once what is queued for it is written, for at most CLOSE_TIMEOUT,
    then abort it: ``close()`` alone waits for a peer that may never read (one that stopped
    reading and sent its FIN, say), holding the descriptor and what is queued for ever, while
    the connection no longer counted against its source -- one address could pile them up.
    A handler being cancelled (the process is ending: asyncio.run cancels every task and waits
    for them) does not wait on its peer."""
    writer.close()
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError):
        pass


class _Flow:
    """A connection a phone (or a peer we opened) holds to this member: TCP, TLS, WS or WSS.
    ``send`` takes one SIP message; over a WebSocket it becomes one frame."""

    def __init__(self, transport: str, writer: asyncio.StreamWriter, ws: SipWebSocket | None = None) -> None:
        self.transport, self.writer, self.ws = transport, writer, ws
        # The INVITEs sent on this connection without a final answer from it: branch -> (when
        # sent, the INVITE as sent, the node key of the member that forked it -- that sent it
        # here).  When the connection closes (the phone hung it up, a tab closed, a NAT binding
        # lapsed and the write failed), nothing will answer them: each fails at once with 430
        # Flow Failed (RFC 5626 §5.3), as a flow found gone does -- before, the caller rang
        # into silence until Timer C (200 s).  When the member that forked one dies, the fork
        # died with it (``forked_by``).
        self.ringing: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()

    def send(self, data: bytes) -> None:
        if self.ws is not None:
            data = self.ws.send(data)
        _write(self.writer, data, self.transport)

    def sent_invite(self, branch: str, data: bytes, now: float, forker: str = "") -> None:
        self.ringing[branch] = (now, data, forker)
        self.ringing.move_to_end(branch)
        while len(self.ringing) > RINGING_PER_FLOW:
            self.ringing.popitem(last=False)

    def answered(self, branch: str) -> None:
        self.ringing.pop(branch, None)

    def unanswered(self, now: float) -> list[bytes]:
        """The INVITEs still ringing on this connection (not yet ended by Timer C)."""
        return [data for sent, data, _ in self.ringing.values() if now - sent < FORK_LIFETIME]

    def forked_by(self, forker: str, now: float) -> list[bytes]:
        """The INVITEs ringing here that the member ``forker`` (a node key) forked, which is
        gone: nothing can gather their answers or cancel them any more.  Each stops ringing
        here and is returned, for the shell to cancel (``_cancel_forks_of``)."""
        found = [(branch, data) for branch, (sent, data, by) in self.ringing.items()
                 if by == forker and now - sent < FORK_LIFETIME]
        for branch, _ in found:
            del self.ringing[branch]
        return [data for _, data in found]

    def close(self) -> None:
        self.writer.close()


class CancelledInvites:
    """The INVITEs a member CANCELled because the member that forked them died, by our
    branch, over UDP and on connections alike: the phone's failure (its 487, and over UDP
    each copy of it) is ACKed by the member (§17.1.1.3) and goes no further -- the caller
    had its answer.  Each lives ``lifetime``, ``limit`` of them at most.  Pure: time is an
    argument."""

    def __init__(self, lifetime: float = CANCELLED_KEPT, limit: int = CANCELLED_LIMIT) -> None:
        self.lifetime, self.limit = lifetime, limit
        self._entries: OrderedDict[str, tuple[float, SipRequest, Destination]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._entries)

    def add(self, invite: SipRequest, destination: Destination, now: float) -> None:
        branch = invite.top_via().branch or ""
        self._entries[branch] = (now, invite, destination)
        self._entries.move_to_end(branch)
        while self._entries and (len(self._entries) > self.limit
                                 or next(iter(self._entries.values()))[0] < now - self.lifetime):
            self._entries.popitem(last=False)

    def get(self, branch: str, now: float) -> tuple[SipRequest, Destination] | None:
        """The INVITE ``branch`` and where it went, if cancelled here within ``lifetime``."""
        entry = self._entries.get(branch)
        return entry[1:] if entry is not None and entry[0] >= now - self.lifetime else None


class SipWorkload:
    role = "sipfarm"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accepting = True
        self.farm: SipFarm | None = None
        self.udp: _UdpSocket | None = None
        self.server = None                 # asyncio.Server, or colony.proxy_listener's behind a balancer
        self.stream_servers: list = []     # TLS, WS, WSS
        # Connections from proxy_protocol_from begin with the balancer's PROXY header, and
        # the peer address every handler reads is then the phone's (colony.proxy_listener).
        # TLS stays after the header and after _admit, as without a balancer.
        self._proxied = {"balancers": Balancers.parse(settings.proxy_protocol_from),
                         "header_timeout": settings.proxy_protocol_timeout}
        self.connections: dict[tuple[str, int], _Flow] = {}
        # Connections open per source (colony.netaddr.counting_unit), phones' and those still in their
        # handshake alike: one address could otherwise take all MAX_CONNECTIONS.
        self._per_source: dict[str, int] = {}
        # All of those together, held to MAX_CONNECTIONS: ``connections`` has a flow only once
        # it is open, so connections in their TLS or WebSocket handshake went uncounted.
        self._admitted_count = 0
        self.counters: SharedCounters | None = None
        self._inflight: set[asyncio.Task] = set()
        self._room = asyncio.Event()     # set when fewer than MAX_INFLIGHT are in hand (_room_for_a_message)
        self._readers: set[asyncio.Task] = set()
        self._runtime = None
        self._usage: dict[tuple[str, str, str], float] = {}   # (domain, account, metric) -> sum
        self.farm_address: tuple[str, int] = ("", 0)
        self._members: dict[str, NodeRecord] = {}        # sipfarm records, by node id
        # Relayed requests by their reply token, for the bus to say nobody got them (_relay_reply).
        self._relay_inbox = ""
        self._relays_watched: OrderedDict[str, tuple[float, bytes, Destination]] = OrderedDict()
        self._relay_tokens = 0
        # Node keys of the members that have sent INVITEs onto this member's connections: when
        # one is gone, the INVITEs it forked that still ring here are cancelled (_Flow.forked_by).
        self._forkers: set[str] = set()
        self._cancelled = CancelledInvites()
        # The UDP branches this member forked and put on the wire itself, each entrusted to
        # the Call-ID's next owner, which cancels it should this member die (entrusted_branches.py).
        self._entrustments = Entrustments(FORK_LIFETIME)
        # Members gone by their heartbeat alone, by node key: when first found so (_dead).
        self._gone_since: dict[str, float] = {}
        self.listeners: dict[str, str] = {}               # ours, as our node record names them
        self._suspect: dict[str, float] = {}             # node id -> monotonic time to trust again
        self._answered_at: dict[str, float] = {}         # node id -> when it last answered a hand-over
        self._ready: list[str] = []                      # ready_members(), reused until _ready_until
        self._live: frozenset[str] = frozenset()          # ... and those draining too (live_members)
        self._ready_until = 0.0
        # The inner relay (inner_frames.py): this member's listener, the address it advertises,
        # the key its frames are signed with, the other members' listeners (resolved) and one
        # connected socket per listener sent to -- connected, so that an ICMP port-unreachable
        # from a member that died comes back as ConnectionRefusedError on the next send.
        self.inner: _UdpSocket | None = None
        self.inner_address: tuple[str, int] = ("", 0)
        self._relay_key: RelayKey | None = None
        self._inner_peers: dict[str, tuple[int, tuple]] = {}       # node id -> (family, sockaddr)
        self._inner_sockets: dict[tuple, socket.socket] = {}        # sockaddr -> connected socket
        # Client transactions of the requests this member forwards over UDP (retransmission.py).
        self.proxy_transactions = ProxyClientTransactions(Timers(t1=settings.sip_timer_t1, t2=settings.sip_timer_t2))
        self._timers_changed = asyncio.Event()
        self._traced = False        # a tracer provider is installed (start() looks)
        self._turn = 0.0            # seconds the event loop last took to come round (_measure_turns)

    async def start(self, runtime) -> dict[str, str]:
        self._runtime = runtime
        self._traced = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        if self._proxied["balancers"]:
            self._proxied["refused"] = refusal_counter(runtime.metrics.registry)
        s = self.settings
        js = runtime.nc.jetstream()
        kv = await js.key_value(names.BUCKET_SIP_BINDINGS)
        self.counters = SharedCounters(js, runtime.node_id, flush_interval=s.rate_counter_flush_interval)
        await self.counters.start(runtime.task_owner)
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            self.udp = _UdpSocket(loop, await _bind_udp(s.host, s.sip_port), self.received, self._denied_address)
            # A burst that arrives while the loop is busy waits in the kernel: the default
            # buffer (~200 KiB) overflowed under 200 calls at once and lost answers (each a
            # retransmission or a Timer B 408 later).  The kernel caps this at rmem_max.
            with suppress(OSError):
                self.udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            port = self.udp.get_extra_info("sockname")[1]
            # TCP on the same port number as UDP (phones expect both on one port).
            try:
                self.server = await start_server(lambda r, w: self._admitted(r, w, "TCP", self._connection),
                                                 s.host, port, reuse_address=True, name="sip", **self._proxied)
                break
            except OSError:
                self.udp.close()
                # With sip_port 0 the kernel chose a UDP port whose TCP twin is taken (an
                # outgoing connection may hold it): choose again.  A fixed port is an error.
                if s.sip_port != 0 or attempt == 19:
                    raise
        listeners = {"sip": f"{s.advertised_host}:{port}"}
        listeners.update(await self._start_secure_listeners())

        def meter(count: UsageCount) -> None:
            # Summed per account and metric, published every usage_flush_interval: one
            # JetStream write per registration was as costly as the registration itself.
            key = (count.domain, count.account or "", count.metric)
            self._usage[key] = self._usage.get(key, 0.0) + count.amount

        runtime.spawn("sip-usage", self._usage_loop, restart=True)

        secret = await self._secret(kv)
        self._relay_key = RelayKey.from_secret(secret)
        self.inner = _UdpSocket(loop, await _bind_udp(s.host, s.sip_inner_port), self._inner_received)
        with suppress(OSError):     # bursts of hand-overs wait in the kernel, as on the SIP socket
            self.inner.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        self.inner_address = (s.advertised_host, self.inner.get_extra_info("sockname")[1])
        # In the node record: the other members send hand-overs there (a record without it is
        # a member of the previous version, asked over the bus), and `colony status` shows it.
        listeners["sip_inner"] = f"{self.inner_address[0]}:{self.inner_address[1]}"

        self.farm_address = (s.advertised_host, port)
        self.listeners = listeners
        store = BindingStore(kv, time.time, js=js, trust_seconds=s.sip_bindings_cache_seconds)
        runtime.spawn("sip-bindings-watch", store.watch, restart=True)
        self.farm = SipFarm(
            s, runtime.node_id, store=store, dialogs=kv, auth=AuthClient(runtime.nc),
            counters=self.counters, secret=secret, address=(s.advertised_host, port),
            registry=runtime.metrics.registry, meter=meter, listeners=self._listeners_of,
            home_regions=await home_regions(s, runtime.nc) if len(s.region_list) > 1 else None)
        runtime.metrics.add_callback(self.farm.credentials.metrics)
        runtime.spawn("sip-directory-watch", self._watch_directory, restart=True)
        self._bus_metrics = runtime.metrics.once(BusRequestMetrics)
        await runtime.nc.subscribe(names.sip_relay_subject(runtime.node_id), cb=self._on_relay)
        self._relay_inbox = runtime.nc.new_inbox()
        await runtime.nc.subscribe(f"{self._relay_inbox}.*", cb=self._on_relay_unread)
        await runtime.nc.subscribe(names.sip_spread_subject(runtime.node_id), cb=self._on_handle)
        runtime.spawn("sip-members", self._watch_members, restart=True)
        runtime.spawn("sip-timer-c", self._timer_c_loop, restart=True)
        runtime.spawn("sip-retransmit", self._retransmit_loop, restart=True)
        runtime.spawn("sip-turns", self._measure_turns, restart=True)
        return listeners

    def _gone(self, member: str) -> bool:
        """The member whose node key is ``member`` is gone: its record was deleted or says
        FAILED (the controller's verdict) or STOPPED, or its heartbeat is older than
        ``node_ttl`` (a SIGKILL, a lost host; a draining member still beats and holds its
        connections).  No verdict before the nodes watch has delivered a record."""
        if not self._members:
            return False
        fresh = datetime.now(timezone.utc) - timedelta(seconds=self.settings.node_ttl)
        for record in self._members.values():
            if names.node_key(record.id) == member:
                return record.state in GONE_STATES or record.heartbeat_at < fresh
        return True

    def _fail_lost_branches(self) -> None:
        """Branches this member sent through a member that is gone fail now.  An INVITE
        ringing on a phone whose connection that member held was lost with it: nothing
        answered it, and its caller heard nothing until Timer C (200 s).  Each gets a 430 Flow Failed as its
        answer (``SipFarm.flows_lost_with``), handled like the phone's: the fork passes on
        the best answer once every branch has one, so the others still ring.  Called every
        second (a heartbeat goes stale by time, not by a write) and at once when a member's
        record is deleted or says FAILED or STOPPED -- for a member gone by its heartbeat
        alone, once it is dead, not paused (``_dead``)."""
        if self.farm is None or self._runtime is None:
            return
        me = names.node_key(self._runtime.node_id)
        through = [m for m in self.farm.sent_invites.members() if m != me and self._gone(m)]
        forkers = [f for f in self._forkers.union(self.farm.entrusted.forkers()) if f != me and self._gone(f)]
        for member in [m for m in self._gone_since if m not in through and m not in forkers]:
            del self._gone_since[member]          # back (its pause ended), or nothing of it left here
        for member in through:
            if self._dead(member):
                self._fail_branches_through(member)
        self._cancel_orphaned_forks(forkers)

    def _cancel_orphaned_forks(self, gone: list[str]) -> None:
        """INVITEs ringing on this member's connections, or put on the wire from here or
        entrusted here, whose forking member is among ``gone`` -- dead, not paused (``_dead``)
        -- are cancelled (``_cancel_forks_of``).  Called by ``_fail_lost_branches``."""
        for forker in gone:
            if self._dead(forker):
                self._forkers.discard(forker)
                self._cancel_forks_of(forker)

    def _dead(self, member: str) -> bool:
        """Whether ``member`` (a node key), which ``_gone`` says is gone, is dead with its forks
        and connections.  Its record deleted or STOPPED: yes.  Gone by its heartbeat alone
        (FAILED, or stale) it may be paused -- SIGSTOP, a stalled VM, heartbeats that did not
        reach the bus -- and rejoin with its forks and its phones' connections: ended at once,
        its calls stopped ringing while it could still carry their answers, and a phone that
        answered before its CANCEL or 430 was a call whose caller had heard 480.  So its inner
        listener is sent a signed datagram that asks nothing (an empty ``E`` frame) every
        second: a process that died left no socket on the port, and the ICMP port-unreachable
        comes back as ConnectionRefusedError on the next send (an unreachable host as its own
        error).  Without one (paused, or ICMP lost), 64*T1 after it was first found gone: a
        call outlives a pause that long."""
        record = next((r for r in self._members.values() if names.node_key(r.id) == member), None)
        if record is None or record.state == NodeState.STOPPED:
            return True
        now = time.monotonic()
        if now - self._gone_since.setdefault(member, now) >= 64 * self.settings.sip_timer_t1:
            return True
        peer = self._inner_peers.get(record.id)
        if peer is None or self._relay_key is None:
            return True          # nothing to ask it over: its heartbeat's verdict
        try:
            probe = seal_entrusted(self._relay_key, Entrusted([]), record.id, self._runtime.node_id, self.inner_address)
            self._inner_socket(peer).send(probe)
        except (BlockingIOError, InterruptedError):
            return False         # our send buffer is full: asked again in a second
        except ConnectionRefusedError:
            return True          # nothing on its port
        except OSError as exc:
            # Its host or network unreachable: dead.  Anything else is our own trouble -- no
            # descriptor for the probe's socket, no buffers -- and proves nothing about it:
            # asked again in a second (64*T1 still ends the wait).
            return exc.errno in _UNREACHABLE
        except ValueError:
            return True          # an address no frame carries: nothing to ask it over
        return False

    def _cancel_forks_of(self, forker: str) -> None:
        """The member ``forker`` (a node key) is gone, and the forks it kept with it: a phone on
        a connection here ringing for one of them would ring on with nobody to gather its
        answer or cancel it, and the caller heard no final answer from the farm (a CANCEL
        from the caller found no fork either).  Each such INVITE is cancelled on its
        connection (§9.1, built from the INVITE as sent: the phone stops ringing) and fails
        as a lost flow's does (430, ``_flow_failed``): whichever member now owns the Call-ID
        passes it on -- the caller hears 480.  The phone's 487 is ACKed here (_absorbed_after_cancel).
        So for the UDP branches ``forker`` put on the wire itself and entrusted here
        (``SipFarm.entrusted_by``): the CANCEL goes from this member's socket, under that INVITE's Via."""
        now = time.monotonic()
        lost = self.proxy_transactions.forked_by(forker)          # over UDP: (INVITE, data, destination)
        if self.farm is not None:
            lost += [(invite, invite.encode(), destination) for invite, destination in self.farm.entrusted_by(forker)]
        for key, flow in list(self.connections.items()):
            if flow.ringing:
                for data in flow.forked_by(forker, now):
                    try:
                        lost.append((parse_message(data, len(data)), data, (flow.transport, key[0], key[1])))
                    except Exception:     # ours, so it parses; if not, Timer C at the phone's end
                        continue
        for invite, data, destination in lost:
            try:
                cancel = cancel_of(invite).encode()
                self._cancelled.add(invite, destination, now)
            except Exception:     # ours, so it reads
                continue
            self._send_now(cancel, destination)
            self._flow_failed(data, destination)
        if lost:
            log.info("%d ringing INVITE(s) forked by member %s, which is gone: cancelled, the callers told 480",
                     len(lost), forker)

    def _absorbed_after_cancel(self, response: SipResponse) -> bool:
        """A failure answering an INVITE cancelled because its forking member died
        (``_cancel_forks_of``): ACKed here, as the forker's client transaction would have
        (§17.1.1.3), and goes no further -- its caller has had its answer.  A 2xx (the phone
        answered before the CANCEL came) goes on."""
        try:
            if response.cseq().method != "INVITE":
                return False
            found = self._cancelled.get(response.top_via().branch or "", time.monotonic())
        except Exception:
            return False
        if found is None:
            return False
        invite, destination = found       # kept: each copy of the 487 (UDP) gets the ACK again
        with suppress(Exception):         # ours, so it builds
            self._send_now(build_ack(invite, response).encode(), destination)
        return True

    def _send_now(self, data: bytes, destination: Destination) -> None:
        """``data`` out to ``destination`` from this member, if it can go at once: over UDP, or
        on a connection this member holds (a CANCEL over UDP is then retransmitted)."""
        if destination[0] == "UDP":
            if self.udp is not None:
                self.udp.sendto(data, (destination[1], destination[2]))
                if not data.startswith(b"ACK "):
                    self._start_client_transaction(data, destination)
        elif (flow := self.connections.get((destination[1], destination[2]))) is not None:
            flow.send(data)

    def _fail_branches_through(self, member: str) -> None:
        """Every branch without a final answer that went through ``member`` (a node key) is
        lost: each fails with 430 (``_fail_lost_branches``)."""
        lost = self.farm.flows_lost_with(member)
        if lost:
            log.info("%d ringing INVITE branch(es) lost with member %s: failed with 430", len(lost), member)
        for data, destination in lost:
            self._track(self._handle(data, destination))

    def _listeners_of(self, member: str) -> dict[str, str]:
        """The listeners of the member whose node key is ``member`` (ours, or from its node
        record): a Record-Route for a phone on TLS names that member's TLS listener."""
        if self._runtime is not None and member == names.node_key(self._runtime.node_id):
            return self.listeners
        for record in self._members.values():
            if names.node_key(record.id) == member:
                return record.addresses
        return {}

    async def _start_secure_listeners(self) -> dict[str, str]:
        """SIP over TLS (RFC 3261 §26), WebSocket and secure WebSocket (RFC 7118), with the
        certificate every TLS listener of the cluster uses (``colony.tlsfiles``)."""
        s, found = self.settings, {}
        files = configured(s)
        context = server_context(files.cert, files.key) if files is not None else None
        if s.sip_tls and context is None:
            log.warning("SIP over TLS and WSS are off: no certificate (set COLONY_TLS_CERT_FILE and "
                        "COLONY_TLS_KEY_FILE, or COLONY_SIP_TLS=false to silence this)")
        plans = []
        if s.sip_tls and context is not None:
            plans.append(("sip_tls", "TLS", s.sip_tls_port, context))
        if s.sip_ws:
            plans.append(("sip_ws", "WS", s.sip_ws_port, None))
        if s.sip_tls and context is not None:
            plans.append(("sip_wss", "WSS", s.sip_wss_port, context))
        for name, transport, port, ssl in plans:
            handler = self._connection if transport == "TLS" else self._ws_connection
            # TLS is begun by _admitted, after the source is counted: a listener's own
            # handshake came first, uncounted -- 3,000 silent connections to the TLS port
            # from one address held 1,500 descriptors and 120 MB for the handshake timeout.
            server = await start_server(
                lambda r, w, t=transport, h=handler, c=ssl: self._admitted(r, w, t, h, c), s.host, port,
                reuse_address=True, name=name, **self._proxied)
            self.stream_servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            # host:port like every address in a node record; the key names the protocol.
            found[name] = f"{s.advertised_host}:{bound}"
        return found

    async def _secret(self, kv) -> bytes:
        """The farm-wide nonce secret: the first member makes it, the others read it."""
        fresh = base64.b64encode(os.urandom(32))
        with suppress(KeyWrongLastSequenceError):
            await kv.create(names.SIP_NONCE_SECRET_KEY, fresh)
        try:
            return base64.b64decode((await kv.get(names.SIP_NONCE_SECRET_KEY)).value)
        except KeyNotFoundError:
            return base64.b64decode(fresh)

    # --- input ----------------------------------------------------------------------------

    def received(self, data: bytes, source: Destination) -> None:
        if self.farm is None:
            return
        # Parsed once here: the spreading, the client transactions and the farm all read it.
        parsed = self.farm.parse(data)
        if source[0] != "UDP" and isinstance(parsed, SipResponse) and parsed.status >= 200:
            flow = self.connections.get((source[1], source[2]))
            if flow is not None and flow.ringing:
                flow.answered(parsed.top_via().branch or "")
        if isinstance(parsed, SipResponse) and not self._observed_here(parsed, udp=source[0] == "UDP"):
            return
        # when overloaded: dropped, as by a full socket buffer
        self._track(self._handle(data, source, parsed, time.monotonic()))

    async def _handle(self, data: bytes, source: Destination, parsed=None, arrived: float | None = None) -> None:
        try:
            if parsed is None:
                parsed = self.farm.parse(data)
            if (arrived is not None and (self._turn > LATE or time.monotonic() - arrived > LATE)
                    and self._starts_work(parsed) and self._owner(parsed) is None):
                # Overloaded (RFC 3261 §21.5.4): a new transaction that waited this long for
                # its turn gets 503 + Retry-After now, instead of work that ends in a Timer
                # B/F 408 half a minute later; what finishes calls in progress goes on.  Only
                # what this member would work on itself: a packet another member owns may be
                # a copy of a request that member is working on (an INVITE ringing there,
                # whose caller a 503 from here would end), and passing it on is cheap.
                out = self.farm.refuse_overloaded(parsed, source)
            else:
                out = await self._handle_parsed(data, source, parsed)
        except Exception:
            log.exception("SIP message from %s:%s failed", source[1], source[2])
            return
        await self._send_all(out)

    @staticmethod
    def _starts_work(parsed) -> bool:
        """A request that starts a transaction of its own (not CANCEL: it ends work)."""
        return (isinstance(parsed, SipRequest) and parsed.method != "CANCEL"
                and SipFarm.spread_key_of(parsed) is not None)

    async def _handle_parsed(self, data: bytes, source: Destination, parsed) -> list[Outbound]:
        # One SERVER span per packet from a phone or a peer, where it arrives: its context
        # rides on the hand-over to the Call-ID's owner (span ``sip.handle``) and on the owner's
        # credential and binding requests over the bus, so a REGISTER or an INVITE is one
        # trace across members and into the admin API's auth service.  With no tracer
        # provider installed (no ``otlp_endpoint``) the span would record nothing and carry
        # no context, yet building it and its attributes was 4-5 % of a busy member's CPU
        # (py-spy under a REGISTER load): then there is none.  Whether one is installed is
        # settled before start (service_main's setup_tracing); asking the API per packet
        # read os.environ each time (1.6 % of the member's CPU).
        if not self._traced:
            return await self._route(data, source, parsed)
        with _tracer.start_as_current_span(_span_name(parsed), kind=SpanKind.SERVER,
                                           attributes=_span_attributes(parsed, source)):
            return await self._route(data, source, parsed)

    async def _route(self, data: bytes, source: Destination, parsed) -> list[Outbound]:
        owner = self._owner(parsed)
        out = None
        if owner is not None:
            # A datagram goes to the owner as a datagram (the inner relay); a packet from a
            # connection, which its phone does not send again, over the bus's request/reply.
            relayed = self._relay_inner(owner, data, source) if source[0] == "UDP" else None
            if relayed:
                return []          # the owner sends the answers here, to the inner listener
            if relayed is None:
                out = await self._ask_owner(owner, data, source,
                                            answered_again=isinstance(parsed, SipRequest) and parsed.method == "REGISTER")
        if out is None:
            if not self.accepting and isinstance(parsed, SipRequest) and parsed.method == "INVITE" \
                    and self._starts_work(parsed):
                # Draining, and no READY member takes this new call: refused (§21.5.4, 503 +
                # Retry-After) rather than forked here.  Its fork would ring on as this member's
                # work (active_work), so under steady calls -- a farm of one, or every member
                # draining at once -- the member never reported empty before drain_timeout.
                return self.farm.refuse_overloaded(parsed, source, draining=True)
            out = await self.farm.handle(data, source, parsed=parsed)
        return out

    # --- spreading new work over READY members ----------------------------------------------

    def ready_members(self) -> list[str]:
        """The READY members with a fresh heartbeat, not passed over.  Worked out again at most
        every READY_RECHECK seconds, or at once when a member record or a suspicion changes:
        every new transaction asks, and building the list per packet (a clock read, a
        timedelta, a scan) was 4 % of a busy member's CPU.  Freshness is judged against
        node_ttl (seconds), so the reuse changes no decision by more than READY_RECHECK."""
        now = time.monotonic()
        if now < self._ready_until:
            return self._ready
        fresh = datetime.now(timezone.utc) - timedelta(seconds=self.settings.node_ttl)
        live = [r for r in self._members.values()
                if r.state in (NodeState.READY, NodeState.NOT_READY) and r.heartbeat_at >= fresh
                and self._suspect.get(r.id, 0) <= now]
        self._ready = [r.id for r in live if r.state == NodeState.READY]
        self._live = frozenset(r.id for r in live)
        suspicions_end = [t for t in self._suspect.values() if t > now]
        self._ready_until = min([now + READY_RECHECK, *suspicions_end])
        return self._ready

    def live_members(self) -> frozenset[str]:
        """The READY members and the NOT_READY ones (draining) with a fresh heartbeat, not
        passed over: those still holding what they started (``ready_members``' timing)."""
        self.ready_members()
        return self._live

    def _owner(self, parsed) -> str | None:
        """The other member that should handle this packet (``SipFarm.parse``'s result), or
        None: handle it here."""
        handler = SipFarm.handler_of(parsed)
        if handler is not None:
            # An answer to a re-INVITE: the member that routed it has what its failure's ACK
            # is made from.  Gone or not READY: handled here, the caller's ACK goes on instead.
            try:
                owner = from_token(handler)
            except ValueError:
                return None
            return owner if owner != self._runtime.node_id and owner in self.ready_members() else None
        forker = SipFarm.forker_of(parsed)
        if forker is not None:
            # An answer to a fork: the member that forked it gathers the branches' answers, while
            # it lives -- draining too (it waits for its ringing forks before it reports empty).
            # Gone: by the Call-ID, to the member that cancels a dead forker's branches.
            with suppress(ValueError):
                owner = from_token(forker)
                if owner in self.live_members():
                    return owner if owner != self._runtime.node_id else None
        key = SipFarm.spread_key_of(parsed)
        if key is None:
            return None
        ready = self.ready_members()
        if len(ready) == 1 and ready[0] == self._runtime.node_id:
            return None
        owner = choose(key, ready)
        return owner if owner not in (None, self._runtime.node_id) else None

    async def _ask_owner(self, owner: str, data: bytes, source: Destination,
                         answered_again: bool = False) -> list[Outbound] | None:
        """What the owner says to send for the packet, or None: handle it here.
        ``answered_again``: the owner answers a copy of this request from its answer cache (a
        REGISTER), so a late answer may be left to the phone's retransmission."""
        try:
            payload = SpreadPacket(data, source, self._runtime.node_id, self.farm_address).to_frame()
        except ValueError as exc:     # an address the frame cannot carry (a space in a host name)
            log.warning("cannot spread a SIP packet from %s:%s: %s", source[1], source[2], exc)
            return None
        try:
            # Headers only with a tracer provider: without one there is no context to carry,
            # and propagating nothing still cost a dict and the propagators' walk per packet.
            msg = await self._runtime.nc.request(names.sip_spread_subject(owner), payload, timeout=HANDLE_TIMEOUT,
                                                 headers=(inject_headers() or None) if self._traced else None)
            out = _made_by(SpreadAnswers.from_frame(msg.data), names.node_key(owner))
            self.farm.metrics.relays.inc()
            self._answered_at[owner] = time.monotonic()
            return out
        except (NatsTimeoutError, TimeoutError) as exc:
            answered_at = self._answered_at.get(owner)
            if (answered_again and source[0] == "UDP" and owner in self.ready_members()
                    and answered_at is not None and time.monotonic() - answered_at < SLOW_OWNER_GRACE):
                self.farm.metrics.dropped.labels(reason="owner slow").inc()
                return []      # answered late, not dead: the phone's copy gets the owner's answer
            failure = exc
        except (NoRespondersError, FrameError) as exc:
            failure = exc
        self._pass_over(owner, type(failure).__name__)
        return None

    def _pass_over(self, owner: str, why: str) -> None:
        log.info("member %s did not take a SIP packet (%s): handled here", owner, why)
        self._suspect[owner] = time.monotonic() + SUSPECT_FOR
        self._ready_until = 0.0

    # --- the inner relay: hand-overs of datagrams as datagrams (inner_frames.py) -------------

    def _relay_inner(self, owner: str, data: bytes, source: Destination) -> bool | None:
        """Send a datagram that ``owner`` is to handle to its inner listener, and wait for
        nothing: True, sent (or lost as on the wire); False, the owner is gone (an ICMP
        port-unreachable came back): it is passed over, handle the packet here; None, this
        hand-over cannot go as a datagram (the owner has no inner listener -- a member of the
        previous version -- the frame is larger than a datagram, or this member cannot send
        one for its own reasons): ask over the bus."""
        peer = self._inner_peers.get(owner)
        if peer is None or self.inner is None:
            return None
        node_id = self._runtime.node_id
        traceparent = inject_headers().get("traceparent") if self._traced else None
        try:
            frame = seal_packet(self._relay_key, SpreadPacket(data, source, node_id, self.farm_address), owner,
                                node_id, self.inner_address, traceparent)
        except ValueError:
            return None      # an address no frame carries: _ask_owner says so and it is handled here
        if len(frame) > MAX_DATAGRAM:
            return None
        try:
            self._inner_socket(peer).send(frame)
        except ConnectionRefusedError:
            # The owner's port answered ICMP port-unreachable to an earlier frame: it died (or
            # restarted elsewhere, and its new record is on the way).  That earlier packet is
            # lost, as on the wire; this one is handled here.
            self._pass_over(owner, "inner relay refused")
            return False
        except (BlockingIOError, InterruptedError):
            self.farm.metrics.dropped.labels(reason="inner relay busy").inc()
            return True      # a full send buffer: lost, as on the wire
        except OSError as exc:
            if exc.errno not in _UNREACHABLE:
                # Our own trouble -- no descriptor for the socket, no buffers -- says nothing
                # of the owner (as with the liveness probe): the bus carries this one.
                return None
            self._pass_over(owner, f"inner relay: {exc}")
            return False
        self.farm.metrics.relays.inc()
        return True

    def _inner_socket(self, peer: tuple[int, tuple]) -> socket.socket:
        family, address = peer
        sock = self._inner_sockets.get(address)
        if sock is None:
            if len(self._inner_sockets) >= INNER_PEERS_KEPT:     # members come and go: bounded
                self._close_inner_sockets()
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(address)     # an address, never a name: no lookup here
            self._inner_sockets[address] = sock
        return sock

    def _close_inner_sockets(self) -> None:
        for sock in self._inner_sockets.values():
            sock.close()
        self._inner_sockets.clear()

    async def _learn_inner(self, record: NodeRecord) -> None:
        """Where ``record``'s member takes hand-overs, looked up now (a name in a record
        would otherwise be resolved by every send, blocking the loop)."""
        address = record.addresses.get("sip_inner")
        if address is None:
            self._inner_peers.pop(record.id, None)
            return
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("member %s's inner relay %s does not resolve (%s): its hand-overs go over the bus",
                        record.id, address, exc)
            self._inner_peers.pop(record.id, None)
            return
        self._inner_peers[record.id] = (infos[0][0], infos[0][4])

    def _inner_received(self, data: bytes, source: Destination) -> None:
        """A datagram on the inner listener: a packet to handle here, or answers to send."""
        if self.farm is None or self._relay_key is None:
            return
        try:
            frame = open_frame(self._relay_key, data)
        except InnerFrameError as exc:
            self.farm.metrics.dropped.labels(reason=f"inner {exc.reason}").inc()
            log.debug("inner relay: dropped a datagram from %s:%s: %s", source[1], source[2], exc)
            return
        node_id = self._runtime.node_id
        # Sent to another member (a replay, a stale address): not ours to act on.  A packet
        # must name the member that sent it as the one it arrived at (the answers go there).
        if frame.to != node_id or (frame.packet is not None and frame.packet.arrived_at != frame.sender):
            self.farm.metrics.dropped.labels(reason="inner misaddressed").inc()
            return
        if frame.packet is not None:
            self._track(self._handle_inner(frame))
        elif frame.entrusted is not None:
            self._keep_entrusted(frame)
        else:
            self._track(self._send_all(_made_by(frame.answers, names.node_key(frame.sender))))

    def _keep_entrusted(self, frame: InnerFrame) -> None:
        """A branch the sender forked and put on the wire itself, to cancel should it die, and
        the branches it entrusted before that got their final answer."""
        forker = names.node_key(frame.sender)
        entrusted = frame.entrusted
        if entrusted.forgotten:
            self.farm.entrusted.forget(forker, entrusted.forgotten)
        if entrusted.destination is not None and not self.farm.entrust(forker, entrusted.invite, entrusted.destination):
            self.farm.metrics.dropped.labels(reason="inner undecodable").inc()

    async def _handle_inner(self, frame: InnerFrame) -> None:
        if self._traced:
            context = extract_context({"traceparent": frame.traceparent} if frame.traceparent else None)
            with _tracer.start_as_current_span("sip.handle", context=context):
                out = await self._handle_for(frame.packet)
        else:      # no provider: the span would record nothing (see _handle_parsed)
            out = await self._handle_for(frame.packet)
        if not out:
            return
        node_id = self._runtime.node_id
        try:
            frames, left_out = seal_answers(self._relay_key, out, frame.sender, node_id, self.inner_address)
        except ValueError:     # a sender name no frame carries: signed, so a member's bug
            self.farm.metrics.dropped.labels(reason="unsendable").inc(len(out))
            return
        if left_out:
            # A destination no frame can carry (a Contact maddr with a space, from a phone's
            # packet), or one item larger than a datagram: nothing could be sent there.
            self.farm.metrics.dropped.labels(reason="unsendable").inc(left_out)
        peer = self._inner_peers.get(frame.sender)
        if peer is None:      # its record not seen yet: the address it gave, if it is one
            if not _is_address(frame.reply_to[0]):
                self.farm.metrics.dropped.labels(reason="inner no route").inc(len(frames))
                return
            family = socket.AF_INET6 if ":" in frame.reply_to[0] else socket.AF_INET
            peer = (family, frame.reply_to)
        for data in frames:
            try:
                self._inner_socket(peer).send(data)
            except OSError as exc:     # the asker died or is swamped: lost, as on the wire
                self.farm.metrics.dropped.labels(reason="inner relay busy" if isinstance(exc, BlockingIOError)
                                                 else "inner relay refused").inc()

    async def _send_all(self, items: list[Outbound]) -> None:
        for item in items:
            try:
                await self._send(item)
            except (OSError, ValueError) as exc:   # an address this socket cannot reach
                log.info("could not send a SIP message to %s: %s", item.destination, exc)

    async def _on_handle(self, msg) -> None:
        # nats-py runs one subscription's callbacks one after another: work on each packet in
        # a task of its own, or every spread packet would wait for the one before.
        self._track(self._metered(names.SIP_SPREAD, lambda answer: self._handle_spread(msg, answer)))

    async def _on_relay(self, msg) -> None:
        self._track(self._metered(names.SIP_RELAY, lambda answer: self._relay(msg)))

    async def _metered(self, subject: str, work) -> None:
        """RED metrics of the farm's bus traffic (``colony_bus_requests_*``), by served subject."""
        with self._bus_metrics.observe(subject) as answer:
            await work(answer)

    def _track(self, coro) -> None:
        if len(self._inflight) >= MAX_INFLIGHT:
            coro.close()
            return      # overloaded: the phone retransmits
        # Started at once, a task only from its first wait (eager_task.py): most packets (a
        # remembered account's REGISTER, a challenge, a cached answer) never wait, and a
        # task per packet was ~5 % of a busy member's CPU.  Its work catches its own errors.
        task = start_eagerly(coro)
        if task is not None:
            self._inflight.add(task)
            task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if len(self._inflight) < MAX_INFLIGHT:
            self._room.set()

    async def _room_for_a_message(self) -> None:
        """Wait while MAX_INFLIGHT packets are in hand.  A datagram past that is dropped (its
        phone sends it again); a connection's message is never sent again -- one TCP client
        pipelining 20,000 REGISTERs had half of them dropped unanswered -- so its connection
        is read no further until there is room, and TCP's flow control holds the phone."""
        while len(self._inflight) >= MAX_INFLIGHT:
            self._room.clear()
            await self._room.wait()

    async def _handle_spread(self, msg, answer) -> None:
        try:
            packet = SpreadPacket.from_frame(msg.data)
        except FrameError as exc:
            answer.refused()
            log.info("dropped a SIP packet spread to us that does not decode: %s", exc)
            return
        if self._traced:
            with _tracer.start_as_current_span("sip.handle", context=extract_context(msg.headers)):
                out = await self._handle_for(packet)
        else:      # no provider: the span would record nothing (see _handle_parsed)
            out = await self._handle_for(packet)
        try:
            reply = SpreadAnswers.to_frame(out)
        except ValueError:
            # A destination the frame cannot carry comes from a phone's packet (a registered
            # Contact's maddr with a space or non-ASCII: nothing could send there).  Left
            # out, the rest answered in time: no answer kept the asker waiting a second, then
            # had it pass us over -- one such packet every 10 s took a member out of the spread.
            kept = [item for item in out if _frames(item)]
            self.farm.metrics.dropped.labels(reason="unsendable").inc(len(out) - len(kept))
            reply = SpreadAnswers.to_frame(kept)
        await msg.respond(reply)

    async def _handle_for(self, packet: SpreadPacket) -> list[Outbound]:
        try:
            parsed = self.farm.parse(packet.data)
            if isinstance(parsed, SipResponse) and not self._observed_here(parsed, udp=packet.source[0] == "UDP"):
                return []
            return await self.farm.handle(packet.data, packet.source, flow_member=packet.arrived_at,
                                          flow_address=packet.address, parsed=parsed)
        except Exception:
            log.exception("SIP message from %s:%s (spread to us) failed", packet.source[1], packet.source[2])
            return []

    async def _watch_directory(self) -> None:
        """Tell the farm's credential cache (``credentials.py``) of every write to the
        ``directory`` bucket from now on: a new password, a disabled or deleted account drops
        its remembered HA1 at once.  Only the keys are read (headers only)."""
        prefix = f"$KV.{names.BUCKET_DIRECTORY}."
        cache = self.farm.credentials

        async def seen(msg) -> None:
            kind, _, token = msg.subject[len(prefix):].partition(".")
            try:
                name = from_token(token)
            except ValueError:
                name = token
            cache.on_directory_change(kind, name)

        sub = await self._runtime.nc.jetstream().subscribe(
            prefix + ">", stream=f"KV_{names.BUCKET_DIRECTORY}", cb=seen, ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW, headers_only=True)
        cache.watching = True
        try:
            await asyncio.Event().wait()
        finally:
            cache.watching = False
            with suppress(Exception):       # the connection is going away with it
                await sub.unsubscribe()

    async def _watch_members(self) -> None:
        kv = await self._runtime.nc.jetstream().key_value(names.BUCKET_NODES)
        watcher = await kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                if not entry.value or entry.operation in ("DEL", "PURGE"):
                    gone = [k for k in self._members if names.node_key(k) == entry.key]
                    self._members = {k: v for k, v in self._members.items() if k not in gone}
                    for k in gone:
                        self._inner_peers.pop(k, None)
                    self._ready_until = 0.0
                    self._fail_lost_branches()
                    continue
                try:
                    record = NodeRecord.decode(entry.value)
                except ValidationError:
                    continue
                if record.role == self.role:
                    known = self._members.get(record.id)
                    if known is None or known.addresses != record.addresses:   # not every heartbeat
                        await self._learn_inner(record)
                    self._members[record.id] = record
                    self._ready_until = 0.0
                    if record.state in GONE_STATES:
                        self._fail_lost_branches()
                    elif known is not None and known.started_at != record.started_at and self.farm is not None:
                        # A new process under the member's name (restarted quicker than its
                        # heartbeat goes stale): the old one's connections died with it.  Its
                        # record comes before its SIP listeners open, so no phone is on the
                        # new one yet; a rejoin after a pause keeps started_at (and its phones).
                        self._fail_branches_through(names.node_key(record.id))
                        self._forkers.discard(names.node_key(record.id))
                        self._cancel_forks_of(names.node_key(record.id))
                        # And the branches of ours the old process kept (entrusted_branches.py):
                        # the new one holds none and is never seen gone, so they go to the
                        # next choice now (it is STARTING: not among the READY).
                        self._entrustments.drop(record.id)
                        self._entrust_again(self._entrustments.taken_back(record.id))
        finally:
            with suppress(Exception):
                await watcher.stop()

    def _admit(self, host: str) -> str | None:
        """Count a new connection from ``host``: its counting unit, or None when this member
        holds MAX_CONNECTIONS already or the source its ``sip_max_connections_per_ip`` (then
        the caller closes it).  ``sip_allow_networks`` are held to the total only."""
        if self._admitted_count >= MAX_CONNECTIONS or len(self.connections) >= MAX_CONNECTIONS:
            return None
        unit = counting_unit(host)
        held = self._per_source.get(unit, 0)
        if held >= self.settings.sip_max_connections_per_ip and not (
                self.farm is not None and self.farm._trusted(("TCP", host, 0))):
            if self.farm is not None:
                self.farm.metrics.dropped.labels(reason="connections per source").inc()
            return None
        self._per_source[unit] = held + 1
        self._admitted_count += 1
        return unit

    def _release(self, unit: str) -> None:
        self._admitted_count -= 1
        held = self._per_source.pop(unit, 1) - 1
        if held > 0:
            self._per_source[unit] = held

    async def _within_connection_rate(self, host: str) -> bool:
        """Whether ``host`` may open one more connection now: ``sip_connections_per_minute_per_ip``
        across all members, in the shared counters as ``sip_requests_per_minute_per_ip``;
        ``sip_allow_networks`` are exempt.  A connection refused still counts: a source that
        connects in a loop is what the rate is for."""
        farm = self.farm
        if farm is None or farm.counters is None or farm._trusted(("TCP", host, 0)):
            return True
        if await farm.counters.hit("sip-conn", counting_unit(host)) <= self.settings.sip_connections_per_minute_per_ip:
            return True
        farm.metrics.dropped.labels(reason="connection rate").inc()
        return False

    async def _admitted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str,
                        handler, tls=None) -> None:
        """Every connection a phone opens: held to its source's rate of new connections
        (``_within_connection_rate``) and counted against its source's share (``_admit``)
        first, then TLS when ``tls`` (a handshake costs the member ~0.8 ms of CPU and ~40 KB
        while it lasts), then ``handler`` -- ``_connection`` or ``_ws_connection``."""
        peer = writer.get_extra_info("peername")
        # None: the connection was reset between its accept and here (getpeername failed):
        # nothing to serve, where peer[0] raised -- a traceback per such connection.
        if not peer:
            writer.close()
            return
        if tls is not None:
            # Nothing is read yet (this task runs before the transport's first read): the
            # ClientHello stays in the kernel while the shared rate is asked, for the TLS
            # layer to read; start_tls resumes reading.
            writer.transport.pause_reading()
        unit = self._admit(peer[0]) if await self._within_connection_rate(peer[0]) else None
        if unit is None:
            writer.close()
            return
        try:
            if tls is not None:
                try:
                    await writer.start_tls(tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
                except (OSError, TimeoutError) as exc:    # ssl.SSLError is an OSError
                    log.debug("SIP %s handshake failed: %s", transport, exc)
                    writer.transport.abort()
                    return
            await handler(reader, writer, transport)
        finally:
            self._release(unit)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          transport: str = "TCP") -> None:
        peer = writer.get_extra_info("peername")
        key = (peer[0], peer[1])
        self.connections[key] = _Flow(transport, writer)
        framer = StreamFramer(self.settings.sip_max_message_size)
        loop = asyncio.get_running_loop()
        # Closes the connection when it is too slow (MESSAGE_TIMEOUT): armed from the start
        # until the first message, then while a message is part read -- never re-armed by
        # the bytes of the message it times, so a byte every few seconds does not hold it.
        deadline = loop.call_later(MESSAGE_TIMEOUT, self._too_slow, writer, transport)
        framed = False
        try:
            while data := await reader.read(65536):
                framer.feed(data)
                while True:
                    try:
                        message = framer.next_message()
                    except SipParseError as exc:
                        # Unframeable: the stream cannot continue.  A request whose head was
                        # read (no or a bad Content-Length, too large) gets its 400/513 first.
                        await self._refuse_on_stream(exc, (transport, key[0], key[1]), writer)
                        return
                    if framer.pings:
                        framer.pings = 0
                        _write(writer, StreamFramer.PONG, transport)
                    if message is None:
                        break
                    framed = True
                    if deadline is not None:      # the message came in time
                        deadline.cancel()
                        deadline = None
                    if len(self._inflight) >= MAX_INFLIGHT:
                        await self._room_for_a_message()
                    self.received(message, (transport, key[0], key[1]))
                if framed and deadline is None and framer.pending:     # the next one is begun
                    deadline = loop.call_later(MESSAGE_TIMEOUT, self._too_slow, writer, transport)
        except (ConnectionError, OSError):
            pass
        finally:
            if deadline is not None:
                deadline.cancel()
            self._flow_closed(key, writer)
            await _close_flow(writer)

    async def _refuse_on_stream(self, exc: SipParseError, source: Destination, writer: asyncio.StreamWriter) -> None:
        """The farm's answer to a request the framer could not cut from the stream, written
        before the connection closes (the close writes it out); nothing when unaddressable."""
        if exc.request is None or self.farm is None:
            return
        try:
            out = await self.farm.handle(b"", source, parsed=exc)     # a local answer: no bus work
        except Exception:
            log.exception("SIP message from %s:%s failed", source[1], source[2])
            return
        for item in out:
            if item.destination == source:
                _write(writer, item.data, source[0])

    def _too_slow(self, writer: asyncio.StreamWriter, transport: str) -> None:
        if self.farm is not None:
            self.farm.metrics.dropped.labels(reason="stream too slow").inc()
        log.debug("closing a %s connection whose message did not come within %s s", transport, MESSAGE_TIMEOUT)
        writer.transport.abort()     # not close(): that would wait on a peer that may not read either

    async def _ws_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: str) -> None:
        """One RFC 7118 connection: the handshake, then one SIP message per WebSocket message."""
        peer = writer.get_extra_info("peername")
        key = (peer[0], peer[1])
        ws = SipWebSocket(self.settings.sip_max_message_size)
        loop = asyncio.get_running_loop()
        # As for TCP (_connection), a timer per step, not per read: the upgrade within
        # HANDSHAKE_TIMEOUT of the connection (a timeout per read let a request trickled a
        # byte every few seconds hold the connection), then each message within
        # MESSAGE_TIMEOUT of its first part.  An open WebSocket may be quiet between messages.
        deadline: asyncio.TimerHandle | None = loop.call_later(HANDSHAKE_TIMEOUT, self._too_slow, writer, transport)
        try:
            while not ws.closed:
                was_open = ws.open
                got = ws.receive(await reader.read(65536) or None)
                if got.to_send:
                    _write(writer, got.to_send, transport)
                if ws.open and key not in self.connections:
                    self.connections[key] = _Flow(transport, writer, ws)
                for message in got.messages:
                    if len(self._inflight) >= MAX_INFLIGHT:
                        if deadline is not None:     # the wait is ours, not the client's
                            deadline.cancel()
                            deadline = None
                        await self._room_for_a_message()
                    self.received(message, (transport, key[0], key[1]))
                if ws.open and not ws.pending:          # between messages
                    if deadline is not None:
                        deadline.cancel()
                        deadline = None
                elif deadline is None or got.messages or ws.open != was_open:   # a step begun now
                    if deadline is not None:
                        deadline.cancel()
                    deadline = loop.call_later(MESSAGE_TIMEOUT, self._too_slow, writer, transport)
        except (ConnectionError, OSError):
            pass
        finally:
            if deadline is not None:
                deadline.cancel()
            self._flow_closed(key, writer)
            await _close_flow(writer)     # writes out the close frame or refusal, in bounded time

    # --- output ---------------------------------------------------------------------------

    async def _send(self, item: Outbound) -> None:
        transport, host, port = item.destination
        if item.member and item.member != names.node_key(self._runtime.node_id):
            if self._gone(item.member):
                # The member holding the phone's connection is dead, and the connection with
                # it: published to its relay subject, a request reached nobody and its caller
                # rang into silence until Timer C (200 s), since the phone re-registers only
                # at its next refresh.  It fails at once (430 Flow Failed, RFC 5626 §5.3), as
                # for a flow gone on a live member; a response or ACK is lost, as on any dead
                # connection.
                log.info("no %s flow to %s:%s for a SIP message: its member is gone", transport, host, port)
                self._flow_failed(item.data, item.destination)
                return
            self.farm.metrics.relays.inc()
            payload = json.dumps({"d": base64.b64encode(item.data).decode(), "t": [transport, host, port],
                                  "s": item.forker or names.node_key(self._runtime.node_id)}).encode()
            await self._runtime.nc.publish(names.sip_relay_subject(from_token(item.member)), payload,
                                           reply=self._relay_reply(item),
                                           headers=(inject_headers() or None) if self._traced else None)
            return
        await self._emit(item.data, item.destination, item.forker or "")

    async def _emit(self, data: bytes, destination: Destination, forker: str = "") -> None:
        """``data`` out to ``destination`` from this member; ``forker``: the node key of the
        member that sent it here (over its relay subject) -- an INVITE's fork lives there."""
        transport, host, port = destination
        if transport == "UDP":
            if self.udp is not None:
                self.udp.sendto(data, (host, port))
                if not data.startswith((b"SIP/2.0 ", b"ACK ")):
                    self._start_client_transaction(data, destination, forker)
            return
        flow = self.connections.get((host, port))
        if flow is None:
            if data.startswith(b"SIP/2.0 "):
                # A response goes back on the connection its request came on (§18.2.2), named by
                # the phone's own port of it: dialling that reached nothing -- a client that
                # pipelined 2,000 requests and hung up had the member dial it 2,000 times.
                log.debug("no %s flow to %s:%s for a SIP response", transport, host, port)
                return
            if transport != "TCP":
                # TLS and WebSocket phones are reached over the flow they opened (RFC 5626,
                # RFC 7118 §5: a browser accepts no connections); it is gone.
                log.info("no %s flow to %s:%s for a SIP message", transport, host, port)
                self._flow_failed(data, destination)
                return
            try:
                address = host
                if not _is_address(host):
                    # A name from a phone's message (a Route, a Contact): what it resolves to
                    # is judged now, as the UDP socket's lookups are (the farm judged literals).
                    async with asyncio.timeout(LOOKUP_TIMEOUT):
                        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
                    address = infos[0][4][0]
                    if self._denied_address(address):
                        log.info("no TCP connection to %s:%s: it resolves to %s, in sip_contact_deny_networks",
                                 host[:100], port, address)
                        return
                reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 5.0)
            except (OSError, TimeoutError, ValueError, IndexError):
                # The phone's connection is gone and it takes no new one (a binding names its
                # connection's own port; its member restarted, or it dropped the connection):
                # the branch fails now, as a flow that is gone does, not at Timer C.
                log.info("no TCP connection to %s:%s for a SIP message", host, port)
                self._flow_failed(data, destination)
                return
            flow = self.connections[(host, port)] = _Flow("TCP", writer)
            self._track_outbound(self._read_outbound(reader, writer, (host, port)))
        flow.send(data)
        if data.startswith(b"INVITE "):
            try:
                branch = parse_message(data, len(data)).top_via().branch
            except Exception:     # ours, so it parses; if not, Timer C still answers the caller
                return
            if branch:
                flow.sent_invite(branch, data, time.monotonic(), forker)
                if forker:
                    self._forkers.add(forker)

    def _relay_reply(self, item: Outbound) -> str:
        """The reply subject for a relayed request: the holder does not answer it, but the bus
        does when nobody reads the holder's relay subject (its connection to the bus closed, as
        a SIGKILL closes it) -- a "no responders" status, at once (_on_relay_unread).  Until its
        heartbeat went stale (_gone) such a request reached nobody and its caller rang into
        silence until Timer C.  Responses and ACKs: nothing to fail, no reply subject."""
        if not self._relay_inbox or item.data.startswith((b"SIP/2.0 ", b"ACK ")):
            return ""
        now = time.monotonic()
        watched = self._relays_watched
        while watched and (len(watched) >= RELAY_WATCHED or next(iter(watched.values()))[0] < now - RELAY_WATCH):
            watched.popitem(last=False)
        self._relay_tokens += 1
        token = str(self._relay_tokens)
        watched[token] = (now, item.data, item.destination)
        return f"{self._relay_inbox}.{token}"

    async def _on_relay_unread(self, msg) -> None:
        """The bus's "no responders" for a relayed request: the member holding the flow is
        gone, and the flow with it -- the branch fails at once with 430 (_flow_failed)."""
        if not msg.headers or msg.headers.get("Status") != "503":
            return
        found = self._relays_watched.pop(msg.subject.rpartition(".")[2], None)
        if found is not None:
            _, data, destination = found
            log.info("no %s flow to %s:%s for a SIP message: nobody reads its member's relay subject",
                     destination[0], destination[1], destination[2])
            self._flow_failed(data, destination)

    def _denied_address(self, address: str) -> bool:
        """``address`` (a host name's, just looked up) is in sip_contact_deny_networks: what
        was to go there is dropped, counted as the farm's own refusals are."""
        if self.farm is None or address not in self.farm.denied:
            return False
        self.farm.metrics.dropped.labels(reason="denied destination").inc()
        return True

    def _flow_closed(self, key: tuple[str, int], writer: asyncio.StreamWriter) -> None:
        """The connection ``key`` (the phone's address and port) is closing: it is no flow any
        more, and each INVITE still ringing on it fails now (``_Flow.ringing``)."""
        flow = self.connections.get(key)
        if flow is None or flow.writer is not writer:
            return        # not this connection's (a flow only goes in once its handshake is done)
        del self.connections[key]
        lost = flow.unanswered(time.monotonic())
        if lost:
            log.info("%d ringing INVITE(s) on a %s connection from %s:%s that closed: failed with 430",
                     len(lost), flow.transport, key[0], key[1])
        for data in lost:
            self._flow_failed(data, (flow.transport, key[0], key[1]))

    def _flow_failed(self, data: bytes, destination: Destination) -> None:
        """A request we forwarded cannot go out: its flow is gone.  The branch fails at once
        with 430 Flow Failed (RFC 5626 §5.3), fed back into the farm like a branch's answer
        (untagged: made here, never ACKed downstream), so the caller hears the best failure
        now rather than Timer C's 408 minutes later.  Responses and ACKs are just lost, as
        on any dead connection."""
        if data.startswith((b"SIP/2.0 ", b"ACK ")) or self.farm is None:
            return
        try:
            request = parse_message(data, len(data))
            if not isinstance(request, SipRequest) or not (request.top_via().branch or "").startswith(FARM_BRANCH):
                return
            failed = make_response(request, 430, to_tag=None).encode()
        except Exception:     # ours, so it parses; if not, the caller's Timer C answers
            return
        self._track(self._handle(failed, destination))

    def _track_outbound(self, coro) -> None:
        """A reader of a connection we opened (its failures end in its own ``finally``)."""
        task = asyncio.create_task(coro)
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read_outbound(self, reader, writer, key) -> None:
        framer = StreamFramer(self.settings.sip_max_message_size)
        try:
            while data := await reader.read(65536):
                framer.feed(data)
                while (message := framer.next_message()) is not None:
                    if len(self._inflight) >= MAX_INFLIGHT:
                        await self._room_for_a_message()
                    self.received(message, ("TCP", key[0], key[1]))
        except (ConnectionError, OSError, SipParseError):
            pass
        finally:
            self._flow_closed(key, writer)
            await _close_flow(writer)

    async def _relay(self, msg) -> None:
        try:
            body = json.loads(msg.data)
            data = base64.b64decode(body["d"])
            destination = tuple(body["t"])
            forker = str(body.get("s") or "")
        except (ValueError, KeyError, TypeError):
            return
        if not self._traced:       # no provider: the span would record nothing
            await self._emit(data, destination, forker)
            return
        with _tracer.start_as_current_span("sip.relay", context=extract_context(msg.headers)):
            await self._emit(data, destination, forker)

    # --- proxy client transactions over UDP (retransmission.py) --------------------------------

    def _start_client_transaction(self, data: bytes, destination: Destination, forker: str = "") -> None:
        """A request this member forwarded over UDP: retransmit it until answered.  ``forker``:
        the member whose fork an INVITE is, when another made it (_cancel_forks_of)."""
        try:
            request = parse_message(data, len(data))
            if not isinstance(request, SipRequest) or not (request.top_via().branch or "").startswith(FARM_BRANCH):
                return
        except Exception:     # ours, so it parses; if not, it just goes unretransmitted
            return
        if self.proxy_transactions.sent(request, data, destination, time.monotonic(), forker):
            self._timers_changed.set()
            if forker:
                self._forkers.add(forker)
        if not forker and request.method == "INVITE":
            self._entrust(request, destination)

    # --- branches entrusted to the Call-ID's next owner (entrusted_branches.py) -----------------

    def _entrust(self, request: SipRequest, destination: Destination) -> None:
        """An INVITE of this member's own fork went out from its own socket: nobody else knows
        where.  Its CANCEL's makings go to the member the Call-ID hashes to among the others
        (the next owner, which takes the caller's copies once this one is out of the spread),
        in one inner-relay datagram, with the branches that member may forget.  Lost as on the
        wire: the branch is then as it was before (Timer C's, or the phone's user's, to end)."""
        try:
            via = request.top_via()
            if IN_DIALOG in via.params:      # a re-INVITE is no fork: answered at once, not rung
                return
            branch = via.branch or ""
            me = self._runtime.node_id
            watcher = choose(request.call_id, [m for m in self.ready_members() if m != me])
            peer = self._inner_peers.get(watcher) if watcher is not None else None
            if peer is None or self._relay_key is None or not self._entrustments.entrusted(branch, watcher, time.monotonic()):
                return
            entrusted = Entrusted(self._entrustments.to_forget(watcher), destination, kept_of(request).encode())
            frame = seal_entrusted(self._relay_key, entrusted, watcher, me, self.inner_address)
        except (ValueError, URIError):       # a field no frame carries: that branch is not entrusted
            return
        self._send_inner(peer, frame)

    def _entrust_again(self, branches: list[str]) -> None:
        """``branches`` were entrusted to a member that is gone (stopped after a drain, or
        died): each still without a final answer goes to the next choice, from the INVITE kept
        for its ACK (``SipFarm.sent_invites``).  Forgotten with their keeper, they rang on
        unguarded should this member die too."""
        now = self.farm.clock()
        for branch in branches:
            sent = self.farm.sent_invites.get(branch, now)
            if sent is not None and not sent.failed and sent.destination[0] == "UDP":
                self._entrust(sent.request, sent.destination)

    def _answered_entrusted(self, response: SipResponse) -> None:
        """A final answer to a branch this member entrusted: its keeper may forget it."""
        try:
            if response.cseq().method == "INVITE":
                self._entrustments.answered(response.top_via().branch or "")
        except URIError:
            pass

    def _tell_forgotten(self) -> None:
        """The answered branches not told yet, each keeper's in frames of their own (called
        every second: most ride on the next entrusted branch's frame); and the branches a
        keeper that is gone held, entrusted again (``_entrust_again``)."""
        if self._relay_key is None:
            return
        for keeper in self._entrustments.keepers():
            if self._gone(names.node_key(keeper)):
                self._entrust_again(self._entrustments.taken_back(keeper))
        me = self._runtime.node_id
        for watcher in self._entrustments.waiting():
            peer = self._inner_peers.get(watcher)
            if peer is None or self._gone(names.node_key(watcher)):
                self._entrustments.drop(watcher)
                continue
            while forgotten := self._entrustments.to_forget(watcher):
                with suppress(ValueError):
                    self._send_inner(peer, seal_entrusted(self._relay_key, Entrusted(forgotten), watcher, me,
                                                          self.inner_address))

    def _send_inner(self, peer: tuple[int, tuple], frame: bytes) -> None:
        try:
            self._inner_socket(peer).send(frame)
        except OSError as exc:     # the keeper died or is swamped: lost, as on the wire
            self.farm.metrics.dropped.labels(reason="inner relay busy" if isinstance(exc, BlockingIOError)
                                             else "inner relay refused").inc()

    def _observed_here(self, response: SipResponse, udp: bool) -> bool:
        """What this member's own tables say of a phone's answer, whether it reached this
        member or another that handed it over (our Via's ``o`` names this one: its fork, its
        CANCEL or its client transaction is here -- when the members share a public address
        the answer arrives wherever the balancer puts it, and handed over it once skipped
        these, so the client transaction resent and timed out an answered request).  False:
        absorbed here."""
        if self._cancelled and response.status >= 300 and self._absorbed_after_cancel(response):
            return False
        if self._entrustments and response.status >= 200:
            self._answered_entrusted(response)
        if udp and len(self.proxy_transactions) and not self._observe_response(response):
            self.farm.metrics.dropped.labels(reason="absorbed retransmission").inc()
            return False
        return True

    def _observe_response(self, response: SipResponse) -> bool:
        """Move the response's client transaction on; False: absorb it (a retransmission)."""
        try:
            return self.proxy_transactions.received(response, time.monotonic())
        except Exception:        # no readable Via/CSeq: the farm drops it too
            return True

    async def _retransmit_loop(self) -> None:
        while True:
            deadline = self.proxy_transactions.next_deadline()
            self._timers_changed.clear()
            if deadline is None:
                await self._timers_changed.wait()
                continue
            delay = deadline - time.monotonic()
            if delay > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._timers_changed.wait(), delay)
                continue
            due = self.proxy_transactions.expire(time.monotonic())
            busy = len(self._inflight) > RETRANSMIT_BUSY
            for data, (_, host, port), method in due.retransmit:
                # An INVITE copy goes out even when busy: it is due only while no answer at
                # all was seen (Timer A stops at the first provisional), i.e. the INVITE or
                # its 180 was lost -- skipping it turned every such loss into our own Timer B
                # 408 (bench/sip.py, 200 calls at once).  Non-INVITE copies wait.
                if busy and method != "INVITE":
                    self.farm.metrics.dropped.labels(reason="retransmission while busy").inc()
                    continue
                self.farm.metrics.proxy_retransmissions.labels(method=method_label(method)).inc()
                if self.udp is not None:
                    self.udp.sendto(data, (host, port))
            for response, destination in due.timed_out:
                # As if the branch had answered 408 (§16.7): the farm passes on the best failure.
                method = response.cseq().method
                self.farm.metrics.proxy_timeouts.labels(method=method_label(method)).inc()
                self._track(self._handle(response.encode(), destination))

    async def _measure_turns(self) -> None:
        """How far behind this member is, for the overload rule (``_handle``): a packet is
        worked on in the callback that read it (``_track``), so it waits in no queue of ours
        that its own age could show; how late the loop comes round to a due timer -- behind
        a pass over everything ready, or a process kept off the CPU -- is what a packet read
        now waits for its turn.  Measured every TURN_PROBE seconds."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TURN_PROBE
            await asyncio.sleep(TURN_PROBE)
            self._turn = loop.time() - due      # how late the loop came round to a due timer

    async def _timer_c_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.farm is not None:
                for item in self.farm.expire_forks():
                    await self._send(item)
                self._fail_lost_branches()
                self._tell_forgotten()

    async def _usage_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.usage_flush_interval)
            await self._flush_usage()

    async def _flush_usage(self) -> None:
        pending, self._usage = self._usage, {}
        # One UsageSummed per domain (split at USAGE_SUMS_PER_EVENT) carries every account's
        # sums of the interval: a UsageRecorded per account cost a synced JetStream write, its
        # ack and a projected row each -- at one REGISTER per account per interval, the
        # largest bus cost of a REGISTER.  The projection reads both events, so members of
        # either version can meter side by side.  As before, a sum the bus did not take is
        # logged and dropped, never published twice.
        by_domain: dict[str, list[tuple[str | None, str, float]]] = {}
        for (domain, account, metric), amount in pending.items():
            by_domain.setdefault(domain, []).append((account or None, metric, round(amount, 3)))
        events = [UsageSummed(domain=domain, sums=sums[i:i + USAGE_SUMS_PER_EVENT], source=self._runtime.node_id)
                  for domain, sums in by_domain.items() for i in range(0, len(sums), USAGE_SUMS_PER_EVENT)]
        acks = await publish_pipelined(self._runtime.nc, [(names.usage_subject(e.domain), e.encode(), None) for e in events],
                                       timeout=USAGE_ACK_TIMEOUT)
        lost = sum(len(e.sums) for e, ack in zip(events, acks) if not landed(ack))
        if lost:
            log.warning("%d of %d SIP usage sums were not stored", lost, len(pending))

    # --- lifecycle ------------------------------------------------------------------------

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting

    def active_work(self) -> int:
        # A draining member finishes its transactions before it reports empty (issue #9): the
        # packets in hand, and the INVITEs it forked that still ring -- their answers come here
        # (our Via's ``o``).  Reported empty at once, it stopped, and the members keeping its
        # branches cancelled every call still ringing (480), at each step of a rolling upgrade.
        return len(self._inflight) + (self.farm.ringing() if self.farm is not None else 0)

    async def hand_over(self) -> None:
        return None     # bindings and dialogs are on the bus already

    async def stop(self) -> None:
        if self.farm is not None and self._runtime is not None:
            # The branches answered in the last second: a STOPPED record has their keepers
            # cancel what they still hold, and each would cost a CANCEL and a late 480.
            self._tell_forgotten()
        if self.udp is not None:
            self.udp.close()
        if self.inner is not None:
            self.inner.close()
        self._close_inner_sockets()
        if self.server is not None:
            self.server.close()
        for server in self.stream_servers:
            server.close()
        for flow in list(self.connections.values()):
            flow.close()
        if self.counters is not None:
            await self.counters.stop()
        if self._runtime is not None:
            with suppress(Exception):    # metering of the last interval, if the bus is still there
                await self._flush_usage()


async def home_regions(settings, nc):
    """Requests for other regions' subscribers are redirected there (``home_region``)."""
    from colony_sipfarm.home_region import HomeRegions

    directory = await nc.jetstream().key_value(names.BUCKET_DIRECTORY)

    async def get(key: str) -> bytes | None:
        try:
            return (await directory.get(key)).value
        except KeyNotFoundError:
            return None
    return HomeRegions(settings, nc, get)
