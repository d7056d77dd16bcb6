"""Client access at the edge: IMAP and POP3 up to login, then a byte proxy to the account's owner.

Theory of operation
-------------------
The edge speaks the pre-authentication part of each protocol itself, through the sans-IO
cores: POP3 with ``colony.protocols.pop3.rules`` (CAPA, STLS, USER/PASS, AUTH PLAIN and
LOGIN), IMAP with ``colony.protocols.imap.preauth`` (CAPABILITY, STARTTLS, LOGIN, AUTHENTICATE
PLAIN and LOGIN with SASL-IR, ID, NOOP, LOGOUT); every way of logging in ends in the same
check below.  Plaintext credentials before TLS are refused unless ``access_plaintext_auth``.
A connection first passes the edge gate (denied networks, connection rate and sessions per
address across all edges: ``* BYE`` / ``-ERR`` and close; on IMAPS and POP3S the listener asks
it before the TLS handshake, and a refused connection is closed without a word).

A login is checked in this order: the login-failure throttle (``LoginThrottle``: failures
per address and per account per minute, counted across all edges in the shared counters),
then the edge's login cache (``LoginCache``: a recent answer for the same user, password and
service, dropped when the directory changes the account), else the auth contract with the
service (``imap`` / ``pop``: an account without it gets ``NO`` / ``-ERR [AUTH]``).  On success the edge finds the account's store (``StoreFinder``:
the holder of its ownership lease if that store is READY, else the rendezvous choice among
the READY stores, which takes the account when the session arrives), connects to that
store's inner listener and sends the signed hand-off line (``colony.contracts.handoff``).
The store's one-line answer becomes the client's login answer; a ``NOT-OWNER`` answer (the
lease moved meanwhile) sends the edge back to the lease, a few times, before the client gets
a temporary failure.  From then on bytes are copied both ways, and whichever side closes
closes the other: a store that drains or loses the account says the protocol's goodbye
first, so the client sees a clean ``* BYE`` / ``-ERR`` and reconnects to the new owner.

Regions: an account whose domain is homed in another region (the directory's
``home_region``) is served by a mail store *of that region*: the edge reads that region's
node records and ownership leases through its JetStream domain (``$JS.<region>.API``, over
the leafnode link) and hands the session to that store's inner listener directly, with the
same signed hand-off (every region's stores share the hand-off secret).  The session's bytes
go over a direct TCP connection, not over the bus: an IMAP session is a long-lived byte
stream (IDLE, literals of any size) that needs no persistence, and carrying it as bus
messages would add a copy, a message per chunk and flow control of our own for nothing.  The
inner listeners must therefore be reachable between regions (a private network), as they are
between the edges and stores of one region.  Mail for a cut-off home region is still
accepted (it waits in the stream); a login is not: it gets a temporary failure, never the
wrong region's (empty) mailbox.

Memory per session is bounded: before login the cores bound every line and literal; after
it the two connections are spliced (``_Splice``): a chunk read from one is written to the
other in the read's own callback, and a connection whose write buffer passes its high-water
mark pauses reading from the other until it drains; an idle session holds no buffer at all.
Idle timeouts: before login ``access_login_timeout``; after it the store's own
(``imap_idle_timeout`` outside IDLE, ``pop3_idle_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter

from colony.bus import names
from colony.cluster.sessions import GateShare, current_gate_share
from colony.cluster.lease import read_lease
from colony.cluster.membership import NodeState
from colony.cluster.ownership import place
from colony.cluster.view import read_nodes
from colony.contracts.auth import AuthClient, AuthFailure, AuthUnavailable
from colony.contracts.handoff import MAX_LINE, NOT_OWNER, sign
from colony.counters import SharedCounters
from colony.protocols.imap import preauth as imap
from colony.protocols.pop3 import rules as pop3
from colony.settings import Role, Settings
from colony_edge.familiar import FamiliarClients, edge_familiar
from colony_edge.login_cache import LoginCache, edge_login_cache
from colony_edge.security.gate import EdgeGate
from colony_edge.security.networks import counting_unit

log = logging.getLogger("colony.edge.access")

_COPY = 64 * 1024          # the stream limit of a store connection before the splice (its answer line)
_ROUTE_ATTEMPTS = 20       # NOT-OWNER answers or unreachable stores before a temporary failure
_ROUTE_PAUSE = 0.25        # seconds between them (a drained store releases its accounts this fast)
_STORE_TIMEOUT = 15.0      # seconds a store has to answer a hand-off
_FOREIGN_TIMEOUT = 3.0     # seconds another region's JetStream has to answer a read


class AccessMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.logins = Counter("colony_access_logins_total", "IMAP/POP3 logins at the edge by outcome.",
                              ["protocol", "outcome"], registry=registry)


# --- where an account's sessions go ----------------------------------------------------------

class StoreFinder:
    """The READY mail stores with their inner listeners (from ``cluster_nodes``, re-read at
    most every ``refresh`` seconds) and the owner of an account (its lease)."""

    def __init__(self, nc: Client, owners: KeyValue | None, refresh: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, domain: str | None = None,
                 timeout: float | None = None) -> None:
        # domain: another region's JetStream domain (None: this region's); owners then opens lazily
        self.nc, self.owners, self.refresh, self.clock, self.domain = nc, owners, refresh, clock, domain
        self.timeout = timeout  # of each JetStream request (None: nats-py's default)
        self._stores: dict[str, dict[str, str]] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def stores(self, force: bool = False) -> dict[str, dict[str, str]]:
        async with self._lock:
            if force or self.clock() - self._read_at >= self.refresh:
                records = await read_nodes(self.nc, self.domain, self.timeout)
                self._stores = {r.id: r.addresses for r in records
                                if r.role == Role.MAILSTORE and r.state == NodeState.READY}
                self._read_at = self.clock()
        return self._stores

    async def target(self, account: str, listener: str, force: bool = False) -> str | None:
        """host:port of the store that should serve ``account`` now, None if none can."""
        stores = {node: addr[listener] for node, addr in (await self.stores(force)).items() if listener in addr}
        if not stores:
            return None
        if self.owners is None:
            js = self.nc.jetstream(domain=self.domain, **({"timeout": self.timeout} if self.timeout else {}))
            self.owners = await js.key_value(names.BUCKET_ACCOUNT_OWNERS)
        seen = await read_lease(self.owners, names.account_owner_key(account))
        if seen is not None and seen.record.holder in stores:
            return stores[seen.record.holder]
        return stores[place(account, stores)]


# --- login throttling across all edges ------------------------------------------------------

class LoginThrottle:
    """Failed logins per minute per client address (IPv6: per /64) and per account, summed
    over every edge.  Trusted networks skip the per-address limit only: an account under a
    password-guessing attack is protected whoever guesses.  The per-account limit holds
    strangers only: a client familiar to the account (``colony_edge.familiar``) is held by
    its address's limit alone, so nobody can lock an account's owner out."""

    def __init__(self, settings: Settings, counters: SharedCounters | None, gate: EdgeGate,
                 familiar: FamiliarClients | None = None) -> None:
        self.settings, self.counters, self.gate, self.familiar = settings, counters, gate, familiar

    async def blocked(self, ip: str, account: str) -> bool:
        if self.counters is None:
            return False
        if not self.gate.trusted(ip) and \
                await self.counters.rate("login-fail-ip", counting_unit(ip)) >= self.settings.access_login_failures_per_ip:
            return True
        if await self.counters.rate("login-fail-account", account.lower()) < self.settings.access_login_failures_per_account:
            return False
        return not await self.is_familiar(ip, account)

    async def is_familiar(self, ip: str, account: str) -> bool:
        return self.familiar is not None and await self.familiar.known(account, ip)

    async def succeeded(self, ip: str, account: str) -> None:
        if self.familiar is not None:
            await self.familiar.remember(account, ip)

    async def failed(self, ip: str, account: str) -> None:
        if self.counters is None:
            return
        await self.counters.hit("login-fail-ip", counting_unit(ip))
        await self.counters.hit("login-fail-account", account.lower())


# --- the proxy ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Login:
    ok: bool
    reply: str                      # the store's line (ok) or the refusal text
    code: str = "AUTH"              # a refusal's response code: the edge's own in POP3 terms, or the store's
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    account: str = ""               # ok: whose session it is now (``EdgeGate.on_logout`` is owed)


class AccessProxy:
    def __init__(self, settings: Settings, secret: bytes, auth: AuthClient, finder: StoreFinder,
                 throttle: LoginThrottle, gate: EdgeGate, tls: ssl.SSLContext | None, tracker,
                 metrics: AccessMetrics, hostname: str,
                 home_region: Callable[[str], str | None] = lambda domain: None,
                 move_phase: Callable[[str], str | None] = lambda domain: None,
                 login_cache: LoginCache | None = None) -> None:
        self.settings, self.secret, self.auth, self.finder = settings, secret, auth, finder
        self.login_cache = login_cache            # None: every login asks the auth service
        self.move_phase = move_phase              # domain -> the phase of its move to another region, if moving
        self.throttle, self.gate, self.tls, self.tracker = throttle, gate, tls, tracker
        self.metrics, self.hostname = metrics, hostname
        self.home_region = home_region            # domain -> its home region ('' or None: here)
        self._foreign: dict[str, StoreFinder] = {}  # region -> the finder reading that region's records

    def finder_for(self, domain: str) -> tuple[str, StoreFinder]:
        """The region whose stores serve ``domain``'s accounts, and the finder of its stores."""
        here = self.settings.region
        region = self.home_region(domain) or here
        if region == here or region not in self.settings.region_list:
            return here, self.finder
        if region not in self._foreign:
            self._foreign[region] = StoreFinder(self.finder.nc, None, domain=names.js_domain(region),
                                                timeout=_FOREIGN_TIMEOUT)
        return region, self._foreign[region]

    # --- shared steps ------------------------------------------------------------------------

    async def login(self, proto: str, user: str, password: str, ip: str) -> Login:
        service = "imap" if proto == "imap" else "pop"
        if await self.throttle.blocked(ip, user):
            self.metrics.logins.labels(proto, "throttled").inc()
            return Login(False, "Too many failed logins; try again later", "SYS/TEMP")
        cache, reply = self.login_cache, None
        if cache is not None:
            key = cache.key(service, user, password)
            reply = cache.get(key)
        if reply is None:
            mark = cache.mark() if cache is not None else 0
            try:
                reply = await self.auth.check(user, password, service=service, remote_addr=ip)
                if not reply.ok and reply.reason == AuthFailure.THROTTLED and await self.throttle.is_familiar(ip, user):
                    # the auth service's lock on the account: not for a client it has seen log in
                    reply = await self.auth.check(user, password, service=service, remote_addr=ip, familiar=True)
            except AuthUnavailable:
                self.metrics.logins.labels(proto, "unavailable").inc()
                return Login(False, "Authentication is unavailable; try again later", "SYS/TEMP")
            finally:
                if cache is not None:
                    cache.put(key, user, reply, mark)
        if not reply.ok:
            self.metrics.logins.labels(proto, reply.reason or "refused").inc()
            if reply.reason == "throttled":
                return Login(False, "Too many failed logins; try again later", "SYS/TEMP")
            if reply.reason == "internal error":
                return Login(False, "Authentication is unavailable; try again later", "SYS/TEMP")
            if reply.reason == "service not enabled":
                return Login(False, f"{proto.upper()} is not enabled for this account", "AUTH")
            await self.throttle.failed(ip, user)
            return Login(False, "Authentication failed", "AUTH")
        await self.throttle.succeeded(ip, user)
        account = reply.account or user
        domain = reply.domain or account.rpartition("@")[2]
        if self.move_phase(domain) == "sealing":
            # The domain's last copy to its new region runs with nobody changing the old one
            # (colony.domain_move): a temporary failure, so clients retry and reach the new
            # home once the move flips.  Checked after the password, like any other refusal.
            self.metrics.logins.labels(proto, "moving").inc()
            return Login(False, "This mailbox is being moved to another region; try again in a few minutes",
                         "SYS/TEMP")
        if self.gate.on_login(ip, account) is not None:
            # Checked after the password, like any other refusal: a stranger learns nothing.
            self.metrics.logins.labels(proto, "account-sessions").inc()
            return Login(False, "Too many sessions of this account from your address; close one and try again",
                         "SYS/TEMP")
        try:
            region, finder = self.finder_for(domain)
            login = await self.hand_off(proto, account, ip, finder)
        except BaseException:      # cancelled with its session, or a failure hand_off does not expect
            self.gate.on_logout(ip, account)
            raise
        outcome = "no-store" if not login.ok else "ok" if region == self.settings.region else "ok-other-region"
        self.metrics.logins.labels(proto, outcome).inc()
        if not login.ok:
            self.gate.on_logout(ip, account)
            return login
        return dataclasses.replace(login, account=account)

    async def hand_off(self, proto: str, account: str, ip: str, finder: StoreFinder | None = None) -> Login:
        finder = finder or self.finder
        listener = f"{proto}-inner"
        last = "no mail store is ready"
        for attempt in range(_ROUTE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(_ROUTE_PAUSE)
            try:
                target = await finder.target(account, listener, force=attempt > 0)
            except Exception as exc:  # the bus is away for a moment: same as no store
                last = f"cannot read the cluster: {exc!r}"
                if finder.domain is not None:
                    # The home region is out of reach (the link is cut): say so now rather than
                    # keep the client waiting through every retry; its reconnect tries again.
                    break
                continue
            if target is None:
                continue
            host, _, port = target.rpartition(":")
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), limit=_COPY),
                                                        _STORE_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                last = f"{target}: {exc}"
                continue
            try:
                writer.write(sign(self.secret, proto, account, ip, int(time.time() * 1000)))
                line = await asyncio.wait_for(reader.readuntil(b"\n"), _STORE_TIMEOUT)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                writer.close()
                last = f"{target}: {exc!r}"
                continue
            text = line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r\n")
            if text.startswith(("+OK", "OK")):
                return Login(True, text, upstream=(reader, writer))
            writer.close()
            if NOT_OWNER in text:
                last = text
                continue
            code, reason = _refusal(text)
            return Login(False, reason or "Mailbox unavailable", code or "SYS/TEMP")
        log.warning("no store took a %s session of %s: %s", proto, account, last)
        return Login(False, "Your mailbox is not reachable right now; try again shortly", "SYS/TEMP")

    async def pipe(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                   upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], leftover: bytes) -> None:
        """Splice the client's and the store's connections until either side closes; then
        close both.  The transports are handed to ``_Splice`` protocols, so each chunk goes
        from one socket's callback straight into the other's write, with no task, stream
        buffer or line parsing in between; bytes the stream readers had already taken (a
        client's pipelined commands, the store's first responses) go first."""
        store_reader, store_writer = upstream
        client, store = client_writer.transport, store_writer.transport
        loop = asyncio.get_running_loop()
        lost = loop.create_future()
        # A side that left before the splice told only the stream protocol (its EOF, or the
        # connection's loss): the splice would never hear of it, so it ends at once.
        gone = client.is_closing() or store.is_closing() or client_reader.at_eof() or store_reader.at_eof()
        to_store = _Splice(store, client.get_protocol(), lost)
        to_client = _Splice(client, store.get_protocol(), lost)
        client.set_protocol(to_store)
        store.set_protocol(to_client)
        # Nothing feeds the stream readers any more: what they hold is all they will ever hold.
        client_reader.feed_eof()
        store_reader.feed_eof()
        try:
            to_store.start(leftover + await client_reader.read())
            to_client.start(await store_reader.read())
            if not gone:
                await lost
        except (ConnectionError, OSError):
            pass                # a side went away before the splice began
        finally:
            store.close()
            client.close()      # sends what is buffered first...
            try:
                await asyncio.wait_for(asyncio.shield(to_store.closed), 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                client.abort()  # ...unless the client does not take it

    async def _admit(self, writer: asyncio.StreamWriter, ip: str, refuse: Callable[[str, bool], bytes]) -> bool:
        refusal = await self.gate.on_connect(ip, block_lists=False)
        if refusal is not None:
            writer.write(refuse(refusal.text, refusal.permanent))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 5)
            return False
        return True

    # --- POP3 and IMAP: the listeners' handlers ------------------------------------------------

    async def pop3(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool) -> None:
        await self._serve(_Pop3Session, reader, writer, implicit_tls)

    async def imap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool) -> None:
        await self._serve(_ImapSession, reader, writer, implicit_tls)

    async def _serve(self, kind: type[_Session], reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     implicit_tls: bool) -> None:
        ip = _ip(writer)
        # An implicit-TLS listener's gate admitted the connection before its handshake
        # (open_access); a plaintext one is admitted here, with the protocol's own refusal.
        # Either way the address's share is given back at login (``EdgeGate.on_login``).
        if implicit_tls:
            share = current_gate_share()
        elif await self._admit(writer, ip, kind.refusal):
            share = GateShare(self.gate, ip)
        else:
            return
        session = None
        try:
            session = kind(self, reader, writer, ip, implicit_tls, share)
            with self.tracker.track(kind.service, ip, session.goodbye):
                try:
                    await session.run()
                except (_ClientGone, ConnectionError) as exc:
                    # A client that left or stopped reading before login: ordinary, not a failure.
                    log.debug("%s client %s gone before login: %s", kind.service, ip, exc)
        finally:
            if share is not None and not implicit_tls:
                share.release()
            if session is not None and session.account:
                self.gate.on_logout(ip, session.account)


