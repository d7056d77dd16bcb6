"""Durable acceptance: a spooled message becomes MAIL stream messages before anyone hears 250.

``MailAcceptor.accept`` takes the session (envelope, resolved mailboxes) and the spooled
message and

1. gives it a message id and prepends ``Return-Path:`` (RFC 5321 §4.4) and ``Received:``
   (with the TLS version, the message id and the trace id) and what the policies added;
2. groups the final mailboxes by (home region, domain): one ``InboundMail`` each, on
   ``names.mail_subject(region, domain, partition)`` (the partition of its first mailbox,
   so the mail store owning it fetches it), so ten recipients in three domains are three
   stream messages sharing one id and one body; a group homed in another region of the super
   cluster goes straight into that region's MAIL across the link
   (``names.mail_home_subject``), or, when that region does not acknowledge it within
   ``mail_home_ack_timeout`` or failed to lately (``colony.regions.HomeLinks``), into this
   region's MAIL under the same ``Nats-Msg-Id``, sourced to the home region later;
3. puts a body larger than ``mail_inline_max_bytes`` into the ``mail_bodies`` object store
   first, read in chunks straight from the spool file (the edge never holds it in memory;
   the SMTP shell spools to a file any message over ``smtp_server.MEMORY_SPOOL``);
4. publishes every domain message with ``Nats-Msg-Id`` and the trace context, and returns
   only once JetStream acknowledged all of them.  A timed-out publish is retried with the
   same ``Nats-Msg-Id``, which the stream's duplicate window turns into one message.

Any failure raises ``AcceptanceFailed``; the session answers 451 4.3.0 and the client keeps
the message.  A failure after some domains were acknowledged leaves those delivered: the
client's retry brings a new message id, so those recipients may see it twice -- the safe
side of "never lost".
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import logging
import os
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from colony.bus import names
from colony.contracts.mail import CROSS_REGION_MAX_BYTES, InboundMail, MailBodyRef, MailRecipient
from colony.contracts.outbound import OutboundMail, OutboundRecipient
from colony.protocols.smtp import Reply
from colony.regions import HomeLinks
from colony.settings import Settings
from colony.telemetry import inject_headers
from colony_edge.smtp_policy import AcceptedRecipient, IncomingMessage, SmtpSession

log = logging.getLogger("colony.edge.acceptance")


class AcceptanceFailed(Exception):
    """The message was not made durable.  ``reply``: the answer when it is not the default
    451 (a message that can never be accepted here gets a permanent one)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


TOO_BIG_FOR_HOME_REGION = Reply(
    552, "5.3.4", f"Message too big for a domain served in another region (at most {CROSS_REGION_MAX_BYTES} octets here)",
    "size_cross_region")


# The publish attempts of one message share ``mail_publish_timeout``: the setting bounds the
# client's wait before 451 as it says (three whole timeouts made it 90 s), and a publish the
# bus never answers -- sent just before a nats-server died, lost with it -- is sent again after
# a sixth of it (5 s by default) rather than the whole 30 s the client waited for its 250.
PUBLISH_SHARES = (1 / 6, 2 / 6, 3 / 6)


class SmtpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Counter("colony_smtp_connections", "SMTP connections accepted by the listener.",
                                   registry=registry)
        self.accepted = Counter("colony_smtp_accepted_messages", "Messages answered 250 (durably in MAIL).",
                                registry=registry)
        self.accepted_bytes = Counter("colony_smtp_accepted_bytes", "Octets of the messages answered 250.",
                                      registry=registry)
        self.stream_messages = Counter("colony_smtp_stream_messages", "MAIL stream messages published (one per domain).",
                                       registry=registry)
        self.rejected = Counter("colony_smtp_rejected", "SMTP refusals, by session stage and reason.",
                                ["stage", "reason"], registry=registry)
        self.home_publishes = Counter(
            "colony_smtp_home_region_messages",
            "MAIL stream messages for a domain homed in another region, by where they were stored: "
            "home (acknowledged by the home region across the link), fallback (it did not answer in time: "
            "stored here), local (stored here without trying, the link having failed lately).",
            ["outcome"], registry=registry)
        self.ack_seconds = Histogram("colony_smtp_ack_seconds", "From the end of DATA to the last JetStream ack.",
                                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                     registry=registry)


