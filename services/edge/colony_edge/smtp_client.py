"""The outbound queue's SMTP client: the asyncio shell around ``colony.protocols.smtp.client``.

It owns the socket, STARTTLS and the reply deadline; the core owns parsing and the order of
a transaction.  A session is greeted and EHLO'd (HELO if EHLO is refused) on ``connect``;
``starttls`` upgrades it and says EHLO again (RFC 3207 §4.2: the extensions are learnt
anew); ``send`` runs one transaction, pipelined when the server advertised PIPELINING (one
write and one wake-up for MAIL, every RCPT and DATA instead of a round trip each), and
``rset``/``quit``/``close`` end things.  Every reply must come within ``timeout`` seconds
of the previous step, and every megabyte written must leave within it too (RFC 5321
§4.5.3.2 asks for longer ones; a dead MX must not hold a slot).  Failures are ``SmtpError``:
the connection closed, a timeout, a malformed reply, or a refusal of the session itself
(greeting, EHLO and HELO, STARTTLS).
"""

from __future__ import annotations

import asyncio
import ssl

from colony.protocols.smtp.client import (ProtocolError, RemoteReply, ReplyReader, Transaction, command,
                                          ehlo_extensions, encode_message)
from colony.protocols.smtp.syntax import as_domain

_READ = 64 * 1024
_WRITE = 1024 * 1024   # octets of a message sent between two progress deadlines


class SmtpError(Exception):
    """The session cannot go on (closed, timed out, a malformed reply, a refused step)."""

    def __init__(self, message: str, reply: RemoteReply | None = None) -> None:
        super().__init__(message)
        self.reply = reply
        self.transaction: Transaction | None = None   # set by ``send``: how far it got


class SmtpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local_hostname: str,
                 timeout: float) -> None:
        self._reader, self._writer = reader, writer
        self.local_hostname, self.timeout = as_domain(local_hostname), timeout
        self._replies = ReplyReader()
        self.greeting: RemoteReply | None = None
        self.extensions: dict[str, str] = {}
        self.tls = False

    @classmethod
    async def connect(cls, host: str, port: int, *, local_hostname: str, timeout: float) -> SmtpClient:
        """A session with ``host``, greeted and EHLO'd."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=_READ)
        except TimeoutError:
            raise SmtpError(f"connecting to {host}:{port} timed out") from None
        client = cls(reader, writer, local_hostname, timeout)
        try:
            greeting = client.greeting = await client._reply()
            if greeting.code != 220:
                raise SmtpError(f"greeting: {greeting.code} {greeting.text}", greeting)
            await client._hello()
        except BaseException:
            client.close()
            raise
        return client

    async def _hello(self) -> None:
        reply = await self._command(command("EHLO", self.local_hostname))
        if reply.positive:
            self.extensions = ehlo_extensions(reply)
            return
        if reply.code == 421:
            raise SmtpError(f"EHLO: {reply.code} {reply.text}", reply)
        self.extensions = {}
        reply = await self._command(command("HELO", self.local_hostname))
        if not reply.positive:
            raise SmtpError(f"HELO: {reply.code} {reply.text}", reply)

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    @property
    def is_connected(self) -> bool:
        return not self._writer.is_closing() and not self._reader.at_eof()

    @property
    def in_step(self) -> bool:
        """No reply beyond those the commands asked for has been read: a session that sent
        more (a pipelining server answering twice) is not reused, or the next transaction
        would take a stale reply for its own."""
        return not self._replies.pending

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        """STARTTLS, the handshake, and EHLO again.  Raises SmtpError if the server does not
        offer it or refuses it, ``ssl.SSLError`` (and ``ssl.CertificateError``) if the
        handshake fails."""
        if not self.supports("STARTTLS"):
            raise SmtpError("the server does not offer STARTTLS")
        reply = await self._command(b"STARTTLS\r\n")
        if reply.code != 220:
            raise SmtpError(f"STARTTLS: {reply.code} {reply.text}", reply)
        if self._replies.pending:
            # Sent in the clear after the 220: never read as if it came over TLS.
            raise SmtpError("octets after the reply to STARTTLS (a response injection)")
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.start_tls(context, server_hostname=server_hostname)
        except TimeoutError:
            raise SmtpError("TLS handshake timed out") from None
        self.tls = True
        self.extensions = {}
        await self._hello()

    async def send(self, mail_from: str, recipients: list[str], message: bytes, options: tuple[str, ...] = (),
                   encoded: bool = False, rcpt_options: list[tuple[str, ...]] | None = None) -> Transaction:
        """One transaction; the result's replies say what became of each recipient.  A
        ``421`` ends it (``closing``) and the session; a failure of the session raises
        SmtpError, with ``transaction`` on the exception telling how far it got (in
        particular ``message_sent``: whether the server may have taken the message)."""
        tx = Transaction(mail_from, recipients, message if encoded else encode_message(message), options,
                         pipelining=self.supports("PIPELINING"), rcpt_options=rcpt_options or [])
        out = tx.start()
        try:
            while True:
                if out:
                    await self._write(out)
                if tx.finished:
                    break
                reply = await self._reply()
                if reply.code == 354 and self._replies.pending:
                    # More replies came with the 354 than commands were sent: a server out
                    # of step, whose next reply would be read as the answer to a message it
                    # has not seen yet.  The message is not sent.
                    raise ProtocolError("replies after the 354 to DATA, before the message was sent")
                out = tx.receive(reply)
        except SmtpError as exc:
            exc.transaction = tx
            raise
        except (OSError, ProtocolError) as exc:
            error = SmtpError(str(exc) or type(exc).__name__)
            error.transaction = tx
            raise error from exc
        if tx.closing is not None:
            self.close()
        return tx

    async def idle(self) -> None:
        """Return when the server sends anything, or closes, while the session is idle
        (kept for reuse, nothing asked): either way the session is not to be used again --
        a reply nobody asked for would be read as the next command's.  Cancel it to use the
        session; nothing is lost by that (octets that come later wait in the reader)."""
        try:
            await self._reader.read(_READ)
        except OSError:
            pass

    async def rset(self) -> RemoteReply:
        reply = await self._command(b"RSET\r\n")
        if not reply.positive:
            raise SmtpError(f"RSET: {reply.code} {reply.text}", reply)
        return reply

    async def quit(self) -> None:
        try:
            await self._command(b"QUIT\r\n")
        finally:
            self.close()

    def close(self) -> None:
        self._writer.close()

    async def _command(self, line: bytes) -> RemoteReply:
        try:
            await self._write(line)
        except OSError as exc:
            raise SmtpError(str(exc) or type(exc).__name__) from exc
        return await self._reply()

    async def _write(self, data: bytes) -> None:
        """Send ``data``; each ``_WRITE`` octets of it must leave within ``timeout`` (a server
        that stops reading must not hold the session: drain() alone waits forever, and one
        deadline for the whole of a large message would be too short on a slow link)."""
        view = memoryview(data)
        for start in range(0, len(view), _WRITE):
            self._writer.write(view[start:start + _WRITE])
            try:
                async with asyncio.timeout(self.timeout):
                    await self._writer.drain()
            except TimeoutError:
                raise SmtpError(f"the server read nothing within {self.timeout:g}s") from None

    async def _reply(self) -> RemoteReply:
        replies = self._replies
        reply = replies.next_reply()
        if reply is not None:
            return reply
        try:
            # One deadline for the whole reply, not one per read: a server that drips a
            # byte at a time would otherwise hold the session (and the destination's slot)
            # for as long as it likes.
            async with asyncio.timeout(self.timeout):
                while reply is None:
                    data = await self._reader.read(_READ)
                    if not data:
                        raise SmtpError("connection closed by the server")
                    replies.receive_data(data)
                    reply = replies.next_reply()
        except TimeoutError:
            raise SmtpError(f"no reply within {self.timeout:g}s") from None
        except OSError as exc:
            raise SmtpError(str(exc) or type(exc).__name__) from exc
        except ProtocolError as exc:
            self.close()
            raise SmtpError(str(exc)) from exc
        return reply


def opportunistic_context() -> ssl.SSLContext:
    """STARTTLS without verification (RFC 7435: opportunistic security; a certificate the
    client cannot check still beats plaintext).  Made once per process."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


__all__ = ["SmtpClient", "SmtpError", "opportunistic_context"]