class _Splice(asyncio.Protocol):
    """The receiving side of one connection of a spliced pair: what arrives is written to
    ``peer``.  Flow control is the transports' own: when this connection's write buffer is
    over its high-water mark (its reader is slow), reading from the peer pauses until it
    drains, so each direction holds at most that buffer plus one read.  Losing either
    connection ends the splice (``lost``); the stream protocol the transport had before
    still hears of it, so ``StreamWriter.wait_closed`` works as usual."""

    __slots__ = ("peer", "previous", "lost", "closed", "_held")

    def __init__(self, peer: asyncio.BaseTransport, previous: asyncio.BaseProtocol,
                 lost: asyncio.Future) -> None:
        self.peer, self.previous, self.lost = peer, previous, lost
        self.closed: asyncio.Future = lost.get_loop().create_future()   # this connection is gone
        self._held: list[bytes] | None = []     # data that came before start()

    def start(self, first: bytes) -> None:
        held, self._held = self._held or [], None
        data = first + b"".join(held)
        if data:
            self.peer.write(data)

    def data_received(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            self.peer.write(data)

    def eof_received(self) -> bool:
        return False      # the transport closes itself; connection_lost follows

    def pause_writing(self) -> None:
        # The transport this protocol belongs to cannot take more: stop reading its source.
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.lost.done():
            self.lost.set_result(None)
        with contextlib.suppress(Exception):
            self.previous.connection_lost(exc)


def _drop_buffered(reader: asyncio.StreamReader) -> None:
    """Drop what ``reader`` holds without waiting for more: ``read`` returns at once when
    something is buffered and only otherwise waits, so one step of the coroutine either
    finishes with the buffered octets or shows there are none (it is then closed)."""
    while True:
        step = reader.read(1 << 20)
        try:
            step.send(None)
        except StopIteration as done:
            if not done.value:
                return
            continue
        step.close()
        return


def _ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) else "0.0.0.0"