def new_message_id() -> str:
    """Time-ordered and unique across edges: milliseconds then 80 random bits, in hex."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def fold(name: str, value: str) -> bytes:
    """One header field, folded before 78 columns where it has spaces (RFC 5322 §2.2.3)."""
    lines, line, empty = [], f"{name}:", True
    for word in value.split(" "):
        if len(line) + 1 + len(word) > 76 and not empty:
            lines.append(line)
            line = "\t" + word
        else:
            line += " " + word
        empty = False
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class _Concat(io.RawIOBase):
    """The prepended header fields, then the message: one reader for the object store."""

    def __init__(self, head: bytes, message: IncomingMessage) -> None:
        self._head = memoryview(head)
        self._file = message.open()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


class MailAcceptor:
    def __init__(self, js: JetStreamContext, settings: Settings, node_id: str, hostname: str,
                 metrics: SmtpMetrics, tracer: trace.Tracer | None = None) -> None:
        self.js, self.settings, self.node_id, self.hostname, self.metrics = js, settings, node_id, hostname, metrics
        self.tracer = tracer or trace.get_tracer("colony.edge.smtp")  # the global provider (setup_tracing)
        self._bodies = None
        self.home_links = HomeLinks()

    async def accept_for(self, session: SmtpSession, message: IncomingMessage, recipients: list) -> str:
        """``accept`` for some of the session's recipients only (the rest go elsewhere, e.g.
        OUTBOUND); the session's recipient list is left as it was."""
        everyone = session.recipients
        session.recipients = recipients
        try:
            return await self.accept(session, message)
        finally:
            session.recipients = everyone

    async def accept(self, session: SmtpSession, message: IncomingMessage) -> str:
        started = time.monotonic()
        message_id = new_message_id()
        mail = session.mail_from
        assert mail is not None and session.recipients, "accept() needs a transaction with recipients"
        with self.tracer.start_as_current_span("smtp.accept", attributes={
                "colony.message_id": message_id, "colony.size": message.size,
                "colony.recipients": len(session.recipients)}) as span:
            trace_id = span.get_span_context().trace_id
            head = self._head(session, message, message_id, format(trace_id, "032x") if trace_id else None)
            size = len(head) + message.size
            by_domain = self._group(session)
            local = self.settings.region
            one_region = len(self.settings.region_list) <= 1
            def here(region: str) -> bool:
                return one_region or region == local
            foreign = any(not here(region) for region, _ in by_domain)
            if foreign and size > CROSS_REGION_MAX_BYTES:
                raise AcceptanceFailed(f"{message_id}: {size} octets for another region", TOO_BIG_FOR_HOME_REGION)
            body, ref = None, None
            if size <= self.settings.mail_inline_max_bytes or foreign:
                body = head + message.read_bytes()
            if size > self.settings.mail_inline_max_bytes and any(here(region) for region, _ in by_domain):
                ref = await self.put_body(message_id, head, message)
            received_at = datetime.now(UTC)
            headers = inject_headers()
            publishes = []
            for (region, domain), recipients in by_domain.items():
                item = InboundMail(
                    at=received_at, message_id=message_id, domain=domain, mail_from=mail.address,
                    recipients=recipients, body_type=mail.body, smtputf8=mail.smtputf8, ret=mail.ret,
                    envid=mail.envid, size=size, edge_node=self.node_id, client_ip=session.peer_ip,
                    helo=session.helo, tls=session.tls,
                    # Local groups of a large message share one stored body; other regions' carry it.
                    body=body if ref is None or not here(region) else None,
                    body_ref=ref if here(region) else None,
                    special_use=session.notes.get("special_use"))
                # The first recipient's partition: its owner fetches the job (others, if any,
                # are forwarded by it to their owners).
                partition = names.mail_partition(recipients[0].mailbox)
                if here(region) or region not in self.settings.region_list:
                    publishes.append(self._publish(names.mail_subject(region, domain, partition), item, headers))
                else:
                    publishes.append(self._publish_home(region, domain, partition, item, headers))
            # Every publish runs to its end (none is left running unowned); the first
            # failure is the answer.
            results = await asyncio.gather(*publishes, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                if isinstance(failures[0], AcceptanceFailed):
                    raise failures[0]
                raise AcceptanceFailed(f"publish of {message_id} failed: {failures[0]!r}") from failures[0]
        elapsed = time.monotonic() - started
        self.metrics.ack_seconds.observe(elapsed)
        self.metrics.accepted.inc()
        self.metrics.accepted_bytes.inc(size)
        self.metrics.stream_messages.inc(len(publishes))
        log.info("accepted %s from %s (%s) for %d mailbox(es) in %d domain(s), %d octets%s, acked in %.1f ms",
                 message_id, session.peer_ip, mail.address or "<>", sum(len(r) for r in by_domain.values()),
                 len(by_domain), size, " via object store" if ref else "", elapsed * 1000)
        return message_id

    def _head(self, session: SmtpSession, message: IncomingMessage, message_id: str, trace_id: str | None) -> bytes:
        mail = session.mail_from
        protocol = ("UTF8SMTP" if mail.smtputf8 else "ESMTP" if session.extended else "SMTP") + ("S" if session.tls else "")
        if protocol == "SMTPS":
            protocol = "ESMTPS"  # RFC 3848 has no plain-SMTP-over-TLS keyword
        if session.authenticated:
            # ESMTPSA / UTF8SMTPSA (RFC 3848 §2, RFC 6531 §3.7.3): the client logged in, as
            # the Received of the same submission's remote copy says; filters downstream
            # tell a subscriber's mail from a stranger's by it.  AUTH implies EHLO.
            protocol += "A"
        tls = f" (using {session.tls} with cipher {session.tls_cipher})" if session.tls else ""
        single = session.recipients[0].rcpt.address if len(session.recipients) == 1 else None
        parts = [f"from {session.helo or 'unknown'} ([{session.peer_ip}])", f"by {self.hostname} (Colony)",
                 f"with {protocol} id {message_id}{tls}"]
        if single:
            parts.append(f"for <{single}>")
        if trace_id:
            parts.append(f"(trace {trace_id})")
        received = " ".join(parts) + "; " + email.utils.format_datetime(datetime.now(UTC))
        out = fold("Return-Path", f"<{mail.address}>") + fold("Received", received)
        for name, value in message.headers:
            out += fold(name, value)
        return out

    def _group(self, session: SmtpSession) -> dict[tuple[str, str], list[MailRecipient]]:
        groups: dict[tuple[str, str], list[MailRecipient]] = {}
        seen: set[str] = set()
        for accepted in session.recipients:
            rcpt = accepted.rcpt
            for mailbox in accepted.mailboxes:
                if mailbox.address in seen:  # two aliases reaching one mailbox: deliver once
                    continue
                seen.add(mailbox.address)
                # A domain without a home region is served where it is received.
                region = mailbox.home_region or self.settings.region
                groups.setdefault((region, mailbox.domain), []).append(MailRecipient(
                    mailbox=mailbox.address, original=rcpt.address, notify=passed_on_notify(accepted),
                    orcpt=rcpt.orcpt))
        return groups

    async def put_body(self, message_id: str, head: bytes, message: IncomingMessage) -> MailBodyRef:
        if self._bodies is None:
            self._bodies = await self.js.object_store(names.OBJECT_MAIL_BODIES)
        reader = _Concat(head, message)
        try:
            info = await asyncio.wait_for(self._bodies.put(message_id, reader, meta=ObjectMeta(name=message_id)),
                                          self.settings.mail_publish_timeout * 4)
        except (NatsTimeoutError, asyncio.TimeoutError, OSError) as exc:
            raise AcceptanceFailed(f"object store put of {message_id} failed: {exc!r}") from exc
        except Exception as exc:  # nats-py raises its own error types from JetStream answers
            raise AcceptanceFailed(f"object store put of {message_id} failed: {exc!r}") from exc
        finally:
            reader.close()
        digest = (info.digest or "").partition("=")[2]
        sha = _b64url_to_hex(digest) if digest else ""
        return MailBodyRef(bucket=names.OBJECT_MAIL_BODIES, name=message_id, size=info.size, sha256=sha)

    async def _publish_home(self, region: str, domain: str, partition: int, item: InboundMail,
                            trace_headers: dict[str, str]) -> None:
        """Into the home region's MAIL across the link, else into this region's.

        One attempt, bounded by ``mail_home_ack_timeout``: a link that is down answers at once
        (no responders), a stopped hub or server not at all.  The local copy carries the same
        ``Nats-Msg-Id``, so if the unanswered publish was stored after all, the home MAIL drops
        the sourced copy as a duplicate (within its window; later, the stores' delivery key
        stores it once)."""
        payload = item.encode()
        links, outcome = self.home_links, "local"
        direct = links.direct(region, time.monotonic())
        if direct and links.is_open(region):  # the probe: not past mail still waiting here
            try:
                waiting = await self._local_backlog(region)
            except BaseException:
                links.abandoned(region)
                raise
            if waiting:
                links.backlogged(region, time.monotonic())
                direct = False
        if direct:
            try:
                await self.js.publish(names.mail_home_subject(region, domain, partition), payload,
                                      timeout=self.settings.mail_home_ack_timeout,
                                      headers={**trace_headers, "Nats-Msg-Id": item.msg_id()})
            except Exception as exc:  # timeout, no responders, or the home stream's refusal
                links.failed(region, time.monotonic())
                outcome = "fallback"
                log.warning("%s: region %s did not take it across the link (%r); storing it in %s's MAIL, "
                            "and %s's mail there without trying for %.0f s", item.message_id, region, exc,
                            self.settings.region, region, links.pause)
            except BaseException:  # cancelled: no outcome either way, so the next message may try
                links.abandoned(region)
                raise
            else:
                links.answered(region, time.monotonic())
                self.metrics.home_publishes.labels("home").inc()
                return
        links.local_started(region)
        try:
            await self._publish(names.mail_subject(region, domain, partition), item, trace_headers, payload)
        finally:
            links.local_ended(region)
        self.metrics.home_publishes.labels(outcome).inc()

    async def _local_backlog(self, region: str) -> int:
        """How many messages this region's MAIL holds for ``region``'s stores, not yet taken by
        that region's source (a work queue: the source's acks remove them); unknown counts as
        waiting, which keeps the mail here a little longer and in order."""
        try:
            info = await asyncio.wait_for(
                self.js.stream_info(names.STREAM_MAIL, subjects_filter=names.mail_region_filter(region)),
                self.settings.mail_home_ack_timeout)
        except Exception as exc:  # timeout or the server's error: ask again at the next probe
            log.debug("MAIL's backlog for %s unknown: %r", region, exc)
            return 1
        return sum((info.state.subjects or {}).values())

    async def _publish(self, subject: str, item: InboundMail, trace_headers: dict[str, str],
                       payload: bytes | None = None) -> None:
        headers = {**trace_headers, "Nats-Msg-Id": item.msg_id()}
        payload = payload if payload is not None else item.encode()
        for attempt, share in enumerate(PUBLISH_SHARES, 1):
            try:
                await self.js.publish(subject, payload, timeout=self.settings.mail_publish_timeout * share,
                                      headers=headers)
                return
            except NatsTimeoutError as exc:
                # The same Nats-Msg-Id makes a retry of a publish that did land a no-op.
                log.warning("publish of %s to %s timed out (attempt %d)", item.message_id, subject, attempt)
                last: Exception = exc
            except Exception as exc:
                raise AcceptanceFailed(f"publish of {item.message_id} to {subject} failed: {exc!r}") from exc
        raise AcceptanceFailed(f"publish of {item.message_id} to {subject} timed out: {last!r}")


async def outbound_body(local: MailAcceptor, settings: Settings, name: str, head: bytes,
                        message: IncomingMessage) -> tuple[int, bytes | None, MailBodyRef | None]:
    """A copy that goes out (OUTBOUND), ``head`` (its Received: line) before the message: its
    size, and its octets inline up to ``mail_inline_max_bytes``, or else a reference to its
    copy in the object store (``local.put_body``), named ``name``."""
    size = len(head) + message.size
    if size <= settings.mail_inline_max_bytes:
        return size, head + message.read_bytes(), None
    return size, None, await local.put_body(name, head, message)


def expands(accepted: AcceptedRecipient) -> bool:
    """Whether the RCPT went to several addresses (an alias with several targets, a
    forwarding account that keeps a copy): RFC 3461 §5.2.7.3's multiple-recipient alias."""
    return len(accepted.mailboxes) + len(accepted.remote) > 1


def passed_on_notify(accepted: AcceptedRecipient) -> list[str] | None:
    """The NOTIFY each address an accepted RCPT goes to carries on: the RCPT's own, except
    that an expansion to several addresses is reported "expanded" here
    (``expansion_reports``) and SUCCESS is not asked of its targets (RFC 3461 §5.2.7.3),
    so the sender hears of the expansion once, and later only of failures and delays."""
    notify = accepted.rcpt.notify
    if not notify:
        return None
    if "SUCCESS" not in notify or not expands(accepted):
        return list(notify)
    return [n for n in notify if n != "SUCCESS"] or ["NEVER"]


def outbound_recipients(remote: Iterable[AcceptedRecipient]) -> dict[str, list[OutboundRecipient]]:
    """The addresses ``remote`` go out to (a recipient outside the cluster, or a hosted one's
    forwarding targets) by destination domain, each address once, as the first RCPT that
    led to it names it."""
    by_domain: dict[str, list[OutboundRecipient]] = {}
    seen: set[str] = set()
    for accepted in remote:
        rcpt = accepted.rcpt
        for address in accepted.remote or (rcpt.address,):
            if address.lower() in seen:
                continue
            seen.add(address.lower())
            domain = address.rpartition("@")[2].lower()
            by_domain.setdefault(domain, []).append(OutboundRecipient(
                address=address, notify=passed_on_notify(accepted),
                # A forwarded copy names the recipient it was sent to (RFC 3461 ORCPT).
                orcpt=rcpt.orcpt or (None if address == rcpt.address else f"rfc822;{rcpt.address}")))
    return by_domain


async def publish_outbound(js: JetStreamContext, settings: Settings, message_id: str, items: Iterable[OutboundMail],
                           what: str) -> None:
    """Publish the OUTBOUND jobs of ``message_id`` (one per destination domain) side by side
    and return once JetStream acknowledged all; ``AcceptanceFailed`` (``what`` names the
    kind of copy) otherwise. Each job's ``Nats-Msg-Id`` makes a publish again of one that
    did land a no-op."""
    headers = inject_headers()
    results = await asyncio.gather(*(
        js.publish(names.outbound_subject(item.destination), item.encode(),
                   headers={**headers, "Nats-Msg-Id": item.msg_id()}, timeout=settings.mail_publish_timeout)
        for item in items), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise AcceptanceFailed(f"{what} publish of {message_id} failed: {failures[0]!r}") from failures[0]


def _b64url_to_hex(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).hex()
    except ValueError:
        return ""


def remove_quietly(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove spool file %s: %s", path, exc)


__all__ = ["AcceptanceFailed", "MailAcceptor", "SmtpMetrics", "fold", "new_message_id", "outbound_body", "outbound_recipients",
           "publish_outbound", "remove_quietly"]
