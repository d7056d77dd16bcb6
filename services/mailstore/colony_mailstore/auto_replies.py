"""Vacation auto-replies, sent by the mail store that owns the account once a message is
fsynced in its mailbox (the rules and the reply: ``colony.outbound.vacation``).

Who has been answered (with which reply: ``handle_of`` its subject and text) is kept per account in ``<account dir>/vacation.replied``
(``RepliedSenders``' wire form: at most ``REMEMBERED_SENDERS`` senders, oldest dropped),
written by the account's single writer under its lock, temp file + fsync + rename, and read
at the first auto-reply after the account is opened.  It moves with the account directory
(a foldering switch).  The sender is noted durably *before* the reply is published: a store
that dies in between sends no reply rather than a second one later, and a redelivered job
finds its message stored (the dedupe key) and answers nothing -- at most once, as RFC 3834
prefers a reply missed to a reply repeated.

The reply leaves as every other message of the store does (``SuccessReports.route``): to a
hosted sender into MAIL, to a remote one into OUTBOUND from the null sender, DKIM-signed at
delivery for the account's domain (``sign_domain``) when it has a key; under the id
``<message id>.vacation-<hash of the account>``, so a repeat within OUTBOUND's duplicate
window is dropped.  A reply that cannot be published is logged and counted (``unsent``): the
message is stored, and retrying the job would not answer it again.

The implicit address check (RFC 5230 §4.5) also counts as the user's the RCPT this copy came
by when it is the account (or one of its ``addresses``) under a domain alias of its domain:
``To: amy@acme-mail.example`` is answered like ``To: amy@acme.example``.

An account without a vacation costs the delivery one attribute check of the directory entry
it already read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import orjson
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import trace

from colony.contracts.directory import AccountEntry, VacationEntry
from colony.contracts.mail import InboundMail
from colony.contracts.outbound import OutboundMail
from colony.contracts.recipients import normalise_address
from colony.outbound.dsn import report_messages
from colony.outbound.vacation import RepliedSenders, Reply, VacationSettings, decide, handle_of, needs_smtputf8
from colony.storage import journal
from colony.telemetry import inject_headers
from colony_mailstore.accounts import AccountManager, thread_to_the_end
from colony_mailstore.metrics import MailstoreMetrics
from colony_mailstore.success_reports import ReportNotSent, SuccessReports

log = logging.getLogger("colony.mailstore.vacation")
tracer = trace.get_tracer("colony.mailstore")

REPLIED_FILE = "vacation.replied"


def settings_of(entry: VacationEntry) -> VacationSettings:
    return VacationSettings(body=entry.body, subject=entry.subject, start=entry.start, end=entry.end,
                            days=entry.days, addresses=tuple(entry.addresses), enabled=entry.enabled)


def reply_id(message_id: str, address: str) -> str:
    return f"{message_id}.vacation-{hashlib.sha256(address.encode()).hexdigest()[:16]}"


class AutoReplies:
    def __init__(self, accounts: AccountManager, reports: SuccessReports, metrics: MailstoreMetrics,
                 clock=lambda: datetime.now(UTC), authserv_id: str = "") -> None:
        self.accounts = accounts
        self.reports = reports          # its route() and its JetStream context and settings
        self.metrics = metrics
        self.clock = clock
        # The edge's name in Authentication-Results: its verdict on the sender is trusted
        # (``colony.outbound.vacation``'s unverified_sender); empty: not looked for.
        self._authserv_id = authserv_id

    async def answer(self, mail: InboundMail, address: str, entry: AccountEntry, body: bytes) -> None:
        """Reply to ``mail``, just stored for ``address``, if its vacation says so.  Never raises:
        the message is stored whatever happens to its reply."""
        try:
            outcome = await self._decide(mail, address, entry, body)
            if outcome is None:
                return
            if not isinstance(outcome, Reply):
                self.metrics.auto_replies_suppressed.labels(outcome.reason).inc()
                return
            with tracer.start_as_current_span("mailstore.vacation_reply"):
                await self._publish(mail, address, outcome)
            self.metrics.auto_replies.inc()
            log.info("vacation reply of %s to %s for %s", address, outcome.recipient, mail.message_id)
        except (ReportNotSent, NatsTimeoutError, NoRespondersError, asyncio.TimeoutError) as exc:
            self.metrics.auto_replies_suppressed.labels("unsent").inc()
            log.warning("vacation reply of %s for %s not sent: %s", address, mail.message_id, exc)
        except Exception:
            self.metrics.auto_replies_suppressed.labels("error").inc()
            log.exception("vacation reply of %s for %s failed", address, mail.message_id)

    async def _decide(self, mail: InboundMail, address: str, entry: AccountEntry, body: bytes):
        acct = self.accounts.open.get(address)
        if acct is None:
            return None     # closed since the store (released, lost): its next owner has the file
        async with acct.lock:      # the account's writer; a foldering move renames the directory under it
            if self.accounts.open.get(address) is not acct:
                return None
            path = acct.paths.account_dir / REPLIED_FILE
            if acct.replied is None:
                acct.replied = await thread_to_the_end(_read, path)
            now = self.clock()
            settings = settings_of(entry.vacation)
            outcome = decide(account=address, settings=settings, mail_from=mail.mail_from,
                             message=body, now=now, replied=acct.replied, special_use=mail.special_use,
                             display_name=entry.real_name, also_own=await self._via_domain_alias(mail, address, settings),
                             authserv_id=self._authserv_id)
            if isinstance(outcome, Reply):
                handle = handle_of(settings)
                if acct.replied.handle != handle:    # another reply: its round starts afresh
                    acct.replied = RepliedSenders(handle=handle)
                acct.replied.note(outcome.recipient, now)
                await thread_to_the_end(journal.write_atomically, path, orjson.dumps(acct.replied.to_json()))
            return outcome

    async def _via_domain_alias(self, mail: InboundMail, address: str, settings: VacationSettings) -> tuple[str, ...]:
        """The RCPTs of this copy that name the user's addresses under a domain alias."""
        own = {a.lower() for a in (address, *settings.addresses)}
        out = []
        for rcpt in mail.recipients:
            original = normalise_address(rcpt.original) if rcpt.mailbox == address else None
            if original is None or original in own:
                continue
            local, _, domain = original.rpartition("@")
            real = await self.accounts.directory.domain_alias(domain)
            if real is not None and f"{local}@{real}" in own:
                out.append(original)
        return tuple(out)

    async def _publish(self, mail: InboundMail, address: str, reply: Reply) -> None:
        settings = self.reports.settings
        mailboxes, remote = await self.reports.route(reply.recipient)
        domain = address.rpartition("@")[2]
        items = report_messages(reply_id(mail.message_id, address), reply.message, mailboxes=mailboxes,
                                remote=remote, original=reply.recipient, region=settings.region,
                                node_id=self.reports.node_id)
        utf8 = {"smtputf8": True} if needs_smtputf8(reply) else {}   # its header is UTF-8
        for subject, item in items:
            if isinstance(item, OutboundMail):
                item = item.model_copy(update={"sign_domain": domain, **utf8})
            elif utf8:
                item = item.model_copy(update=utf8)
            await self.reports.js.publish(subject, item.encode(),
                                          headers={**inject_headers(), "Nats-Msg-Id": item.msg_id()},
                                          timeout=settings.mail_publish_timeout)


def _read(path: Path) -> RepliedSenders:
    try:
        return RepliedSenders.from_json(orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        return RepliedSenders()
    except (ValueError, TypeError, KeyError) as exc:   # a torn or foreign file: forget, answer again
        log.warning("%s unreadable (%s): starting afresh", path, exc)
        return RepliedSenders()