_WRITE_GRACE = 5.0    # seconds past the login deadline a pre-login write may wait for the client


class _ClientGone(Exception):
    """The client cannot be written to any more: the session ends without a word."""


class _Session:
    """A POP3 or IMAP client before its login: its protocol's core is fed what it sends
    until the login deadline, STARTTLS is done here, and a login the store accepts hands the
    connection over to the store (``AccessProxy.pipe``). The subclasses give the protocol's
    core, events and words; the steps are the same for both."""

    service: str            # the login's service, as the auth service and the login cache name it
    protocol = None         # the module with the core's events (StartTLS, Authenticate, Close)
    too_slow: bytes         # said when the login deadline passes
    shutting_down: bytes    # said to a client not yet handed over when the edge drains

    def __init__(self, proxy: AccessProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ip: str, implicit_tls: bool, share: GateShare | None = None) -> None:
        self.proxy, self.reader, self.writer, self.ip = proxy, reader, writer, ip
        self.share = share          # the address's session at the gate, until login
        self.account = ""           # logged in as (its session at the gate is the account's)
        self.tls_active = implicit_tls
        self.deadline = time.monotonic() + proxy.settings.access_login_timeout
        self.proxying = False
        self.closing = False

    async def read(self) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return b""
        try:
            return await asyncio.wait_for(self.reader.read(4096), remaining)
        except asyncio.TimeoutError:
            return b""
        except ssl.SSLError as exc:
            # A record that fails its check, a renegotiation refused, an alert from the
            # client: what TLS scanners send on purpose.  The client's doing, like a failed
            # handshake -- not a handler failure with a traceback per probe.
            raise _ClientGone(f"TLS error: {exc!r}") from None

    async def start_tls(self) -> None:
        """Upgrade to TLS.  Whatever the client sent behind its STARTTLS / STLS in the clear
        is dropped (RFC 9051 §6.2.1, RFC 2595 §4; CVE-2011-0411): the core drops what it
        was fed, and what the stream reader still holds beyond that read is dropped here,
        or it would be read as the first words of the encrypted session (a man in the
        middle's commands run as the user's).  A failed handshake (a scanner, an HTTP
        request, a client gone) ends the session quietly: it is the client's, not ours."""
        _drop_buffered(self.reader)
        remaining = max(1.0, self.deadline - time.monotonic())
        try:
            await self.writer.start_tls(self.proxy.tls, ssl_handshake_timeout=remaining)
        except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
            raise _ClientGone(f"TLS handshake failed: {exc!r}") from None

    async def write(self, data: bytes) -> None:
        """Send ``data`` before login. The wait for the client to take it is bounded by the
        login deadline plus ``_WRITE_GRACE`` (the "too slow" line is written after the
        deadline): a client that pipelines commands and never reads their answers, or a TLS
        peer gone without the close reaching asyncio (whose ``drain`` then never returns),
        would otherwise hold the session and its buffers for as long as it likes."""
        if data:
            self.writer.write(data)
            transport = self.writer.transport
            if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
                # Not paused: drain() returns without yielding to the loop. STARTTLS relies on
                # that: between the "begin TLS" answer and start_tls() the loop must not run, or
                # a client's ClientHello arriving in between is read as plain text and the
                # handshake hangs until its timeout (a wait_for here did exactly that under load).
                await self.writer.drain()
                return
            remaining = max(0.0, self.deadline - time.monotonic()) + _WRITE_GRACE
            try:
                await asyncio.wait_for(self.writer.drain(), remaining)
            except asyncio.TimeoutError:
                self.writer.transport.abort()
                raise _ClientGone("the client did not take the edge's answers in time") from None

    async def run(self) -> None:
        core = self.make_core()
        while not self.closing:
            await self.write(core.data_to_send())
            event = core.next_event()
            if event is None:
                out = core.data_to_send()
                if out:     # taking a core's output may let it go on with pipelined commands
                    await self.write(out)
                    continue
                data = await self.read()
                if not data:
                    if time.monotonic() >= self.deadline:
                        await self.write(self.too_slow)
                    return
                core.receive_data(data)
            elif isinstance(event, self.protocol.StartTLS):
                await self.start_tls()
                core.tls_started()
            elif isinstance(event, self.protocol.Authenticate):
                login = await self.proxy.login(self.service, event.user, event.password, self.ip)
                if not login.ok:
                    core.login_failed(self.refusal_code(login.code), login.reply)
                    continue
                self.account = login.account
                if self.share is not None:
                    self.share.release()
                await self.proxy.gate.refund_connection(self.ip)
                try:
                    await self.write(core.data_to_send())
                    await self.write(self.welcome(core, login.reply))
                except BaseException:
                    # The client's connection was lost while the store took the login: the
                    # store's session ends now.  Left to the writer's finalizer, it would wait
                    # for the last reference to go -- the traceback of this very exception
                    # holds one -- with the account's session open on the store.
                    login.upstream[1].close()
                    raise
                self.proxying = True
                await self.proxy.pipe(self.reader, self.writer, login.upstream, core.leftover())
                return
            elif isinstance(event, self.protocol.Close):
                await self.write(core.data_to_send())
                return
            else:  # POP3's Retrieve / Commit cannot happen before login
                return

    async def goodbye(self) -> None:
        # Before login only: after it the store says goodbye itself when it drains.
        self.closing = True
        if not self.proxying:
            with contextlib.suppress(Exception):
                await self.write(self.shutting_down)
        self.writer.close()

    # --- what a protocol fills in -------------------------------------------------------------

    def make_core(self):
        """The protocol's sans-IO core for the time before login."""
        raise NotImplementedError

    @staticmethod
    def refusal(text: str, permanent: bool) -> bytes:
        """The greeting that turns a client away before the session begins (the gate's ``text``;
        ``permanent``: a refusal that retrying will not change, a denied network)."""
        raise NotImplementedError

    def refusal_code(self, code: str) -> str:
        """The response code of a refused login in the protocol's vocabulary."""
        return code

    def welcome(self, core, store_line: str) -> bytes:
        """What the client is told when the store took the login (``store_line``, its answer)."""
        raise NotImplementedError


