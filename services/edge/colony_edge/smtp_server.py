"""The asyncio shell of the MX: moves bytes between a socket and the sans-IO SMTP core,
asks the policy (``smtp_policy``) at every decision, collects message bodies as they arrive
and hands finished messages to the ``MailAcceptor`` before answering 250.

One ``SmtpServer`` per listener; ``handle(reader, writer)`` runs one connection to its end.
Memory per session is bounded by the core (one line), one socket read (64 KiB) and, while a
message is in DATA, at most ``MEMORY_SPOOL`` octets of it: a larger one goes to a spool file
chunk by chunk and from there to the bus.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from opentelemetry import trace

from colony.cluster.sessions import SessionTracker
from colony.protocols.smtp import NEED_DATA, PAUSED, Reply, ServerConfig, ServerConnection, events as E, replies as R
from colony_edge.acceptance import AcceptanceFailed, MailAcceptor, SmtpMetrics, remove_quietly
from colony_edge.smtp_policy import IncomingMessage, SmtpPolicy, SmtpSession, Verdict

log = logging.getLogger("colony.edge.smtp")

READ_SIZE = 64 * 1024
# A message up to this size is kept in memory, not written to a spool file (see _Session's
# spool section for why); the acceptor holds such a message in memory to publish it anyway.
MEMORY_SPOOL = 64 * 1024
TLS_HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True)
class SmtpServerConfig:
    hostname: str
    spool_dir: Path
    max_message_size: int
    max_recipients: int
    max_errors: int
    timeout: float
    greeting_delay: float = 0.0
    # Submission (RFC 6409/8314): AUTH mechanisms offered once TLS is active, MAIL only after
    # AUTH, and implicit TLS (port 465: the listener did the handshake before ``handle``).
    auth_mechanisms: tuple[str, ...] = ()
    auth_required: bool = False
    implicit_tls: bool = False


class SmtpServer:
    def __init__(self, config: SmtpServerConfig, policy: SmtpPolicy, acceptor: MailAcceptor, metrics: SmtpMetrics,
                 tracker: SessionTracker, tls: ssl.SSLContext | None = None) -> None:
        self.config, self.policy, self.acceptor, self.metrics = config, policy, acceptor, metrics
        self.tracker, self.tls = tracker, tls
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        config.spool_dir.mkdir(parents=True, exist_ok=True)
        # Files left by a process that died mid-message: never acknowledged, so never owed.
        remove_quietly(p for p in config.spool_dir.iterdir() if p.suffix == ".spool")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, reader, writer, f"{self._prefix}.{next(self._ids)}")
        with self.tracker.track("smtp", f"{session.info.peer_ip}:{session.info.peer_port}", session.goodbye):
            try:
                await session.run()
            finally:
                session._finished.set()
                session.discard_spool()
                writer.close()
                await self.policy.disconnect(session.info)


class _Session:
    def __init__(self, server: SmtpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sid: str) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.info = SmtpSession(id=sid, peer_ip=str(peer[0]), peer_port=int(peer[1]), local_port=int(local[1]))
        cfg = server.config
        self.loop = asyncio.get_running_loop()
        self.conn = ServerConnection(ServerConfig(
            hostname=cfg.hostname, max_message_size=cfg.max_message_size, max_recipients=cfg.max_recipients,
            max_errors=cfg.max_errors, timeout=cfg.timeout, tls_available=server.tls is not None or cfg.implicit_tls,
            tls_active=cfg.implicit_tls, auth_mechanisms=cfg.auth_mechanisms, auth_required=cfg.auth_required),
            self.loop.time())
        if cfg.implicit_tls:
            tls = writer.get_extra_info("ssl_object")
            self.info.tls = tls.version() if tls else "TLS"
            cipher = tls.cipher() if tls else None
            self.info.tls_cipher = cipher[0] if cipher else None
        self._buffer: bytearray | None = None   # the message in DATA, while it is small enough
        self._spool: BinaryIO | None = None       # else its spool file
        self._span: trace.Span | None = None   # one trace per message: from DATA/BDAT to the acks
        self._spool_path: Path | None = None
        self._receiving = False     # a message is being received (DATA/BDAT)
        self._closing = False
        self._finished = asyncio.Event()   # run() has returned

    # --- life -----------------------------------------------------------------------------

    async def run(self) -> None:
        server, conn = self.server, self.conn
        server.metrics.connections.inc()
        verdict = await self._ask("connect", server.policy.connect(self.info))
        if not verdict.accept:
            reply = verdict.reply or R.CONNECTION_REFUSED
            self._refused("connect", reply)
            await self._write(conn.refuse(reply))
            return
        if server.config.greeting_delay > 0 and not await self._wait_for_early_talker():
            return
        await self._write(conn.greet(self.loop.time()))
        while not self._closing:
            event = conn.next_event()
            out = conn.data_to_send()
            if out:
                self.writer.write(out)
            if event is NEED_DATA:
                await self._read()
            elif event is PAUSED:
                if conn.closed:
                    break
                raise RuntimeError(f"SMTP core paused in session {self.info.id} with nothing to answer")
            elif isinstance(event, E.ConnectionClosed):
                await self._drain()
                break
            else:
                await self._on_event(event)

    async def _wait_for_early_talker(self) -> bool:
        """Wait the greeting delay; whatever the client says meanwhile marks it an early talker."""
        try:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), self.server.config.greeting_delay)
        except asyncio.TimeoutError:
            return True
        if not data:
            return False
        self.conn.receive_data(data, self.loop.time())
        return True

    async def _read(self) -> None:
        deadline = self.conn.get_timer()   # on the loop's clock, as the core was given it
        await self._drain()
        try:
            # timeout_at, not wait_for: Python 3.11's wait_for wraps the read in a new task
            # (two more loop callbacks per read, four reads per submitted message); this
            # only arms a timer handle.
            async with asyncio.timeout_at(deadline):
                data = await self.reader.read(READ_SIZE)
        except asyncio.TimeoutError:
            self.conn.handle_timer(self.loop.time())
            return
        except (ConnectionError, OSError, ssl.SSLError):
            data = b""
        self.conn.receive_data(data, self.loop.time())

    async def goodbye(self) -> None:
        """Drain timed out: 421 4.3.2 now, then close (the tracker bounds how long this takes).
        While a command waits for the policy or the acceptor (a message being made durable),
        the session answers it first and the core adds the 421: the client hears the 250 of
        a message that was kept, and does not send it again."""
        self.conn.shutdown()
        if not self.conn.closed:
            await self._finished.wait()
            return
        self._closing = True
        with suppress(Exception):
            self.writer.write(self.conn.data_to_send())
            await asyncio.wait_for(self.writer.drain(), 5)
        if self.writer.transport.get_write_buffer_size():
            self.writer.transport.abort()   # the client reads nothing: close() would wait for ever
        self.writer.close()

    # --- events ---------------------------------------------------------------------------

    async def _on_event(self, event: E.Event) -> None:
        policy, info, conn = self.server.policy, self.info, self.conn
        if isinstance(event, E.Helo):
            verdict = await self._ask("helo", policy.helo(info, event.name))
            if verdict.accept:
                info.helo, info.extended = event.name, event.extended
                info.reset_transaction()
            await self._answer("helo", verdict.reply, R.OK, verdict.accept)
        elif isinstance(event, E.MailFrom):
            info.reset_transaction()
            info.mail_from = event
            verdict = await self._ask("mail", policy.mail_from(info, event))
            if not verdict.accept:
                info.mail_from = None
            await self._answer("mail", verdict.reply, R.SENDER_OK, verdict.accept)
        elif isinstance(event, E.RcptTo):
            before = len(info.recipients)
            verdict = await self._ask("rcpt", policy.rcpt_to(info, event))
            if verdict.accept and len(info.recipients) == before:
                log.error("policy accepted RCPT %s without resolving it; refusing", event.address)
                verdict = Verdict(False, R.TEMPORARY_FAILURE)
            if verdict.accept and info.max_message_size is not None:
                conn.limit_message_size(info.max_message_size)
            await self._answer("rcpt", verdict.reply, R.RECIPIENT_OK, verdict.accept)
        elif isinstance(event, E.Auth):
            hook = getattr(policy, "auth", None)
            verdict = await self._ask("auth", hook(info, event)) if hook else Verdict(False, R.AUTH_NOT_AVAILABLE)
            info.authenticated = info.authenticated or verdict.accept
            await self._answer("auth", verdict.reply, R.AUTH_OK, verdict.accept)
        elif isinstance(event, E.DataStarted):
            self._open_spool()
        elif isinstance(event, E.DataChunk):
            self._take(event.data)
        elif isinstance(event, E.DataComplete):
            await self._complete(event)
        elif isinstance(event, (E.MessageAborted, E.TransactionReset)):
            self._end_message()
            info.reset_transaction()
        elif isinstance(event, E.StartTls):
            await self._start_tls(event)
        elif isinstance(event, E.Rejected):
            self._refused(event.command.lower() or "protocol", event.reply)

    async def _ask(self, stage: str, decision) -> Verdict:
        """A policy that fails (a bug, DNS or the bus down) must not end the session with a
        traceback: the client hears 451 4.3.0 and tries again later."""
        try:
            return await decision
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("smtp %s: %s policy failed; answering 451", self.info.id, stage)
            return Verdict(False, R.TEMPORARY_FAILURE)

    async def _answer(self, stage: str, refusal: Reply | None, positive: Reply, accept: bool) -> None:
        if accept:
            reply = refusal if refusal is not None and refusal.positive else positive
        else:
            reply = refusal or R.TEMPORARY_FAILURE
            self._refused(stage, reply)
        await self._write(self.conn.send(reply))

    def _refused(self, stage: str, reply: Reply | None) -> None:
        reply = reply or R.TEMPORARY_FAILURE
        reason = reply.reason or f"{reply.code}"
        self.server.metrics.rejected.labels(stage=stage, reason=reason).inc()
        log.info("smtp %s from %s: %s refused (%s): %d %s %s", self.info.id, self.info.peer_ip, stage, reason,
                 reply.code, reply.status or "", reply.text)

    async def _complete(self, event: E.DataComplete) -> None:
        info = self.info
        message = self._received(event.size)
        verdict = await self._ask("data", self.server.policy.data_complete(info, message))
        if not verdict.accept:
            await self._answer("data", verdict.reply, R.QUEUED, False)
        else:
            try:
                with trace.use_span(self._span or trace.INVALID_SPAN, end_on_exit=False):
                    message_id = await self.server.acceptor.accept(info, message)
            except AcceptanceFailed as exc:
                reply = exc.reply or R.TEMPORARY_FAILURE
                log.error("smtp %s: message not made durable, answering %d: %s", info.id, reply.code, exc)
                await self._answer("data", reply, R.QUEUED, False)
            else:
                await self._answer("data", None, Reply(250, "2.0.0", f"OK queued as {message_id}"), True)
        self._end_message()
        info.reset_transaction()

    async def _start_tls(self, event: E.StartTls) -> None:
        await self._drain()
        try:
            await asyncio.wait_for(self.writer.start_tls(self.server.tls), TLS_HANDSHAKE_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError) as exc:
            log.info("smtp %s from %s: TLS handshake failed: %s", self.info.id, self.info.peer_ip, exc)
            self.server.metrics.rejected.labels(stage="starttls", reason="tls_handshake").inc()
            self._closing = True
            return
        tls = self.writer.get_extra_info("ssl_object")
        self.info.tls = tls.version() if tls else "TLS"
        cipher = tls.cipher() if tls else None
        self.info.tls_cipher = cipher[0] if cipher else None
        self.info.helo, self.info.extended = "", False
        self.info.reset_transaction()
        self.conn.tls_started(self.loop.time())

    # --- spool ----------------------------------------------------------------------------

    # A message up to MEMORY_SPOOL octets stays in memory: no file is written, read back or
    # emptied for it.  The spool file per session that was emptied for each message
    # (truncated to zero) cost ~180 us of CPU and ~0.9 ms of a blocked event loop per
    # message on ext4: a file truncated to zero is written out to the disk at its next
    # close (auto_da_alloc), and the policy and the acceptor open and close it to read the
    # message, so every message became a disk write, made from the loop.  A larger message
    # goes to a file of its own, removed when the message is done (a file never truncated
    # to zero and removed before its dirty pages are written costs no disk write).  Readers
    # use the ``IncomingMessage``'s octets or open its file by path; the shell takes the
    # next message only after the acceptor has answered for this one.

    def _open_spool(self) -> None:
        self._end_message()
        self._span = self.server.acceptor.tracer.start_span("smtp.message", attributes={
            "net.peer.ip": self.info.peer_ip, "colony.session": self.info.id})
        self._buffer = bytearray()
        self._receiving = True

    def _take(self, data: bytes) -> None:
        if not self._receiving:
            return
        if self._spool is not None:
            self._spool.write(data)
            return
        buffer = self._buffer
        assert buffer is not None
        buffer += data
        if len(buffer) > MEMORY_SPOOL:   # too large to hold: to a file, this chunk and the rest
            self._spool_path = self.server.config.spool_dir / f"{self.info.id}.spool"
            self._spool = open(self._spool_path, "w+b")
            self._spool.write(buffer)
            self._buffer = None

    def _received(self, size: int) -> IncomingMessage:
        """The message's octets are complete: in memory, or in the file (flushed, so readers
        opening the path see all of them)."""
        self._receiving = False
        if self._spool is not None:
            self._spool.flush()
            return IncomingMessage(size=size, spool=self._spool_path)
        return IncomingMessage(size=size, data=bytes(self._buffer or b""))

    def _end_message(self) -> None:
        """The message is done (accepted, refused or abandoned): its octets go, its span ends."""
        self._receiving = False
        self._buffer = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._spool_path is not None:
            remove_quietly([self._spool_path])
            self._spool_path = None
        if self._span is not None:
            self._span.end()
            self._span = None

    def discard_spool(self) -> None:
        """The session's end: a message's octets still held go."""
        self._end_message()

    # --- output ---------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
        await self._drain()

    async def _drain(self) -> None:
        writer = self.writer
        try:
            if not writer.transport.get_write_buffer_size():
                await writer.drain()   # nothing is waiting to go out: no timer needed
                return
            # A client that sends commands and never reads the replies would hold the session
            # here for ever (the core's timer runs only while the shell reads): it has as long
            # to read a reply as to send a command (RFC 5321 §4.5.3.2), then it is cut off.
            async with asyncio.timeout(self.server.config.timeout):
                await writer.drain()
        except TimeoutError:
            log.info("smtp %s from %s: the client read no reply for %.0f s; connection aborted", self.info.id,
                     self.info.peer_ip, self.server.config.timeout)
            self.server.metrics.rejected.labels(stage="protocol", reason=R.TIMEOUT.reason).inc()
            self._closing = True
            writer.transport.abort()   # close() would wait for ever to flush what it cannot send
        except (ConnectionError, OSError):
            self._closing = True
