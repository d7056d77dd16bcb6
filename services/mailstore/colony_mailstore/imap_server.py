"""IMAP in the mail store: the asyncio shell around ``colony.protocols.imap.session``.

Listeners, both inner (the edge faces clients and ends TLS):

* ``imap-inner`` (``imap_inner_port``, with a cluster secret): sessions an edge
  authenticated and hands over (``colony.contracts.handoff``): the first line is the signed
  hand-off; the store answers one untagged line, ``OK [CAPABILITY ...]`` (the edge sends it
  tagged as its LOGIN answer) or ``NO [UNAVAILABLE] NOT-OWNER ...``, and the session goes on
  in the authenticated state; a signed ``export`` line instead is another store pulling an
  account's mail (a domain move), served by ``export.AccountExporter``;
* ``imap-direct`` (only with ``imap_direct_login``): a plain IMAP server whose LOGIN /
  AUTHENTICATE PLAIN are checked through the auth contract (service ``imap``), for tools
  and tests on a trusted network.

Each connection runs its ``Session``'s actions in order: octets out, authentication through
the contract, and store work under the account's lock in a worker thread (the lock
deliveries and POP3 take, so a session's view and another writer's batch never interleave).
The account's ``AccountMail`` listener (called after every commit, in the committing
thread) wakes every IMAP session of that account through the loop, so IDLE sessions report
a delivery at once and the others at their next command.

This instance serves an account only while it holds its lease (taken here if vacant, as a
delivery would); when it stops holding it, or drains, sessions get ``* BYE`` and the
client's reconnect reaches the new owner through the edge.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from colony.contracts.handoff import MAX_LINE, NOT_OWNER, HandoffError, Verifier
from colony.contracts.auth import AuthClient, AuthFailure, AuthUnavailable
from colony.protocols.imap import mime, rights
from colony.protocols.imap.compression import CorruptStream, Deflate
from colony.protocols.imap import session as S
from colony.protocols.imap.shared import PREFIX as SHARED_PREFIX, CompositeStore
from colony.storage.mailbox import AccountMail
from colony_mailstore.accounts import AccountManager, CommitCost, NotOwner, OpenAccount, thread_to_the_end
from colony_mailstore.export import AccountExporter
from colony_mailstore.sharing import RemoteView, Sharing, grantees

log = logging.getLogger("colony.mailstore.imap")

READ_CHUNK = 64 * 1024
EXPORT_LINE = b"COLONY-HANDOFF 1 export "
MAILBODY_LINE = b"COLONY-HANDOFF 1 mailbody "
SEALED_BYE = "[UNAVAILABLE] This mailbox is being moved to another region; reconnect shortly"
_CHECK = 0.5            # seconds between the watch's rounds (drain and lease loss are noticed this fast)
_HANDOFF_TIMEOUT = 10.0
RECENT_ACCOUNTS = 10_000  # accounts whose \Recent marks are remembered
# A colleague's folder changes on another store, whose commits wake nobody here: IDLE
# sessions in one look again this often (one call to the owner's store each).
SHARED_IDLE_POLL = 2.0
# Messages read for FETCH and SEARCH, kept for every session of this store: a body file never
# changes (its name is never reused), and opening and reading one was the largest cost of an
# IMAP command (py-spy under bench/imap.py (b): clients fetch the same headers again and
# again, and a session's own parsed-message cache holds 8); parsing it (email.parser, for
# ENVELOPE, BODYSTRUCTURE and the offsets of every section) was the next.  Bounded by an
# estimate of the bytes held; a body larger than BODY_CACHE_LARGEST is read each time rather
# than push everything else out.
BODY_CACHE_BYTES = 16 * 1024 * 1024
BODY_CACHE_LARGEST = 256 * 1024
# What a parsed tree costs beside the octets (an estimate: the email.message.Message of a
# part and its header strings are a few times the header block).
_PART_OVERHEAD = 1024
_HEADER_FACTOR = 4
# Commands that read only the account's state (and cached messages) run on the event loop
# rather than in a worker thread, unless the account is this large (a SELECT walks the
# mailbox: the loop must not stall other sessions that long).
INLINE_MAX_MESSAGES = 5_000


Route = Callable[[str], Awaitable[bool]]     # "may this store serve the account now?" (acquires if vacant)


def _parsed_weight(data: bytes, root: mime.Part) -> int:
    # Sessions keep up to RENDER_MEMO small FETCH renderings on a tree (mime.Part.rendered).
    return (len(data) + S.RENDER_MEMO * S.RENDER_MEMO_LARGEST
            + sum(_PART_OVERHEAD + _HEADER_FACTOR * (p.header_end - p.header_start) for p in root.walk()))


class MessageCache:
    """Recently read messages by (account directory, body file): the octets and, once a
    command needed it, the parsed MIME tree (``mime.analyze``, read-only once built), least
    recently used out first, at most ``budget`` bytes by estimate.  Used from the sessions'
    worker threads and the event loop."""

    def __init__(self, budget: int = BODY_CACHE_BYTES, largest: int = BODY_CACHE_LARGEST) -> None:
        self.budget, self.largest = budget, largest
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, mime.Part | None, int]] = OrderedDict()
        self._lock = threading.Lock()

    def holds(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._entries

    def _hit(self, key: tuple[str, str]) -> tuple[bytes, mime.Part | None, int] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def _keep(self, key: tuple[str, str], data: bytes, root: mime.Part | None) -> None:
        if len(data) > self.largest:
            return
        weight = _parsed_weight(data, root) if root is not None else len(data)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[2]
            self._entries[key] = (data, root, weight)
            self.bytes += weight
            while self.bytes > self.budget:
                self.bytes -= self._entries.popitem(last=False)[1][2]

    def body(self, key: tuple[str, str], read: Callable[[], bytes]) -> bytes:
        entry = self._hit(key)
        if entry is not None:
            return entry[0]
        data = read()
        self._keep(key, data, None)
        return data

    def parsed(self, key: tuple[str, str], read: Callable[[], bytes]) -> tuple[bytes, mime.Part]:
        entry = self._hit(key)
        if entry is not None and entry[1] is not None:
            return entry[0], entry[1]
        data = entry[0] if entry is not None else read()
        root = mime.analyze(data)
        self._keep(key, data, root)
        return data, root


class MailStore:
    """``session.Store`` over an ``AccountMail``: its API plus the subscription list."""

    def __init__(self, mail: AccountMail, marks: S.RecentMarks, quota_bytes: int | None,
                 cache: MessageCache | None = None, cost: CommitCost | None = None) -> None:
        self.mail = mail
        self.marks = marks
        self.quota_bytes = quota_bytes
        self.cache = cache
        self.cost = cost
        self.on_loop = False      # set by the shell for a command it runs on the event loop
        self._where = str(mail.dir)

    def __getattr__(self, name: str):
        return getattr(self.mail, name)

    def commit(self) -> None:
        """``AccountMail.commit``, timed for ``CommitCost`` when it runs on the loop.  There
        the snapshot a commit may bring due is left to the shell, which writes it from a
        thread after the command (a whole account's state, fsynced: not for the loop)."""
        pending = self.mail.prepare_commit()
        if pending is None:
            return            # nothing staged (a STORE that changed no flag): nothing learnt
        started = time.perf_counter()
        pending.sync()
        self.mail.finish_commit(pending)
        if self.cost is not None:
            if self.on_loop:
                self.cost.timed(time.perf_counter() - started)
            else:
                self.cost.threaded()
        if not self.on_loop and self.mail.snapshot_due:
            self.mail.snapshot()

    def _key(self, name: str, uid: int) -> tuple[str, str] | None:
        msg = self.mail.state.box(name).messages.get(uid)
        return None if msg is None or self.cache is None else (self._where, msg.body)

    def body(self, name: str, uid: int) -> bytes:
        key = self._key(name, uid)
        if key is None:
            return self.mail.body(name, uid)      # (no such message: its error)
        return self.cache.body(key, lambda: self.mail.body(name, uid))

    def parsed(self, name: str, uid: int) -> tuple[bytes, mime.Part] | None:
        key = self._key(name, uid)
        if key is None:
            return None                           # the session reads body() (and its error)
        return self.cache.parsed(key, lambda: self.mail.body(name, uid))

    def version(self, name: str) -> tuple[int, int, int]:
        return self.mail.version(name)

    def message_map(self, name: str):
        return self.mail.message_map(name)

    def holds(self, name: str, uids: list[int]) -> bool:
        """Whether every one of ``uids`` (in ``name``, or gone from it) is in the cache."""
        try:
            box = self.mail.state.box(name)
        except ValueError:
            return True       # no such mailbox: the command answers NO without reading
        if self.cache is None:
            return not uids
        where = str(self.mail.dir)
        for uid in uids:
            msg = box.messages.get(uid)
            if msg is not None and not self.cache.holds((where, msg.body)):
                return False
        return True

    def subscriptions(self) -> set[str]:
        return set(self.mail.state.subscribed)

    def myrights(self, name: str) -> str:
        return rights.ALL     # the account's owner holds every right on its own mailboxes

    def recent(self, name: str, uids: list[int], claim: bool) -> set[int]:
        return self.marks.recent(name, self.mail.state.box(name).uidvalidity, uids, claim)


class ImapMetrics:
    """IMAP's metrics on the instance registry (``runtime.metrics.registry``)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.sessions = Gauge("colony_mailstore_imap_sessions", "IMAP sessions open on this instance.",
                              registry=registry)
        self.logins = Counter("colony_mailstore_imap_logins", "IMAP sessions started, by how and result.",
                              ["how", "result"], registry=registry)
        self.compression = Counter("colony_mailstore_imap_compression",
                                   "IMAP sessions that turned COMPRESS=DEFLATE on (started), and those ended by "
                                   "compressed input that does not inflate (corrupt).", ["event"], registry=registry)
        self.work = Histogram("colony_mailstore_imap_store_seconds",
                              "Time an IMAP command spent with the account held (lock wait excluded).",
                              registry=registry, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))


@dataclass(eq=False)
class _Conn:
    session: S.Session
    wake: asyncio.Event           # the account changed, or the watch wants the session gone
    leave: str | None = None      # set by the watch: say BYE with this
    ready: asyncio.Future | None = None   # what the session's wait awaits (see _serve)
    timer: asyncio.TimerHandle | None = None  # the autologout (or IDLE's "Still here") check, while armed
    timer_at: float = 0.0                     # the session's deadline it was armed for

    def expire(self) -> None:
        self.timer = None
        self.poke()

    def poke(self, *_: object) -> None:
        """End the session's wait: data arrived, a wake-up, or the autologout deadline."""
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    def wake_up(self) -> None:
        self.wake.set()
        self.poke()


class _Incoming(asyncio.Protocol):
    """A session's connection once its first line (the hand-off) is read: what arrives is
    kept here and the session's wait is ended (``_Conn.poke``) from the read's own callback,
    instead of a read task per command and a done-callback on it.  Memory stays bounded as
    with a stream reader: past ``READ_CHUNK`` unread bytes reading pauses until the session
    takes them.  Writes go to the transport as before; ``drain`` waits while its buffer is
    over the high-water mark.  The stream protocol it replaces still hears of the loss of the
    connection, so ``StreamWriter.wait_closed`` works as usual."""

    def __init__(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol, conn: _Conn) -> None:
        self.transport, self.previous, self.conn = transport, previous, conn
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self.lost = False
        self._reading_paused = False
        size, (_, high) = transport.get_write_buffer_size(), transport.get_write_buffer_limits()
        self._writing_paused = size > high
        self._drained: asyncio.Future | None = None

    @classmethod
    async def install(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn) -> _Incoming:
        transport = writer.transport
        incoming = cls(transport, transport.get_protocol(), conn)
        gone = transport.is_closing() or reader.at_eof()
        transport.set_protocol(incoming)
        # Nothing feeds the stream reader any more: what it holds (commands the edge sent
        # right behind the hand-off) comes first.
        reader.feed_eof()
        left = await reader.read()
        if left:
            incoming.chunks.append(left)
            incoming.size = len(left)
        if gone:
            incoming.eof = True
            return incoming
        # Read the socket afresh: the stream protocol may have paused reading (a full
        # buffer) or stopped it (an end of file that came while data was still buffered, which
        # would otherwise never be heard of again); pausing and resuming registers it anew.
        with suppress(Exception):
            transport.pause_reading()
            if incoming.size <= READ_CHUNK:
                transport.resume_reading()
            else:
                incoming._reading_paused = True
        return incoming

    @property
    def ready(self) -> bool:
        """Something to take: data, or the end of the connection."""
        return self.size > 0 or self.eof

    def take(self) -> bytes:
        """Everything received so far (b"" only at the end of the connection)."""
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.size = 0
        if self._reading_paused and not self.eof:
            self._reading_paused = False
            with suppress(Exception):
                self.transport.resume_reading()
        return data

    def _pause(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            with suppress(Exception):
                self.transport.pause_reading()

    def stop(self) -> None:
        """The session is over: wake nothing any more."""
        self.conn = None

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("connection lost")
        if self._writing_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
            if self.lost:
                raise ConnectionResetError("connection lost")

    def _poke(self) -> None:
        if self.conn is not None:
            self.conn.poke()

    # --- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > READ_CHUNK:
            self._pause()
        self._poke()

    def eof_received(self) -> bool:
        self.eof = True
        self._poke()
        return True       # half-closed: the commands already received are still answered

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._poke()
        with suppress(Exception):
            self.previous.connection_lost(exc)


class ImapServer:
    def __init__(self, accounts: AccountManager, route: Route, node_id: str, idle_timeout: float,
                 accepting: Callable[[], bool], verifier: Verifier | None = None, auth: AuthClient | None = None,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic,
                 sharing: Sharing | None = None, exporter: AccountExporter | None = None,
                 max_mailboxes: int = S.MAX_MAILBOXES, idle_notify: float = S.IDLE_NOTIFY) -> None:
        self.accounts = accounts
        self.idle_notify = idle_notify       # imap_idle_notify: "* OK Still here" to a client in IDLE
        self.max_mailboxes = max_mailboxes   # per account (imap_max_mailboxes)
        self.message_cache = MessageCache()   # shared by all sessions of this store
        self.commit_cost = CommitCost()        # where commits run (on the loop while quick)
        self.exporter = exporter   # export lines on imap-inner (colony.contracts.account_export)
        self.sharing = sharing     # shared folders (None: the user's own mail only)
        self.route = route
        self.node_id = node_id
        self.idle_timeout = idle_timeout
        self.accepting = accepting
        self.verifier = verifier
        self.auth = auth
        self.clock = clock
        self.metrics = ImapMetrics(registry)
        self.metrics.sessions.set_function(lambda: self._open_sessions)
        self._open_sessions = 0
        self._conns: dict[str, set[_Conn]] = {}                    # account -> its sessions
        self._hooked: dict[str, tuple[AccountMail, Callable]] = {}  # account -> (mail, unhook)
        self._recent: OrderedDict[str, S.RecentMarks] = OrderedDict()   # LRU, RECENT_ACCOUNTS at most

    @property
    def sessions(self) -> int:
        return sum(len(c) for c in self._conns.values())

    async def handle_handoff(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection on ``imap-inner``: the hand-off line, then the session."""
        await self._connection(reader, writer, handoff=True)

    async def handle_direct(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection on ``imap-direct``: greeting, LOGIN through the auth contract."""
        await self._connection(reader, writer, handoff=False)

    def close(self) -> None:
        for mail, unhook in self._hooked.values():
            with suppress(ValueError):
                unhook()
        self._hooked.clear()

    # --- one connection ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handoff: bool) -> None:
        peer = writer.get_extra_info("peername")
        remote = peer[0] if peer else None
        conn: _Conn | None = None
        counted = False
        try:
            account = None
            if handoff:
                account = await self._handoff(reader, writer)
                if account is None:
                    return   # refused, or an account export (counted by the exporter): no session
            # counted from here: the gauge is subscribers' sessions, not inner connections
            self._open_sessions += 1
            counted = True
            session = S.Session(self.clock, self.node_id, self.idle_timeout, account=account, handed_over=handoff,
                                max_mailboxes=self.max_mailboxes, idle_notify=self.idle_notify)
            conn = _Conn(session, asyncio.Event())
            if account is not None:
                self._conns.setdefault(account, set()).add(conn)
            await self._serve(conn, reader, writer, remote)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("IMAP session failed")
        finally:
            if counted:
                self._open_sessions -= 1
            if conn is not None and conn.session.account:
                self._forget(conn.session.account, conn)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()

    async def _handoff(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), _HANDOFF_TIMEOUT)
        except (asyncio.LimitOverrunError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return None
        if self.exporter is not None and line.startswith(EXPORT_LINE):
            # another store pulling an account (a domain move): not a session
            await self.exporter.serve(line, reader, writer)
            return None
        if self.exporter is not None and line.startswith(MAILBODY_LINE):
            # another region's store fetching a large body sent on from here: not a session
            await self.exporter.serve_body(line, reader, writer)
            return None
        try:
            handoff = self.verifier.verify(line[:MAX_LINE + 1], "imap")
        except HandoffError as exc:
            log.warning("refused an IMAP hand-off from %s: %s", writer.get_extra_info("peername"), exc)
            writer.write(b"NO [AUTHENTICATIONFAILED] Bad hand-off\r\n")
            self.metrics.logins.labels("handoff", "refused").inc()
            return None
        if await self.accounts.directory.sealed(handoff.account):
            # An edge whose directory has not seen the seal yet: refused here too, so nobody
            # changes the old copy during the move's last pass.
            writer.write(b"NO [UNAVAILABLE] This mailbox is being moved to another region; try again shortly\r\n")
            self.metrics.logins.labels("handoff", "moving").inc()
            return None
        if not self.accepting() or not await self._claim(handoff.account):
            writer.write(f"NO [UNAVAILABLE] {NOT_OWNER} {self.node_id}\r\n".encode())
            self.metrics.logins.labels("handoff", "not-owner").inc()
            return None
        self.metrics.logins.labels("handoff", "ok").inc()
        log.info("IMAP session %s for %s from %s", handoff.session, handoff.account, handoff.client_ip)
        return handoff.account

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     remote: str | None) -> None:
        session = conn.session
        incoming = await _Incoming.install(reader, writer, conn)
        out: list[bytes] = []     # a command's responses go out as one write, not one per line
        queued = 0
        # RFC 4978, once COMPRESS DEFLATE was answered: octets both ways go through it.  It is
        # flushed only where the loop is about to wait for the client (and before closing),
        # so a FETCH of many messages is compressed as one stream, not line by line.
        deflate: Deflate | None = None

        def write(data: bytes) -> None:
            if deflate is not None:
                data = deflate.compress(data)
            if data:
                writer.write(data)

        try:
            while True:
                action = session.next_action()
                if isinstance(action, S.Send):
                    out.append(action.data)
                    queued += len(action.data)
                    if queued >= READ_CHUNK:
                        write(b"".join(out))
                        out.clear()
                        queued = 0
                        if writer.transport.get_write_buffer_size() > READ_CHUNK:
                            await incoming.drain()   # a client that does not read slows its own session only
                    continue
                if out:
                    write(b"".join(out))
                    out.clear()
                    queued = 0
                if isinstance(action, S.StartCompression):
                    # The tagged OK just went out as it is; what follows is compressed.
                    deflate = Deflate()
                    self.metrics.compression.labels("started").inc()
                    continue
                if isinstance(action, S.Close):
                    if deflate is not None:
                        writer.write(deflate.flush())
                    await incoming.drain()
                    return
                if isinstance(action, S.Authenticate):
                    await self._authenticate(conn, action, remote)
                    continue
                if isinstance(action, S.NeedStore):
                    await self._run(conn)
                    continue
                if deflate is not None:
                    writer.write(deflate.flush())   # (b"" when nothing was compressed since)
                await incoming.drain()
                if conn.leave is not None and session.state != S.LOGOUT:
                    session.goodbye(conn.leave)
                    continue
                inflating = deflate is not None and deflate.pending
                if not incoming.ready and not inflating and not conn.wake.is_set():
                    # One future for "data, a wake-up or the deadline", resolved by whichever
                    # comes first; the connection's protocol resolves it itself (no read task
                    # per command).  No polling per session: the watch wakes it when it must go.
                    loop = asyncio.get_running_loop()
                    conn.ready = loop.create_future()
                    deadline = session.deadline
                    if conn.timer is not None and deadline < conn.timer_at:
                        # An IDLE began: its "Still here" is due before the autologout the
                        # timer was armed for.
                        conn.timer.cancel()
                        conn.timer = None
                    if conn.timer is None:
                        # Armed once and left running: the deadline mostly moves later, so a
                        # timer that fires early costs one look (tick) and is armed again,
                        # instead of a timer made and cancelled at every command.
                        conn.timer_at = deadline
                        conn.timer = loop.call_later(max(0.0, deadline - self.clock()), conn.expire)
                    try:
                        await conn.ready
                    finally:
                        conn.ready = None
                if conn.wake.is_set():
                    conn.wake.clear()
                    session.wake()
                if deflate is not None:
                    if not deflate.pending and incoming.ready:
                        data = incoming.take()
                        if not data:
                            return       # the edge (or the client) closed
                        deflate.feed(data)
                    try:
                        # One chunk at a time, taken by the session's reader (under its line
                        # and literal limits) before the next is inflated: input that inflates
                        # a thousandfold never exists inflated at once.
                        plain = deflate.inflate()
                    except CorruptStream as exc:
                        # No BYE: a client whose stream is broken could not read it.
                        log.info("IMAP session of %s ended: compressed input does not inflate (%s)",
                                 session.account, exc)
                        self.metrics.compression.labels("corrupt").inc()
                        return
                    if plain:
                        session.receive_data(plain)
                    if deflate.pending:
                        await asyncio.sleep(0)   # a long inflation lets the other sessions in
                elif incoming.ready:
                    data = incoming.take()
                    if not data:
                        return       # the edge (or the client) closed
                    session.receive_data(data)
                session.tick()
        finally:
            incoming.stop()
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None

    async def _authenticate(self, conn: _Conn, action: S.Authenticate, remote: str | None) -> None:
        if self.auth is None:
            conn.session.auth_result(action.tag, None, "Login is not offered on this listener")
            return
        try:
            reply = await self.auth.check(action.user, action.password, "imap", remote)
        except AuthUnavailable:
            conn.session.auth_result(action.tag, None, "Authentication is unavailable; try again", temporary=True)
            return
        if not reply.ok:
            self.metrics.logins.labels("login", "refused").inc()
            temporary = reply.reason in (AuthFailure.THROTTLED, AuthFailure.INTERNAL)
            conn.session.auth_result(action.tag, None, "Invalid credentials" if not temporary
                                     else "Try again later", temporary)
            return
        account = reply.account.lower()
        if not await self._claim(account):
            conn.session.auth_result(action.tag, None, "The account is served elsewhere right now", temporary=True)
            return
        conn.session.auth_result(action.tag, account)
        self.metrics.logins.labels("login", "ok").inc()
        self._conns.setdefault(account, set()).add(conn)

    async def _claim(self, account: str) -> bool:
        try:
            return await self.route(account)
        except Exception as exc:
            log.warning("could not claim %s for IMAP: %s", account, exc)
            return False

    async def _open(self, account: str) -> OpenAccount:
        if not await self._claim(account):
            raise NotOwner(f"{account} is served by another mail store")
        lease = self.accounts.ownership.holding(account)
        if lease is None:
            raise NotOwner(f"lease on {account} not held")
        acct = await self.accounts.get(account, lease)
        self._hook(account, acct.mail)
        return acct

    def _hook(self, account: str, mail: AccountMail) -> None:
        """Listen to the account's commits (each reopen of the account is a new handle)."""
        hooked = self._hooked.get(account)
        if hooked is not None and hooked[0] is mail:
            return
        if hooked is not None:
            with suppress(ValueError):
                hooked[1]()
        loop = asyncio.get_running_loop()

        def changed(records) -> None:   # runs in the committing worker thread
            loop.call_soon_threadsafe(self._notify, account)

        self._hooked[account] = (mail, mail.add_listener(changed))

    def _forget(self, account: str, conn: _Conn) -> None:
        conns = self._conns.get(account)
        if conns is not None:
            conns.discard(conn)
            if not conns:     # the last session of the account: stop listening to it
                del self._conns[account]
                hooked = self._hooked.pop(account, None)
                if hooked is not None:
                    with suppress(ValueError):
                        hooked[1]()

    async def watch(self) -> None:
        """One loop for all sessions (run by the workload): sessions of an account this store
        no longer holds (lost, released, draining) or whose domain's move is sealing are told
        to say BYE, and accounts with open sessions are kept from idle release."""
        next_shared = 0.0
        while True:
            draining = not self.accepting()
            now = self.clock()
            poll_shared, next_shared = (True, now + SHARED_IDLE_POLL) if now >= next_shared else (False, next_shared)
            for account, conns in list(self._conns.items()):
                if draining or account not in self.accounts.ownership.leases:
                    # The client's reconnect reaches the new owner through the edge.
                    why = ("[UNAVAILABLE] This server is shutting down; reconnect" if draining else
                           "[UNAVAILABLE] The account moved to another server; reconnect")
                    for conn in conns:
                        if conn.leave is None:
                            conn.leave = why
                            conn.wake_up()
                    continue
                if await self.accounts.directory.sealed(account):
                    # The domain's move is in its last pass: the source's copy must stop
                    # changing, so its sessions end (the move waits for none to be left).
                    for conn in conns:
                        if conn.leave is None:
                            conn.leave = SEALED_BYE
                            conn.wake_up()
                    continue
                acct = self.accounts.open.get(account)
                if acct is not None:
                    acct.last_used = self.accounts.clock()
                if poll_shared:
                    for conn in conns:
                        mailbox = conn.session.mailbox
                        if conn.session.idling and mailbox and mailbox.startswith(SHARED_PREFIX):
                            conn.wake_up()
            await asyncio.sleep(_CHECK)

    def sessions_of_domain(self, domain: str) -> int:
        """Open sessions of the domain's accounts here (a move seals only when none is left)."""
        suffix = "@" + domain.lower()
        return sum(len(conns) for account, conns in self._conns.items() if account.lower().endswith(suffix))

    def marks_for(self, account: str) -> S.RecentMarks:
        """The account's \\Recent marks (shared folders' calls use the owner's)."""
        marks = self._recent.setdefault(account, S.RecentMarks())
        self._recent.move_to_end(account)
        while len(self._recent) > RECENT_ACCOUNTS:
            self._recent.popitem(last=False)
        return marks

    def _notify(self, account: str) -> None:
        for conn in self._conns.get(account, ()):
            conn.wake_up()

    def _light(self, session: S.Session, mail: AccountMail, owners: list[str], own: MailStore) -> bool:
        """Whether the waiting command can run on the event loop: it only reads the account's
        state in memory and messages already in the cache (``Session.pending_reads``) and
        writes at most flags and expunges while commits are quick (``CommitCost``), no
        colleague's folder is in reach (those calls go over the bus), and the account is
        small enough for the work to be short.  Handing a command to a worker thread and
        back cost about as much as a cached FETCH itself."""
        if owners or mail.state.messages_total > INLINE_MAX_MESSAGES:
            return False
        uids = session.pending_reads(record_writes=self.commit_cost.on_loop())
        if uids is None:
            return False
        if not uids:
            return True
        return session.mailbox is not None and own.holds(session.mailbox, uids)

    async def _run(self, conn: _Conn) -> None:
        session = conn.session
        try:
            acct = await self._open(session.account)
        except Exception as exc:
            log.info("IMAP session for %s: account unavailable: %s", session.account, exc)
            session.abort("[UNAVAILABLE] The account is not available here right now")
            session.goodbye("[UNAVAILABLE] The account moved to another server; reconnect")
            return
        try:
            quota = await self.accounts.directory.quota(session.account)   # cached by the directory
        except Exception as exc:   # the bus is away: serve mail, enforce the quota next time
            log.warning("quota of %s unknown: %s", session.account, exc)
            quota = None
        owners = await self.sharing.owners(session.account) if self.sharing is not None else []
        async with acct.lock:
            if self.accounts.open.get(session.account) is not acct:
                session.abort("[UNAVAILABLE] The account moved; reconnect")
                return
            acct.last_used = self.accounts.clock()
            store = own = MailStore(acct.mail, self.marks_for(session.account), quota, self.message_cache,
                                    self.commit_cost)
            if self.sharing is not None:
                # Colleagues' folders under Other Users/ (colony.protocols.imap.shared); each
                # call on one goes to the mail store owning that account (sharing.RemoteView).
                loop, account = asyncio.get_running_loop(), session.account
                store = CompositeStore(store, account, owners,
                                       lambda owner: RemoteView(self.sharing.call, loop, owner, account))
            # Who the account grants rights to, for the grant index, only around a command
            # that may change it (a walk over every mailbox's ACL, twice, per command).
            follow = self.sharing is not None and not session.pending_keeps_grants()
            before = grantees(acct.mail) if follow else None
            started = time.perf_counter()
            try:
                if self._light(session, acct.mail, owners, own):
                    own.on_loop = True
                    session.run(store)
                    if acct.mail.snapshot_due:
                        await thread_to_the_end(acct.mail.snapshot)
                else:
                    # Cancelled (a stop), it still waits for the thread: the lock must not be
                    # released while the command works on the account's handle.
                    await thread_to_the_end(session.run, store)
                self.metrics.work.observe(time.perf_counter() - started)
                after = grantees(acct.mail) if follow else None
            except Exception:
                log.exception("IMAP command for %s failed", session.account)
                session.abort("[SERVERBUG] Internal error; the account will be reopened")
            else:
                if follow:
                    await self.sharing.record(session.account, before, after)
                return
        # A failed commit breaks the handle: close it (outside its lock) so the next command reopens.
        await self.accounts.close(session.account, "imap error", release=False)