class _Pop3Session(_Session):
    service = "pop3"
    protocol = pop3
    too_slow = b"-ERR Too slow to log in; closing\r\n"

    @staticmethod
    def refusal(text: str, permanent: bool) -> bytes:
        # RFC 3206: SYS/PERM is "do not retry" (the MX says 554 to the same network).
        return f"-ERR [{'SYS/PERM' if permanent else 'SYS/TEMP'}] {text}\r\n".encode()
    shutting_down = b"-ERR [SYS/TEMP] Server shutting down\r\n"

    def make_core(self) -> pop3.Pop3Server:
        return pop3.Pop3Server(time.monotonic, tls_available=self.proxy.tls is not None, tls_active=self.tls_active,
                               allow_plaintext=self.proxy.settings.access_plaintext_auth,
                               greeting=f"{self.proxy.hostname} POP3 ready")

    def welcome(self, core: pop3.Pop3Server, store_line: str) -> bytes:
        return (store_line + "\r\n").encode()


class _ImapSession(_Session):
    service = "imap"
    protocol = imap
    too_slow = b"* BYE Too slow to log in\r\n"

    @staticmethod
    def refusal(text: str, permanent: bool) -> bytes:
        # RFC 5530's UNAVAILABLE is a temporary failure of a subsystem, which a deny list is not.
        return (f"* BYE {text}\r\n" if permanent else f"* BYE [UNAVAILABLE] {text}\r\n").encode()
    shutting_down = b"* BYE [UNAVAILABLE] Server shutting down\r\n"

    def make_core(self) -> imap.ImapPreauth:
        return imap.ImapPreauth(tls_available=self.proxy.tls is not None, tls_active=self.tls_active,
                                allow_plaintext=self.proxy.settings.access_plaintext_auth,
                                max_line=self.proxy.settings.access_max_command_bytes,
                                greeting=f"{self.proxy.hostname} IMAP ready")

    def refusal_code(self, code: str) -> str:
        return _imap_code(code)

    def welcome(self, core: imap.ImapPreauth, store_line: str) -> bytes:
        core.login_ok(store_line)       # the store's OK goes out with the client's login tag
        return core.data_to_send()


