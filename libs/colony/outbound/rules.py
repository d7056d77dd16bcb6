"""What to do with an outbound job after an attempt: the whole decision, with no I/O.

Theory of operation
-------------------
The edge's outbound runner takes one ``OutboundMail`` (one destination domain, one or more
recipients), finds the destination's mail exchangers (``mail_exchangers``: MX records by
preference, equal preferences shuffled, no MX -> the domain's own A/AAAA as an implicit MX
of preference 0, RFC 5321 §5.1; a null MX, RFC 7505, -> permanent failure), tries them in
order, and reports one ``RecipientResult`` per recipient: the code and text the remote
server (or the failure to reach any server) gave.  ``decide(job, results, now, settings)``
turns that into a ``Decision``:

* 2xx: delivered.  5xx: failed for good.  4xx or no answer: deferred.
* A deferred recipient of a job older than ``outbound_max_age`` fails for good (expired,
  status 4.4.7), so a destination that never answers ends in a DSN, not in a queue forever.
* Failed recipients are reported in **one** DSN per message and attempt (RFC 3464), unless
  the sender is the null sender (a DSN itself: no bounce of a bounce, so no loops) or every
  failed recipient said NOTIFY=NEVER / did not ask for FAILURE.
* Deferred recipients stay queued: if they are all the job had, the job is retried as it is
  after ``retry_delay`` (exponential back-off from ``outbound_retry_initial`` doubling up to
  ``outbound_retry_max``); if some others were delivered or failed, or a delay notice goes
  out now, the job is *requeued*: a new generation with only the deferred recipients.
* The delay notice (a DSN with Action: delayed) goes out once, on the first attempt after
  ``outbound_delay_warning`` that still defers.
* Delivered recipients that asked for NOTIFY=SUCCESS get a DSN of their own (``success``)
  with Action: relayed (RFC 3461 §5.2.2, RFC 3464 §2.3.3) when the server that took them
  did not advertise DSN: it had no DSN parameters, so to it the message came from a sender
  that asked for no report, and its delivery will be reported by nobody else.  A server
  that advertised DSN got them (``colony.outbound.dsn_relay``, RFC 3461 §5.2.1) and reports
  success itself (``RecipientResult.dsn_passed``): no "relayed" report then.

Before MAIL, ``transfer_options`` says which parameters the message needs on the server
at hand (``BODY=8BITMIME``, ``SMTPUTF8``), or that it cannot go there at all
(``Unsendable``: 8-bit octets without 8BITMIME, UTF-8 where SMTPUTF8 is not offered), which
stands for every recipient as a permanent refusal would; ``check_binary`` does the same,
before any connection, for a BINARYMIME message whose octets DATA cannot carry.

Time is an argument (``now``): tests shorten the ages through settings and pass the clock.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.settings import Settings


class NullMx(Exception):
    """The domain published "MX 0 ." (RFC 7505): it accepts no mail."""


def mail_exchangers(records: list[tuple[int, str]], domain: str, rng: random.Random | None = None) -> list[str]:
    """Host names to try in order.  ``records``: (preference, exchange) of the MX answer,
    empty when there is none (then the domain itself is the exchanger)."""
    if not records:
        return [domain.rstrip(".").lower()]
    if len(records) == 1 and records[0][1].rstrip(".") == "":
        raise NullMx(domain)
    rng = rng or random.Random()
    by_preference: dict[int, list[str]] = {}
    for preference, host in records:
        host = host.rstrip(".").lower()
        if host:
            by_preference.setdefault(preference, []).append(host)
    hosts: list[str] = []
    for preference in sorted(by_preference):
        group = by_preference[preference]
        rng.shuffle(group)   # RFC 5321 §5.1: spread the load over equal preferences
        hosts += [h for h in group if h not in hosts]
    return hosts


class Unsendable(Exception):
    """The message cannot go to this server as it is: ``code`` and ``text`` stand for every
    recipient, as a refusal would (nothing was sent)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


