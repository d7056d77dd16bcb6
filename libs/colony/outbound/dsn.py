"""Delivery status notifications (RFC 3464): one multipart/report per message and attempt,
listing every recipient that failed (Action: failed) or is delayed (Action: delayed) -- or,
for recipients whose RCPT asked for NOTIFY=SUCCESS (RFC 3461 §4.1), a separate report of
the recipients delivered into their mailbox (Action: delivered, by the mail store),
relayed to a server that will not report delivery (Action: relayed, by the outbound queue)
or expanded to several addresses (Action: expanded).

The report is sent from the null sender (``MAIL FROM:<>``) so that it can never be bounced
itself (RFC 5321 §4.5.5); ``colony.outbound.rules`` never makes a DSN for a message whose
sender is null, which closes the loop from the other side.  The returned content is the
original's header section (``text/rfc822-headers``) unless the sender asked for RET=FULL;
a full return is capped at ``full_limit`` octets (then only the headers go back).
"""

from __future__ import annotations

import email.utils
import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime

from colony.bus import names
from colony.contracts.mail import InboundMail, MailRecipient
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.outbound.rules import NOTIFY_OF_ACTION, Failure
from colony.protocols.smtp.syntax import as_domain

_CRLF = "\r\n"


def header_section(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


_SUCCESS_TEXT = {
    "delivered": "delivered to the mailbox",
    "relayed": "passed on to a mail system that does not report delivery; no further notice will come",
    "expanded": "delivered to an alias and passed on to its addresses; only failures will be reported",
}


def build_dsn(job: OutboundMail | InboundMail, failures: list[Failure], original: bytes, reporting_mta: str,
              now: datetime, full_limit: int = 1024 * 1024) -> bytes:
    """The DSN's whole message (header and body, CRLF line ends), addressed to ``job.mail_from``.
    ``failures``: the recipients' blocks, all failures and delays, or all successes."""
    assert failures and job.mail_from, "a DSN needs recipients to report and a non-null sender"
    delayed = all(f.action == "delayed" for f in failures)
    success = all(NOTIFY_OF_ACTION[f.action] == "SUCCESS" for f in failures)
    boundary = f"=_colony_dsn_{secrets.token_hex(12)}"
    subject = ("Successful Mail Delivery Report" if success else
               "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender")
    date = email.utils.format_datetime(now)
    domain = as_domain(reporting_mta)     # an IP (colony up on loopback) as [192.0.2.1]
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{domain}>",
        f"To: <{_safe(job.mail_from)}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <dsn.{job.message_id}.{secrets.token_hex(6)}@{domain}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    if success:
        human = [f"This is the mail system at {reporting_mta}.", "",
                 "This is the report of your message's delivery you asked for (NOTIFY=SUCCESS):", ""]
        human += [f"<{_safe(f.recipient.address)}>: {_SUCCESS_TEXT[f.action]}" for f in failures]
    elif delayed:
        human = [f"This is the mail system at {reporting_mta}.", "",
                 "Your message could not be delivered yet to the recipients below.",
                 "It is still in the queue and will be retried; you need not send it again.", ""]
    else:
        human = [f"This is the mail system at {reporting_mta}.", "",
                 "Your message could not be delivered to the recipients below.", ""]
    if not success:
        # One line, and bounded: the diagnostic quotes a remote server's reply, which may be
        # 64 KiB of lines for each recipient (100 of them made a DSN larger than the bus
        # carries, so it was never sent and the job ended in DEAD_LETTERS).
        human += [f"<{_safe(f.recipient.address)}>: {' '.join(f.diagnostic.split())[:900]}" for f in failures]
    status = [f"Reporting-MTA: dns; {reporting_mta}"]
    if job.envid:
        status.append(f"Original-Envelope-Id: {_safe(job.envid)}")
    arrival = job.queued_at if isinstance(job, OutboundMail) else job.at
    status.append(f"Arrival-Date: {email.utils.format_datetime(arrival)}")
    blocks = []
    for f in failures:
        block = []
        if f.recipient.orcpt:
            block.append(f"Original-Recipient: {_safe(f.recipient.orcpt)}")
        block += [f"Final-Recipient: rfc822; {_safe(f.recipient.address)}", f"Action: {f.action}",
                  f"Status: {f.status}"]
        if f.remote:
            block.append(f"Remote-MTA: dns; {_safe(f.remote)}")
        if f.diagnostic:
            block.append(f"Diagnostic-Code: {_one_line(f.diagnostic)}")
        block.append(f"Last-Attempt-Date: {date}")
        blocks.append(_CRLF.join(block))
    full = job.ret == "FULL" and len(original) <= full_limit
    returned = original if full else header_section(original)
    parts = [
        _CRLF.join(head), "",
        "This is a MIME-encapsulated delivery status notification.", "",
        f"--{boundary}", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "",
        _CRLF.join(human), "",
        f"--{boundary}", "Content-Type: message/delivery-status", "",
        _CRLF.join(status), "", (_CRLF + _CRLF).join(blocks), "",
        f"--{boundary}", "Content-Type: " + ("message/rfc822" if full else "text/rfc822-headers"), "",
    ]
    text = _CRLF.join(parts).encode("utf-8") + _CRLF.encode()
    end = f"{_CRLF}--{boundary}--{_CRLF}".encode()
    return text + returned.rstrip(b"\r\n") + end


def delivered_reports(mail: InboundMail, stored: Iterable[str]) -> list[Failure]:
    """The "delivered" blocks (RFC 3461 §5.2.3, RFC 3464 §2.3.3: Status 2.0.0) for those of
    ``mail``'s recipients now stored in their mailbox (``stored``: lower-case mailboxes) whose
    RCPT asked for NOTIFY=SUCCESS."""
    return _store_reports(mail, dict.fromkeys(stored, ("2.0.0", "")), "delivered")


def store_failed_reports(mail: InboundMail, failed: dict[str, tuple[str, str]]) -> list[Failure]:
    """The "failed" blocks (RFC 3464 §2.3.3) for those of ``mail``'s recipients a mail store
    took from the MAIL stream and could not store (``failed``: lower-case mailbox -> (RFC 3463
    status, diagnostic), e.g. over quota, the account deleted since the edge took it).  The
    edge answered 250 for them, so the sender hears of it only this way (RFC 5321 §6.1: a
    message accepted and then not delivered MUST be reported).  Not when its RCPT said
    NOTIFY=NEVER or named other conditions only (RFC 3461 §4.1; none given means FAILURE)."""
    return _store_reports(mail, failed, "failed")


def _store_reports(mail: InboundMail, outcomes: dict[str, tuple[str, str]], action: str) -> list[Failure]:
    """One ``action`` block per mailbox of ``outcomes`` (lower-case mailbox -> (status,
    diagnostic)), however many RCPTs led to it, for the first that asked to hear of it; none
    for mail from the null sender (a DSN is never reported on).  Original-Recipient is the
    ORCPT the client gave or, when an alias or forwarding led to another mailbox, the address
    it wrote (RFC 3461 §4.2: what an MTA adds when none was given)."""
    if not mail.mail_from:
        return []
    left = dict(outcomes)
    out: list[Failure] = []
    for r in mail.recipients:
        mailbox = r.mailbox.lower()
        if mailbox not in left:
            continue
        orcpt = r.orcpt or (f"rfc822;{r.original}" if r.original.lower() != mailbox else None)
        status, diagnostic = left[mailbox]
        block = Failure(OutboundRecipient(address=mailbox, notify=r.notify, orcpt=orcpt), status, diagnostic,
                        action=action)
        if block.notify:
            del left[mailbox]
            out.append(block)
    return out


def delivered_report_id(mail: InboundMail, reports: list[Failure]) -> str:
    """The message id of the report of ``reports`` for ``mail`` (all of one kind: delivered, or
    failed at the store): the same on every delivery of the job (a redelivery after a crash
    reports the same recipients), so the MAIL or OUTBOUND publish of a report sent before the
    crash is a duplicate of it."""
    key = "\n".join([mail.domain, *sorted(f.recipient.address for f in reports)])
    return f"{mail.message_id}.dsn-{reports[0].action}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _safe(text: str) -> str:
    """An envelope value copied into a header or status field: ENVID, ORCPT and addresses
    are checked for control characters where the edge parses them (``syntax._printable``),
    but a job on the bus is not proof of that, and a CR or LF here would write lines of a
    client's choosing into a report the cluster sends."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _one_line(text: str) -> str:
    """A field of message/delivery-status: one line of printable US-ASCII (RFC 3464 §2.1.2:
    the report is 7-bit text).  The diagnostic quotes whatever the remote server said --
    several lines, any octets -- so every other character becomes "?"."""
    text = " ".join(text.split())[:900]
    return text if text.isascii() and text.isprintable() else "".join(
        c if " " <= c <= "~" else "?" for c in text)


def report_messages(report_id: str, report: bytes, *, mailboxes: list[str], remote: list[str], original: str,
                    region: str, node_id: str) -> list[tuple[str, InboundMail | OutboundMail]]:
    """A report's jobs and the subjects to publish them on, from the null sender: one
    ``InboundMail`` per hosted domain of ``mailboxes`` (each recipient's ``original`` the
    address the report was for, as the sender wrote it) and one ``OutboundMail`` per domain of
    ``remote``.  Every job has ``report_id`` as its message id, so a report published again
    (a redelivered job) is the same message to the streams' and mailboxes' de-duplication."""
    jobs: list[tuple[str, InboundMail | OutboundMail]] = []
    by_domain: dict[str, list[str]] = {}
    for address in mailboxes:
        by_domain.setdefault(address.rpartition("@")[2], []).append(address)
    for domain, addresses in by_domain.items():
        item = InboundMail(message_id=report_id, domain=domain, mail_from="",
                           recipients=[MailRecipient(mailbox=a, original=original) for a in addresses],
                           size=len(report), edge_node=node_id, body=report)
        jobs.append((names.mail_subject(region, domain, names.mail_partition(addresses[0])), item))
    by_domain = {}
    for address in remote:
        by_domain.setdefault(address.rpartition("@")[2].lower(), []).append(address)
    for domain, addresses in by_domain.items():
        item = OutboundMail.new(message_id=report_id, destination=domain, mail_from="",
                                recipients=[OutboundRecipient(address=a) for a in addresses], size=len(report),
                                edge_node=node_id, body=report, sender_local=False)
        jobs.append((names.outbound_subject(domain), item))
    return jobs