def _home_region(directory, domain: str) -> str | None:
    info = directory.domain(domain) if directory is not None else None
    return info.home_region if info is not None else None


def _move_phase(directory, domain: str) -> str | None:
    info = directory.domain(domain) if directory is not None else None
    return info.move_phase if info is not None else None


def _refusal(line: str) -> tuple[str | None, str]:
    """A store's refusal line (``NO [UNAVAILABLE] text``, ``* BYE text``, ``-ERR [SYS/TEMP] text``)
    as its response code and text.  The edge answers the client with its own tagged ``NO`` /
    ``-ERR`` and the cores put the code in brackets, so the code must be taken out of the text:
    relayed whole, the client saw it twice (RFC 3501 §7.1 and RFC 2449 §8 allow one)."""
    if line.startswith("* "):
        line = line[2:]
    rest = line.partition(" ")[2].strip()
    if rest.startswith("["):
        code, closed, text = rest[1:].partition("]")
        if closed and code.strip():
            return code.strip(), text.strip()
    return None, rest


def _imap_code(code: str) -> str:
    """The IMAP response code (RFC 5530) of a refusal: the edge's own refusals are named in POP3's
    vocabulary (RFC 3206) and translated; a code an IMAP store gave is already IMAP's."""
    return {"AUTH": "AUTHENTICATIONFAILED", "LOGIN-DELAY": "UNAVAILABLE", "SYS/TEMP": "UNAVAILABLE",
            "SYS/PERM": "UNAVAILABLE", "IN-USE": "INUSE"}.get(code, code)


