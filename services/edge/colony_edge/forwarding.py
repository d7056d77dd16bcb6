"""Forwarding on the MX: mail for hosted accounts that forward to outside addresses (and
bounces to SRS addresses, sent on to the original sender) goes to OUTBOUND with the
envelope sender rewritten by SRS (``colony.outbound.srs``), so SPF at the destination
checks our servers and a bounce comes back to us.

``ForwardingAcceptor`` wraps the MX's ``MailAcceptor``: recipients with mailboxes go to
MAIL as before; the remote addresses of every accepted recipient become one
``OutboundMail`` per destination domain, sender ``SRS0=...@<the forwarding domain>`` (the
null sender of a bounce stays null), published before the client hears 250 -- the same
durability as local delivery.  The SRS key is ``srs_secret_file`` or, by default, derived
from the cluster secret every edge already has; it is never in an event or the event log.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

from nats.js import JetStreamContext

from colony.bus import names
from colony.contracts.handoff import load_secret
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.outbound.srs import Srs, srs_key
from colony.settings import Settings
from colony.telemetry import inject_headers
from colony_edge.acceptance import AcceptanceFailed, MailAcceptor, fold, new_message_id
from colony_edge.smtp_policy import IncomingMessage, SmtpSession

log = logging.getLogger("colony.edge.forwarding")


def load_srs(settings: Settings) -> Srs | None:
    """The SRS rewriter from settings, or None (forwarding outside the cluster off)."""
    if settings.srs_secret_file is not None:
        key = load_secret(settings.srs_secret_file)
    elif settings.cluster_secret_file is not None:
        key = srs_key(load_secret(settings.cluster_secret_file))
    else:
        return None
    return Srs(key, max_age_days=settings.srs_max_age_days)


class ForwardingAcceptor:
    def __init__(self, local: MailAcceptor, js: JetStreamContext, settings: Settings, node_id: str, srs: Srs,
                 clock=time.time) -> None:
        self.local, self.js, self.settings, self.node_id, self.srs, self.clock = local, js, settings, node_id, srs, clock
        self.hostname, self.tracer = local.hostname, local.tracer   # the shell opens the message span with it

    async def accept(self, session: SmtpSession, message: IncomingMessage) -> str:
        remote = [r for r in session.recipients if r.remote]
        if not remote:
            return await self.local.accept(session, message)
        local = [r for r in session.recipients if r.mailboxes]
        message_id = await self.local.accept_for(session, message, local) if local else None
        return await self._outbound(session, message, remote, message_id or new_message_id())

    async def _outbound(self, session: SmtpSession, message: IncomingMessage, remote, message_id: str) -> str:
        mail = session.mail_from
        # The forwarding domain: that of the (first) hosted recipient whose copy goes out, so
        # the SRS address is one our MX takes back.
        forwarding_domain = remote[0].rcpt.address.rpartition("@")[2].lower()
        sender = self.srs.forward(mail.address, forwarding_domain, self.clock())
        tls = f" (using {session.tls})" if session.tls else ""
        received = (f"from {session.helo or 'unknown'} ([{session.peer_ip}]) by {self.hostname} (Colony) "
                    f"with {'ESMTPS' if session.tls else 'ESMTP'} id {message_id} for forwarding{tls}; "
                    f"{email.utils.format_datetime(email.utils.localtime())}")
        head = fold("Received", received)
        size = len(head) + message.size
        body, ref = None, None
        if size <= self.settings.mail_inline_max_bytes:
            body = head + message.spool.read_bytes()
        else:
            ref = await self.local.put_body(f"{message_id}.fwd", head, message.spool)
        by_domain: dict[str, dict[str, OutboundRecipient]] = {}
        for accepted in remote:
            rcpt = accepted.rcpt
            for address in accepted.remote:
                domain = address.rpartition("@")[2].lower()
                by_domain.setdefault(domain, {}).setdefault(address.lower(), OutboundRecipient(
                    address=address, notify=list(rcpt.notify) if rcpt.notify else None,
                    # the DSN names the recipient the sender wrote (RFC 3461 ORCPT)
                    orcpt=rcpt.orcpt or (None if address == rcpt.address else f"rfc822;{rcpt.address}")))
        headers = inject_headers()
        publishes = []
        for destination, recipients in by_domain.items():
            item = OutboundMail.new(
                message_id=message_id, destination=destination, mail_from=sender, recipients=list(recipients.values()),
                sender_local=False, body_type=mail.body, smtputf8=mail.smtputf8, ret=mail.ret, envid=mail.envid,
                size=size, edge_node=self.node_id, body=body, body_ref=ref)
            publishes.append(self.js.publish(names.outbound_subject(destination), item.encode(),
                                             headers={**headers, "Nats-Msg-Id": item.msg_id()},
                                             timeout=self.settings.mail_publish_timeout))
        results = await asyncio.gather(*publishes, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise AcceptanceFailed(f"forwarding publish of {message_id} failed: {failures[0]!r}") from failures[0]
        log.info("forwarding %s from %s as %s to %d address(es) in %d domain(s)", message_id, mail.address or "<>",
                 sender or "<>", sum(len(v) for v in by_domain.values()), len(by_domain))
        return message_id


__all__ = ["ForwardingAcceptor", "load_srs"]
