"""What an SMTP session asks before it answers: the policy hooks of the edge's MX.

The sans-IO core (``colony.protocols.smtp``) knows the protocol; everything that depends on
who the client is, what the directory says or what other edges counted is a *policy*
decision, taken by an object with the ``SmtpPolicy`` hooks below (the shape of aiosmtpd's
handler, without its coupling to I/O).  Each hook returns a ``Verdict``: ``ACCEPT`` (the
session's normal positive reply) or ``refuse(reply)`` with the exact reply to send.  Every
refusal is metered (``colony_smtp_rejected_total{stage,reason}``) and logged by the session,
so a policy only decides.

Policies compose with ``PolicyChain``: hooks run in order and the first refusal wins, so
edge security (DNSBL, SPF/DKIM/DMARC, shared counters, CIDR lists) is one more policy placed
before ``RecipientPolicy`` (which resolves recipients against the directory cache), e.g.::

    chain = PolicyChain([EdgeSecurity(...), RecipientPolicy(cache, settings)])

A hook may also *change* the session: ``data_complete`` may add header fields
(``message.add_header("Authentication-Results", ...)``) that are prepended to the stored
message, and ``rcpt_to`` records the resolved mailboxes in ``session.recipients``.
"""

from __future__ import annotations

import io
import logging

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from colony.contracts.recipients import Mailbox
from colony.protocols.smtp import Reply, events as E, replies as R

log = logging.getLogger("colony.edge.smtp")

_MOVE_CHUNK = 1 << 20   # octets moved at a time when a spooled message loses a header field


@dataclass(frozen=True)
class Verdict:
    accept: bool
    reply: Reply | None = None   # None with accept: the core's usual positive reply

    @property
    def reason(self) -> str:
        return self.reply.reason if self.reply else ""


ACCEPT = Verdict(True)


def refuse(reply: Reply) -> Verdict:
    if reply.positive:
        raise ValueError(f"a refusal needs a 4xx/5xx reply, not {reply}")
    return Verdict(False, reply)


@dataclass
class AcceptedRecipient:
    """One RCPT TO the policy accepted, and the final mailboxes it resolved to; ``remote``:
    addresses outside the cluster it also goes to (forwarding targets, or the original
    sender of a bounce to an SRS address), delivered through OUTBOUND."""

    rcpt: E.RcptTo
    mailboxes: tuple[Mailbox, ...]
    remote: tuple[str, ...] = ()


@dataclass
class SmtpSession:
    """What is known about one connection; hooks read it and may annotate ``notes``."""

    id: str
    peer_ip: str
    peer_port: int
    local_port: int
    helo: str = ""
    extended: bool = False
    tls: str | None = None            # TLS version once STARTTLS completed
    tls_cipher: str | None = None
    authenticated: bool = False       # AUTH succeeded (submission): the trace says so, RFC 3848
    max_message_size: int | None = None  # the strictest class of service of the recipients so far
    mail_from: E.MailFrom | None = None
    recipients: list[AcceptedRecipient] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)  # free for policies

    def reset_transaction(self) -> None:
        self.mail_from = None
        self.recipients = []
        self.max_message_size = None


@dataclass
class IncomingMessage:
    """The message at its end: its size, its octets (``data``, a message the shell kept in
    memory, or else the ``spool`` file they were written to), and header fields to prepend
    (policies add e.g. Authentication-Results; the edge adds Received/Return-Path).  Read
    them through ``read_bytes``, ``read_head`` and ``open``, which serve either."""

    size: int
    spool: Path | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes | None = None

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def leave_out(self, ranges: list[tuple[int, int]]) -> None:
        """Delete these octet ranges (sorted, apart) from the message: header fields the edge
        must not pass on (``security.authentication.claimed_results``).  The copy in memory
        is rebuilt; a spool file is rewritten in place, each kept stretch moved down and the
        file cut short (its path is what readers open).  Blocking for a spool file."""
        # The last field's range may count the CRLF of a message that ends without one.
        ranges = [(start, min(end, self.size)) for start, end in ranges if start < self.size]
        if not ranges:
            return
        if self.data is not None:
            kept, at = [], 0
            for start, end in ranges:
                kept.append(self.data[at:start])
                at = end
            kept.append(self.data[at:])
            self.data = b"".join(kept)
        else:
            assert self.spool is not None, "a message with neither octets nor a spool file"
            with open(self.spool, "r+b") as octets:
                write = ranges[0][0]
                for i, (_, end) in enumerate(ranges):
                    stop = ranges[i + 1][0] if i + 1 < len(ranges) else self.size
                    read = end
                    while read < stop:
                        octets.seek(read)
                        chunk = octets.read(min(_MOVE_CHUNK, stop - read))
                        if not chunk:
                            break
                        octets.seek(write)
                        octets.write(chunk)
                        read += len(chunk)
                        write += len(chunk)
                octets.truncate(write)
        self.size -= sum(end - start for start, end in ranges)

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data      # no copy
        with self.open() as octets:
            return octets.read()

    def read_head(self, limit: int) -> bytes:
        """The first ``limit`` octets at most (enough for the header section)."""
        with self.open() as octets:
            return octets.read(limit)

    def open(self) -> BinaryIO:
        """A binary reader of the octets (close it)."""
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.spool is not None, "a message with neither octets nor a spool file"
        return open(self.spool, "rb")


