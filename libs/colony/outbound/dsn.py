"""Delivery status notifications (RFC 3464): one multipart/report per message and attempt,
listing every recipient that failed (Action: failed) or is delayed (Action: delayed).

The report is sent from the null sender (``MAIL FROM:<>``) so that it can never be bounced
itself (RFC 5321 §4.5.5); ``colony.outbound.rules`` never makes a DSN for a message whose
sender is null, which closes the loop from the other side.  The returned content is the
original's header section (``text/rfc822-headers``) unless the sender asked for RET=FULL;
a full return is capped at ``full_limit`` octets (then only the headers go back).
"""

from __future__ import annotations

import email.utils
import secrets
from datetime import datetime

from colony.contracts.outbound import OutboundMail
from colony.outbound.rules import Failure

_CRLF = "\r\n"


def header_section(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def build_dsn(job: OutboundMail, failures: list[Failure], original: bytes, reporting_mta: str,
              now: datetime, full_limit: int = 1024 * 1024) -> bytes:
    """The DSN's whole message (header and body, CRLF line ends), addressed to ``job.mail_from``."""
    assert failures and job.mail_from, "a DSN needs failures and a non-null sender"
    delayed = all(f.action == "delayed" for f in failures)
    boundary = f"=_colony_dsn_{secrets.token_hex(12)}"
    subject = ("Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender")
    date = email.utils.format_datetime(now)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{job.mail_from}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <dsn.{job.message_id}.{secrets.token_hex(6)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    if delayed:
        human = [f"This is the mail system at {reporting_mta}.", "",
                 "Your message could not be delivered yet to the recipients below.",
                 "It is still in the queue and will be retried; you need not send it again.", ""]
    else:
        human = [f"This is the mail system at {reporting_mta}.", "",
                 "Your message could not be delivered to the recipients below.", ""]
    for f in failures:
        # One line, and bounded: the diagnostic quotes a remote server's reply, which may be
        # 64 KiB of lines for each recipient (100 of them made a DSN larger than the bus
        # carries, so it was never sent and the job ended in DEAD_LETTERS).
        human.append(f"<{f.recipient.address}>: {' '.join(f.diagnostic.split())[:900]}")
    status = [f"Reporting-MTA: dns; {reporting_mta}"]
    if job.envid:
        status.append(f"Original-Envelope-Id: {job.envid}")
    status.append(f"Arrival-Date: {email.utils.format_datetime(job.queued_at)}")
    blocks = []
    for f in failures:
        block = []
        if f.recipient.orcpt:
            block.append(f"Original-Recipient: {f.recipient.orcpt}")
        block += [f"Final-Recipient: rfc822; {f.recipient.address}", f"Action: {f.action}", f"Status: {f.status}"]
        if f.remote:
            block.append(f"Remote-MTA: dns; {f.remote}")
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


def _one_line(text: str) -> str:
    """A field of message/delivery-status: one line of printable US-ASCII (RFC 3464 §2.1.2:
    the report is 7-bit text).  The diagnostic quotes whatever the remote server said --
    several lines, any octets -- so every other character becomes "?"."""
    text = " ".join(text.split())[:900]
    return text if text.isascii() and text.isprintable() else "".join(
        c if " " <= c <= "~" else "?" for c in text)