async def open_access(workload, runtime, gate: EdgeGate, counters: SharedCounters | None, hostname: str) -> dict[str, str]:
    """Open the IMAP/IMAPS/POP3/POP3S listeners of an edge (a ``ConnectionWorkload``).
    Off (a warning, no listeners) without a cluster secret: the edge could not hand over."""
    from colony.contracts.handoff import load_secret
    from colony.tlsfiles import configured, sni_context

    settings = runtime.settings
    if settings.cluster_secret_file is None:
        log.warning("no COLONY_CLUSTER_SECRET_FILE: IMAP/POP3 client access is off on this edge")
        return {}
    files = configured(settings)
    tls = sni_context(files.cert, files.key, settings.tls_sni_dir) if files else None
    owners = await runtime.nc.jetstream().key_value(names.BUCKET_ACCOUNT_OWNERS)
    login_cache = edge_login_cache(workload, settings, runtime.metrics)
    proxy = AccessProxy(settings, load_secret(settings.cluster_secret_file), AuthClient(runtime.nc),
                        StoreFinder(runtime.nc, owners),
                        LoginThrottle(settings, counters, gate, edge_familiar(workload, settings, runtime.nc.jetstream())),
                        gate, tls,
                        workload.tracker, AccessMetrics(runtime.metrics.registry), hostname,
                        home_region=lambda domain: _home_region(workload.directory, domain),
                        move_phase=lambda domain: _move_phase(workload.directory, domain),
                        login_cache=login_cache)
    workload.access = proxy
    limit = settings.access_max_command_bytes + 1024
    listeners = [("imap", settings.imap_port, proxy.imap, False, b"* BYE [UNAVAILABLE] Server shutting down\r\n"),
                 ("pop3", settings.pop3_port, proxy.pop3, False, b"-ERR [SYS/TEMP] Server shutting down\r\n")]
    if tls is not None:
        listeners += [("imaps", settings.imaps_port, proxy.imap, True, b"* BYE [UNAVAILABLE] Server shutting down\r\n"),
                      ("pop3s", settings.pop3s_port, proxy.pop3, True, b"-ERR [SYS/TEMP] Server shutting down\r\n")]
    addresses = {}
    for name, port, serve, implicit, bye in listeners:
        async def handler(reader, writer, serve=serve, implicit=implicit):
            await serve(reader, writer, implicit)

        addresses[name] = await workload.listen(name, settings.host, port, handler, ssl=tls if implicit else None,
                                                gate=gate.for_clients() if implicit else None,
                                                refuse=lambda writer, bye=bye: writer.write(bye), limit=limit)
    return addresses
