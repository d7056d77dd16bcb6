"""Success DSNs (RFC 3461 NOTIFY=SUCCESS): the "delivered" report of mail stored in a mailbox;
and, sent the same way, the "failed" report of mail the store could not store (over quota,
the account deleted since the edge took it: ``colony.outbound.dsn.store_failed_reports``).

A DSN-conforming MTA that delivers a message into the recipient's mailbox issues a
"delivered" DSN when the RCPT asked for SUCCESS (RFC 3461 §5.2.3).  The mail store is where
that delivery happens, so it reports it: once every recipient of a MAIL job is either stored
(fsynced, here or at the account's owner) or rejected -- never while some still wait for a
retry -- and before the job is acknowledged.

Exactly once per recipient, as far as a bus allows: the report is published *before* the ack,
so a store that dies in between has the job redelivered, finds its copies stored (the delivery
dedupe key), and publishes the report again under the same id (``delivered_report_id``: the
message, the domain and the recipients reported).  That second publish is a duplicate where
it counts:

* to a hosted sender the report is an ``InboundMail`` whose mailbox dedupe key
  (``<report id>/<mailbox>``, the last 50,000 deliveries of the account) stores it once
  whenever the repeat comes;
* to a remote sender it is an ``OutboundMail``, which OUTBOUND's duplicate window (its
  ``Nats-Msg-Id``) drops when the repeat comes within it; a redelivery later than that sends
  the report twice (at least once, never lost).

Where the report goes is decided as for any mail to that address: a hosted account that
does not forward into MAIL, an address in a domain we do not host into OUTBOUND (both read
from the directory bucket, no bus call); anything else -- an alias, an address of a domain
alias, a forwarding account -- through the directory's recipient resolution
(``colony.dir.recipients``): its mailboxes into MAIL, its remote addresses into OUTBOUND.  An
address that resolves to nobody (unknown, disabled) gets no report; a resolution that cannot
be had now makes the job retry (its copies are stored, so a retry costs dedupe hits only).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from colony.contracts.clients import DirectoryClient, DirectoryUnavailable
from colony.contracts.directory import AccountEntry
from colony.contracts.mail import InboundMail
from colony.contracts.recipients import Refusal, normalise_address
from colony.outbound.dsn import build_dsn, delivered_report_id, report_messages
from colony.outbound.rules import Failure
from colony.settings import Settings
from colony.telemetry import inject_headers

log = logging.getLogger("colony.mailstore.dsn")

RESOLVE_TIMEOUT = 5.0


class ReportNotSent(Exception):
    """The report could not be published now: the job is retried (its copies are stored)."""


class SuccessReports:
    def __init__(self, nc: Client, node_id: str, settings: Settings, directory) -> None:
        self.js = nc.jetstream()
        self.node_id = node_id
        self.settings = settings
        self.directory = directory                 # colony_mailstore.directory.Directory
        self.resolver = DirectoryClient(nc, timeout=RESOLVE_TIMEOUT)
        self.reporting_mta = settings.smtp_hostname or settings.advertised_host

    async def send(self, mail: InboundMail, reports: list[Failure], original: bytes) -> int:
        """Publish the report of ``reports`` to ``mail``'s sender; how many messages went out
        (0: the sender resolves to nobody).  ``ReportNotSent`` when it must be tried again."""
        report_id = delivered_report_id(mail, reports)
        report = build_dsn(mail, reports, original, self.reporting_mta, datetime.now(UTC))
        mailboxes, remote = await self.route(mail.mail_from)
        items = report_messages(report_id, report, mailboxes=mailboxes, remote=remote, original=mail.mail_from,
                                region=self.settings.region, node_id=self.node_id)
        for subject, item in items:
            try:
                await self.js.publish(subject, item.encode(), headers={**inject_headers(), "Nats-Msg-Id": item.msg_id()},
                                      timeout=self.settings.mail_publish_timeout)
            except (NatsTimeoutError, NoRespondersError) as exc:
                raise ReportNotSent(f"publishing the delivery report for {mail.message_id}: {exc!r}") from exc
        action = reports[0].action
        if items:
            log.info("DSN (%s) for %s to %s: %s", action, mail.message_id, mail.mail_from,
                     ", ".join(f.recipient.address for f in reports))
        else:
            log.info("DSN (%s) for %s not sent: %s receives no mail", action, mail.message_id, mail.mail_from)
        return len(items)

    async def route(self, sender: str) -> tuple[list[str], list[str]]:
        """(hosted mailboxes, remote addresses) a message to ``sender`` goes to (the vacation
        replies are routed the same way).  ``ReportNotSent`` when that cannot be had now."""
        account = normalise_address(sender)
        if account is None:
            return [], []
        entry = await self.directory.account(account)
        if isinstance(entry, AccountEntry) and not entry.forwarding:
            return [account], []
        if not await self.directory.hosted(account.rpartition("@")[2]):
            return [], [sender]
        try:
            [resolution] = await self.resolver.resolve([sender])
        except DirectoryUnavailable as exc:
            raise ReportNotSent(f"the sender {sender} could not be resolved: {exc}") from exc
        if resolution.ok:
            return [m.address for m in resolution.mailboxes], list(resolution.remote)
        if resolution.reason == Refusal.NOT_LOCAL:
            return [], [sender]
        return [], []