class SmtpPolicy(Protocol):
    """The hooks an SMTP session calls, in session order.  All are async: a policy may ask
    DNS or the bus.  Never raise for a refusal: return ``refuse(reply)``."""

    async def connect(self, session: SmtpSession) -> Verdict:
        """Before the greeting (IP lists, DNSBL, concurrent sessions per IP)."""

    async def helo(self, session: SmtpSession, name: str) -> Verdict:
        """HELO/EHLO ``name`` (the session's ``helo`` is set once accepted)."""

    async def auth(self, session: SmtpSession, auth: E.Auth) -> Verdict:
        """AUTH on submission (only ever after TLS): check the credentials; accept = 235."""

    async def mail_from(self, session: SmtpSession, mail: E.MailFrom) -> Verdict:
        """MAIL FROM (SPF, rate per IP)."""

    async def rcpt_to(self, session: SmtpSession, rcpt: E.RcptTo) -> Verdict:
        """RCPT TO: accept only with the resolved mailboxes appended to ``session.recipients``."""

    async def data_complete(self, session: SmtpSession, message: IncomingMessage) -> Verdict:
        """The whole message is spooled; last chance to refuse before it is made durable."""

    async def disconnect(self, session: SmtpSession) -> None:
        """The session ended, however it ended (called once, also after a refused connect)."""


class BasePolicy:
    """Accepts everything; subclass and override the hooks you need."""

    async def connect(self, session: SmtpSession) -> Verdict:
        return ACCEPT

    async def helo(self, session: SmtpSession, name: str) -> Verdict:
        return ACCEPT

    async def auth(self, session: SmtpSession, auth: E.Auth) -> Verdict:
        # Nobody is authenticated by a policy that does not check passwords.
        return refuse(R.AUTH_FAILED)

    async def mail_from(self, session: SmtpSession, mail: E.MailFrom) -> Verdict:
        return ACCEPT

    async def rcpt_to(self, session: SmtpSession, rcpt: E.RcptTo) -> Verdict:
        return ACCEPT

    async def data_complete(self, session: SmtpSession, message: IncomingMessage) -> Verdict:
        return ACCEPT

    async def disconnect(self, session: SmtpSession) -> None:
        return None


class PolicyChain(BasePolicy):
    """Run policies in order; the first refusal is the answer."""

    def __init__(self, policies: list[SmtpPolicy]) -> None:
        self.policies = list(policies)

    async def connect(self, session: SmtpSession) -> Verdict:
        return await self._first(lambda p: p.connect(session))

    async def helo(self, session: SmtpSession, name: str) -> Verdict:
        return await self._first(lambda p: p.helo(session, name))

    async def auth(self, session: SmtpSession, auth: E.Auth) -> Verdict:
        # The first policy that checks passwords answers; the others have no say in it.
        for policy in self.policies:
            hook = getattr(type(policy), "auth", None)
            if hook is not None and hook is not BasePolicy.auth:
                return await policy.auth(session, auth)
        return refuse(R.AUTH_FAILED)

    async def mail_from(self, session: SmtpSession, mail: E.MailFrom) -> Verdict:
        return await self._first(lambda p: p.mail_from(session, mail))

    async def rcpt_to(self, session: SmtpSession, rcpt: E.RcptTo) -> Verdict:
        return await self._first(lambda p: p.rcpt_to(session, rcpt))

    async def data_complete(self, session: SmtpSession, message: IncomingMessage) -> Verdict:
        return await self._first(lambda p: p.data_complete(session, message))

    async def disconnect(self, session: SmtpSession) -> None:
        # Every policy hears of the end, even if an earlier one fails to (it frees its counts).
        for policy in self.policies:
            try:
                await policy.disconnect(session)
            except Exception:
                log.exception("policy %s failed at disconnect", type(policy).__name__)

    async def _first(self, call) -> Verdict:
        for policy in self.policies:
            verdict = await call(policy)
            if not verdict.accept:
                return verdict
        return ACCEPT

