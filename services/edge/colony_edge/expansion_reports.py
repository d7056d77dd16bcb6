"""The "expanded" DSN (RFC 3461 §5.2.7.3, RFC 3464 §2.3.3): a RCPT that asked for
NOTIFY=SUCCESS and went to several addresses -- an alias with several targets, an account
that forwards and keeps a copy -- is reported here, where the edge expanded it, once the
message is durable; its targets carry NOTIFY on without SUCCESS
(``acceptance.passed_on_notify``), so later reports are of failures and delays only.  A RCPT
that led to one address (a single-target alias, a domain alias, forwarding without a copy)
passes SUCCESS on (§5.2.7.2) and is reported by whoever delivers it: "delivered" by the mail
store, "relayed" by the outbound queue.

``ExpansionReports`` wraps an acceptor (the MX's, or submission's): after the inner acceptor
made the message durable it publishes the report to the sender as the edge would route mail
to that address (the directory cache: hosted mailboxes into MAIL, others into OUTBOUND), under
``<message id>.dsn-expanded``.  A report whose publish fails is logged and dropped: the
message itself is accepted, and answering 451 for a report would bring every copy twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext

from colony.contracts.mail import InboundMail
from colony.contracts.outbound import OutboundRecipient
from colony.contracts.recipients import Refusal
from colony.outbound.dsn import build_dsn, report_messages
from colony.outbound.rules import Failure
from colony.settings import Settings
from colony.telemetry import inject_headers
from colony_edge.acceptance import expands
from colony_edge.smtp_policy import IncomingMessage, SmtpSession

log = logging.getLogger("colony.edge.expansion")

FULL_LIMIT = 1024 * 1024          # RET=FULL returns the message up to this size, as every DSN
HEAD_LIMIT = 256 * 1024           # otherwise the header section, read from at most this much


def expanded_reports(session: SmtpSession) -> list[Failure]:
    """The "expanded" blocks of the session's recipients (none for the null sender)."""
    if session.mail_from is None or not session.mail_from.address:
        return []
    out = []
    for accepted in session.recipients:
        rcpt = accepted.rcpt
        if rcpt.notify and "SUCCESS" in rcpt.notify and expands(accepted):
            out.append(Failure(OutboundRecipient(address=rcpt.address, notify=list(rcpt.notify), orcpt=rcpt.orcpt),
                               "2.0.0", "", action="expanded"))
    return out


class ExpansionReports:
    def __init__(self, inner, js: JetStreamContext, settings: Settings, node_id: str, directory) -> None:
        self.inner, self.js, self.settings, self.node_id = inner, js, settings, node_id
        self.directory = directory            # the edge's DirectoryCache (a DirectoryView)
        self.tracer = inner.tracer     # the shell opens the message span with it
        self.hostname = settings.smtp_hostname or settings.advertised_host

    async def accept(self, session: SmtpSession, message: IncomingMessage) -> str:
        message_id = await self.inner.accept(session, message)
        reports = expanded_reports(session)
        if reports:
            try:
                await self._send(session, message, message_id, reports)
            except Exception as exc:   # the message is durable; the report is not worth a 451
                log.warning("expanded DSN for %s to %s not sent: %r", message_id, session.mail_from.address, exc)
        return message_id

    async def _send(self, session: SmtpSession, message: IncomingMessage, message_id: str,
                    reports: list[Failure]) -> None:
        mail = session.mail_from
        full = mail.ret == "FULL" and message.size <= FULL_LIMIT
        original = message.read_bytes() if full else message.read_head(HEAD_LIMIT)
        # What the report is about, in the form ``build_dsn`` reads (sender, id, ENVID, RET, arrival).
        about = InboundMail(at=datetime.now(UTC), message_id=message_id, domain=mail.address.rpartition("@")[2],
                            mail_from=mail.address, recipients=[], ret=mail.ret, envid=mail.envid, size=message.size,
                            edge_node=self.node_id, body=original)
        report = build_dsn(about, reports, original, self.hostname, datetime.now(UTC))
        report_id = f"{message_id}.dsn-expanded"
        resolution = self.directory.resolve(mail.address)
        if resolution.ok:
            mailboxes, remote = [m.address for m in resolution.mailboxes], list(resolution.remote)
        elif resolution.reason == Refusal.NOT_LOCAL:
            mailboxes, remote = [], [mail.address]
        else:
            log.info("expanded DSN for %s not sent: %s receives no mail (%s)", message_id, mail.address,
                     resolution.reason)
            return
        items = report_messages(report_id, report, mailboxes=mailboxes, remote=remote, original=mail.address,
                                region=self.settings.region, node_id=self.node_id)
        headers = inject_headers()
        for subject, item in items:
            await self.js.publish(subject, item.encode(), headers={**headers, "Nats-Msg-Id": item.msg_id()},
                                  timeout=self.settings.mail_publish_timeout)
        log.info("DSN (expanded) for %s to %s: %s", message_id, mail.address,
                 ", ".join(r.recipient.address for r in reports))
