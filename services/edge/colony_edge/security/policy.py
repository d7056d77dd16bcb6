"""The Edge-Gate as an SMTP policy: ``EdgeSecurityPolicy`` plugs ``EdgeGate`` into the MX's
policy chain (``colony_edge.smtp_policy``), in front of recipient resolution.

At end of data it reads the spooled message for DKIM (up to ``edge_dkim_max_bytes``; beyond
that only its header section, which is bounded too), prepends ``Authentication-Results`` and
either refuses (DMARC p=reject under an enforcing recipient domain) or marks the message for
the recipients' Junk folder (``session.notes["special_use"] = "\\Junk"``, carried by the
MAIL message to the mail store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from colony.protocols.smtp import Reply
from colony.protocols.smtp import events as E
from colony_edge.security.authentication import claimed_results
from colony_edge.security.gate import EdgeGate, Refusal
from colony_edge.smtp_policy import ACCEPT, BasePolicy, IncomingMessage, SmtpSession, Verdict, refuse

HEADER_SECTION_LIMIT = 256 * 1024   # RFC 5322 sets none; an honest header block is far smaller
# A header section longer than this and than edge_dkim_max_bytes is refused (552 5.3.4), as
# Exim's header_maxsize (1 MiB) does: we could not look at all of it for forged results.
HEADER_SECTION_MAX = 1024 * 1024
HEADER_TOO_LARGE = Reply(552, "5.3.4", "Header section too large", "header_size")


def _verdict(refusal: Refusal | None) -> Verdict:
    if refusal is None:
        return ACCEPT
    return refuse(Reply(refusal.code, refusal.status, refusal.text, refusal.reason))


def read_for_authentication(message: IncomingMessage, dkim_max: int) -> tuple[bytes | None, bytes, bool]:
    """(whole message or None when too large for DKIM, header section without its last
    CRLF, whether that section is complete: the empty line after it was found, or the whole
    message is its header section).  A message that begins with the empty line has none.
    Blocking."""
    size = message.size
    with message.open() as f:
        if size <= dkim_max:
            whole = f.read()
            end = _end_of_header_section(whole)
            if end < 0:     # no body: the message's end ends its last field
                return whole, whole[:-2] if whole.endswith(b"\r\n") else whole, True
            return whole, whole[:end], True
        # Read on past HEADER_SECTION_LIMIT while the empty line does not come, as far as
        # the memory DKIM may take: the fields past a cut could not be scanned for forged
        # results (claimed_results), so a longer header section is refused instead.
        cap = max(dkim_max, HEADER_SECTION_MAX)
        head = bytearray(f.read(HEADER_SECTION_LIMIT))
        found = _end_of_header_section(head) >= 0
        while not found and len(head) < min(cap, size):
            seen = max(0, len(head) - 3)
            more = f.read(min(HEADER_SECTION_LIMIT, cap - len(head)))
            if not more:
                break
            head += more
            found = head.find(b"\r\n\r\n", seen) >= 0
    head = bytes(head)
    end = _end_of_header_section(head)
    if end < 0 and len(head) >= size:      # no body: the message's end ends its last field
        return None, head[:-2] if head.endswith(b"\r\n") else head, True
    return None, head[:end] if end >= 0 else head, end >= 0


async def read_header_section(message: IncomingMessage, dkim_max: int) -> tuple[bytes | None, bytes, bool]:
    """``read_for_authentication``, on a worker thread when the octets are in a spool file
    (held in memory by the shell: nothing to wait for)."""
    if message.data is not None:
        return read_for_authentication(message, dkim_max)
    return await asyncio.to_thread(read_for_authentication, message, dkim_max)


async def delete_claimed_results(message: IncomingMessage, header_section: bytes, terminated: bool,
                                 authserv_id: str) -> int:
    """Delete the Authentication-Results fields under our authserv-id that we did not write
    (RFC 8601 section 5: ``claimed_results``); how many there were."""
    forged = claimed_results(header_section, authserv_id, terminated)
    if forged:
        if message.data is not None:
            message.leave_out(forged)
        else:
            await asyncio.to_thread(message.leave_out, forged)
    return len(forged)


def _end_of_header_section(octets: bytes) -> int:
    """Where the CRLF before the empty line begins (0: no header fields at all), or -1."""
    return 0 if octets.startswith(b"\r\n") else octets.find(b"\r\n\r\n")


class GateAtConnect(BasePolicy):
    """The gate at connect, as mail users' SMTP (submission on 587) asks it: the deny list and
    the address's connection rate and sessions, in SMTP's own words (``421``/``554``), without
    the block lists (``EdgeGate.on_connect``).  Submission on 465 asks it at the listener,
    before TLS."""

    block_lists = False

    def __init__(self, gate: EdgeGate) -> None:
        self.gate = gate

    async def connect(self, session: SmtpSession) -> Verdict:
        refusal = await self.gate.on_connect(session.peer_ip, block_lists=self.block_lists)
        if refusal is None:
            session.notes["gate_counted"] = True
        return _verdict(refusal)

    async def disconnect(self, session: SmtpSession) -> None:
        if session.notes.pop("gate_counted", False):
            self.gate.on_disconnect(session.peer_ip)


class EdgeSecurityPolicy(GateAtConnect):
    """The MX's: the gate at connect with the block lists, at MAIL and RCPT, and SPF, DKIM and
    DMARC at end of data."""

    block_lists = True

    def __init__(self, gate: EdgeGate, dmarc_choice: Callable[[str], str | None] = lambda domain: None) -> None:
        super().__init__(gate)
        self.dmarc_choice = dmarc_choice   # a recipient domain's DMARC setting; None: the cluster default

    async def mail_from(self, session: SmtpSession, mail: E.MailFrom) -> Verdict:
        return _verdict(await self.gate.on_mail(session.peer_ip))

    async def rcpt_to(self, session: SmtpSession, rcpt: E.RcptTo) -> Verdict:
        domain = rcpt.address.rpartition("@")[2] or rcpt.address
        return _verdict(await self.gate.on_rcpt(session.peer_ip, domain))

    async def data_complete(self, session: SmtpSession, message: IncomingMessage) -> Verdict:
        limit = self.gate.settings.edge_dkim_max_bytes
        whole, header_section, terminated = await read_header_section(message, limit)
        if not terminated and not self.gate.trusted(session.peer_ip):
            return refuse(HEADER_TOO_LARGE)
        mail_from = session.mail_from.address if session.mail_from else ""
        domains = sorted({m.domain for r in session.recipients for m in r.mailboxes})
        verdict = await self.gate.on_data(session.peer_ip, session.helo, mail_from, whole, header_section,
                                          [self.dmarc_choice(d) for d in domains] or [None])
        if not self.gate.trusted(session.peer_ip):
            # Results under our own authserv-id that we did not write: deleted (RFC 8601 §5),
            # after DKIM saw the message as signed.  A trusted relay's (edge_allow_networks)
            # are kept: an operator's filter in front of the edge may write them.
            forged = await delete_claimed_results(message, header_section, terminated, self.gate.authserv_id)
            if forged:
                self.gate.metrics.forged_results.inc(forged)
        name, _, value = verdict.auth.header.partition(":")
        message.add_header(name.strip(), value.strip())
        if verdict.quarantine:
            session.notes["special_use"] = "\\Junk"
        return _verdict(verdict.refusal)