def check_binary(job: OutboundMail, body: bytes) -> None:
    """``Unsendable`` for a BODY=BINARYMIME message (RFC 3030, taken with BDAT) whose octets
    DATA cannot carry -- NUL, or CR and LF other than as CRLF: the client sends with DATA
    only, which would turn them into line ends (RFC 3030 §3: such a message must not be
    sent without BINARYMIME; converting it is not done, so it is bounced).  One that is
    text after all goes as 8-bit."""
    if job.body_type != "BINARYMIME":
        return
    crlf = body.count(b"\r\n")
    if b"\0" in body or body.count(b"\r") != crlf or body.count(b"\n") != crlf:
        raise Unsendable(554, "5.6.3 a binary message (BODY=BINARYMIME) cannot be relayed without BDAT "
                              "(conversion required but not supported)")


def transfer_options(job: OutboundMail, message: bytes, offered: Callable[[str], bool],
                     host: str) -> tuple[str, ...]:
    """The MAIL parameters ``message`` (as sent: CRLF lines) needs on a server that offers
    the extensions ``offered`` says, or ``Unsendable``.

    * SMTPUTF8 (RFC 6531 §3.2): a message that needs it -- a non-ASCII envelope address or
      header field -- goes with the parameter, declared or not (a report made here to a
      UTF-8 address, a forwarded copy, declare nothing), and is not sent to a server that
      does not offer it (5.6.7, as Postfix says); one that only declared it but is all ASCII
      goes without the parameter where it is not offered.
    * 8-bit octets (RFC 6152 §3): ``BODY=8BITMIME`` when offered, whether or not the sender
      declared it; without the extension the client must convert or bounce, and we bounce
      (5.6.3, "conversion required but not supported") rather than send them raw.
    """
    options = []
    end = message.find(b"\r\n\r\n")
    needs = (not job.mail_from.isascii() or not all(r.address.isascii() for r in job.recipients)
             or not message[: end if end >= 0 else len(message)].isascii())
    if job.smtputf8 or needs:
        if offered("SMTPUTF8"):
            options.append("SMTPUTF8")
        elif needs:
            raise Unsendable(550, f"5.6.7 SMTPUTF8 is required, but was not offered by {host}")
    if job.body_type in ("8BITMIME", "BINARYMIME") or not message.isascii():
        if offered("8BITMIME"):
            options.insert(0, "BODY=8BITMIME")
        elif not message.isascii():
            raise Unsendable(554, f"5.6.3 the message has 8-bit octets and {host} does not offer 8BITMIME "
                                  "(conversion required but not supported)")
    return tuple(options)


@dataclass(frozen=True)
class RecipientResult:
    """What became of one recipient in an attempt: the reply code (0: no server answered)."""

    address: str
    code: int
    text: str
    remote: str = ""          # the MX host that answered, for the DSN's Remote-MTA
    # The server advertised DSN and had NOTIFY/ORCPT with the RCPT (RFC 3461 §5.2.1): a
    # success is for it to report, not for us to report "relayed".
    dsn_passed: bool = False

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


# The NOTIFY keyword (RFC 3461 §4.1) that asks for a DSN of each action (RFC 3464 §2.3.3).
NOTIFY_OF_ACTION = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS", "relayed": "SUCCESS",
                    "expanded": "SUCCESS"}


@dataclass(frozen=True)
class Failure:
    """One recipient's block of a DSN.  Named for what it first was; ``action`` says what it
    reports: a failure or delay, or (asked for with NOTIFY=SUCCESS) a delivery."""

    recipient: OutboundRecipient
    status: str               # RFC 3463 status, e.g. 5.1.1 or 4.4.7, 2.0.0
    diagnostic: str           # "smtp; 550 5.1.1 no such user" or what we saw
    remote: str = ""
    action: str = "failed"    # failed | delayed | delivered | relayed | expanded

    @property
    def notify(self) -> bool:
        """Whether the sender asked to hear of this (RFC 3461 §4.1: no NOTIFY means
        FAILURE,DELAY, so SUCCESS only when asked for)."""
        wanted = self.recipient.notify
        kind = NOTIFY_OF_ACTION[self.action]
        return kind in wanted if wanted is not None else kind != "SUCCESS"


