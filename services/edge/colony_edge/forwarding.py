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

import email.utils
import logging
import time

from nats.js import JetStreamContext

from colony.contracts.handoff import load_secret
from colony.contracts.outbound import OutboundMail
from colony.outbound.srs import Srs, srs_key
from colony.settings import Settings
from colony_edge.acceptance import (MailAcceptor, fold, new_message_id, outbound_body, outbound_recipients,
                                   publish_outbound)
from colony_edge.smtp_policy import IncomingMessage, SmtpSession

log = logging.getLogger("colony.edge.forwarding")


def load_srs(settings: Settings) -> Srs | None:
    """The SRS rewriter from settings, or None (forwarding outside the cluster off)."""
    if settings.srs_secret_file is not None:
        key = load_secret(settings.srs_secret_file, "COLONY_SRS_SECRET_FILE", "every edge")
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
        size, body, ref = await outbound_body(self.local, self.settings, f"{message_id}.fwd", head, message)
        by_domain = outbound_recipients(remote)
        await publish_outbound(self.js, self.settings, message_id, (
            OutboundMail.new(
                message_id=message_id, destination=destination, mail_from=sender, recipients=recipients,
                sender_local=False, body_type=mail.body, smtputf8=mail.smtputf8, ret=mail.ret, envid=mail.envid,
                size=size, edge_node=self.node_id, body=body, body_ref=ref)
            for destination, recipients in by_domain.items()), "forwarding")
        log.info("forwarding %s from %s as %s to %d address(es) in %d domain(s)", message_id, mail.address or "<>",
                 sender or "<>", sum(len(v) for v in by_domain.values()), len(by_domain))
        return message_id


__all__ = ["ForwardingAcceptor", "load_srs"]