Report = Failure   # the name for a DSN block that reports no failure


@dataclass
class Decision:
    delivered: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    deferred: list[OutboundRecipient] = field(default_factory=list)
    dsn: list[Failure] = field(default_factory=list)       # the one DSN's recipients (failed or delayed)
    success: list[Failure] = field(default_factory=list)   # the "relayed" DSN's recipients (NOTIFY=SUCCESS)
    requeue: OutboundMail | None = None                   # publish this, then ack
    retry_after: float | None = None                      # nak the job with this delay

    @property
    def finished(self) -> bool:
        return not self.deferred


def retry_delay(attempt: int, settings: Settings) -> float:
    """Back-off before attempt ``attempt + 1`` (attempt 1 is the first delivery)."""
    return min(settings.outbound_retry_max, settings.outbound_retry_initial * 2 ** max(0, attempt - 1))


_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")


def status_of(result: RecipientResult) -> str:
    """The RFC 3463 status in a reply text, else one from the code's class.  The text's is
    taken only when well-formed (RFC 3463 §2: 1-3 digits per part) and of the reply's own
    class (RFC 2034 §4: a "550 2.0.0" says nothing usable); a remote server writes it, and
    it becomes the DSN's Status field."""
    words = result.text.split(" ", 1)
    found = _STATUS.fullmatch(words[0]) if words else None
    if found and str(result.code)[:1] == found.group(1):
        return words[0]
    if result.code == 0:
        return "4.4.1"    # no answer from host
    return f"{str(result.code)[0]}.0.0"


def decide(job: OutboundMail, results: list[RecipientResult], attempt: int, now: datetime,
           settings: Settings) -> Decision:
    """``attempt``: the attempts of this message so far, this one included (``job.attempts``
    plus this generation's deliveries)."""
    by_address = {r.address: r for r in results}
    age = (now - job.queued_at).total_seconds()
    expired = age >= settings.outbound_max_age
    decision = Decision()
    relayed: list[Failure] = []
    for recipient in job.recipients:
        result = by_address.get(recipient.address) or RecipientResult(recipient.address, 0, "not attempted")
        diagnostic = f"smtp; {result.code} {result.text}" if result.code else f"x-colony; {result.text}"
        if result.delivered:
            decision.delivered.append(recipient.address)
            if not result.dsn_passed:
                relayed.append(Failure(recipient, status_of(result), diagnostic, result.remote, action="relayed"))
        elif result.permanent:
            decision.failed.append(Failure(recipient, status_of(result), diagnostic, result.remote))
        elif expired:
            decision.failed.append(Failure(recipient, "4.4.7", f"{diagnostic} (message expired after "
                                                                 f"{int(age)} seconds in the queue)", result.remote))
        else:
            decision.deferred.append(recipient)
    notice = None
    if decision.deferred and not job.delay_notified and age >= settings.outbound_delay_warning:
        by = {r.address: r for r in results}
        notice = [Failure(r, status_of(by.get(r.address) or RecipientResult(r.address, 0, "")),
                          f"x-colony; still trying after {int(age)} seconds", action="delayed")
                  for r in decision.deferred]
    if job.mail_from:  # the null sender never gets a DSN: no bounce loops
        decision.dsn = [f for f in decision.failed + (notice or []) if f.notify]
        decision.success = [r for r in relayed if r.notify]
    if decision.deferred:
        delay = retry_delay(attempt, settings)
        changed = len(decision.deferred) != len(job.recipients) or notice is not None
        if changed:
            decision.requeue = job.next_generation(
                recipients=decision.deferred, attempts=attempt,
                not_before=now + timedelta(seconds=delay), delay_notified=job.delay_notified or notice is not None)
        decision.retry_after = delay
    return decision
