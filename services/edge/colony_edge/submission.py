"""Submission (RFC 6409) on the edge: the policy of ports 587 (STARTTLS) and 465 (implicit
TLS) and the acceptor that splits a message between MAIL and OUTBOUND.

The same sans-IO core and asyncio shell as the MX run submission with
``auth_mechanisms=("PLAIN", "LOGIN")`` and ``auth_required``: the core never offers or
accepts AUTH before TLS and refuses MAIL before AUTH; the hooks below decide the rest.

* ``auth``: the password check of the auth contract (``colony.auth.check``, service
  ``mail``); its answer carries the class of service's ``sending_rate_per_hour``.  Failed
  checks count in the edge's login-failure throttle, the one IMAP and POP3 use
  (``colony_edge.access_proxy.LoginThrottle``: per client address and per account, across
  all edges, familiar clients held by their address only): a guesser locked out of IMAP is
  locked out of submission too, and the other way round.  The auth service's own lock (10
  failures a minute, for a minute, per admin API) alone let a guesser try again every
  minute here, ten times the pace the edge allows over IMAP and POP3.
* ``mail_from``: the envelope sender must belong to the account: its own address, or an
  alias (in its domain or a domain alias of it) whose targets include the account.  The null
  sender is refused (a client does not send bounces).  The sending rate is counted here, per
  account (class of service) and per domain (``submission_domain_rate_per_hour``), in the
  shared counters, so it holds across all edges; a client past it hears 450 4.7.0, the
  refusal is counted (``colony_submission_throttled_total{scope}``), logged, and the first
  refusal of an account in a minute goes to AUDIT (``submission.throttled``) for operators.
* ``rcpt_to``: a recipient in a hosted domain is resolved as on the MX (unknown users are
  refused now, not bounced later); any other is remote and goes to OUTBOUND.
* ``data_complete``: every address in ``From:`` must belong to the account as well.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY

from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter

from colony.bus import names
from colony.contracts.auth import AuthClient, AuthFailure, AuthUnavailable
from colony.contracts.directory import AccountInfo, AliasInfo
from colony.contracts.outbound import OutboundMail
from colony.counters import SharedCounters
from colony.events import AuditRecorded
from colony.protocols.smtp import Reply, events as E, replies as R
from colony.settings import Settings
from colony_edge.acceptance import (MailAcceptor, fold, new_message_id, outbound_body, outbound_recipients,
                                   publish_outbound)
from colony_edge.access_proxy import LoginThrottle
from colony_edge.expansion_reports import ExpansionReports
from colony_edge.familiar import FamiliarClients, edge_familiar
from colony_edge.login_cache import LoginCache, edge_login_cache
from colony_edge.recipients import RecipientPolicy
from colony_edge.security.gate import EdgeGate
from colony_edge.security.policy import (HEADER_TOO_LARGE, GateAtConnect, delete_claimed_results,
                                         read_header_section)
from colony_edge.smtp_policy import (ACCEPT, AcceptedRecipient, BasePolicy, IncomingMessage, PolicyChain, SmtpSession,
                                     Verdict, refuse)

log = logging.getLogger("colony.edge.submission")

AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure; try again later", "auth_unavailable")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed attempts; try again later", "auth_throttled")
NULL_SENDER = Reply(553, "5.7.1", "Submission with the null sender is not allowed", "null_sender")
NOT_YOUR_SENDER = Reply(553, "5.7.1", "Sender address is not yours", "sender_not_owned")
NOT_YOUR_FROM = Reply(550, "5.7.1", "From: header address is not yours", "from_not_owned")
RATE_LIMITED = Reply(450, "4.7.0", "Sending rate exceeded; try again later", "sending_rate")

_HEADER_SCAN = 256 * 1024   # the header section is read from the spool up to this far
# A header-section line as the email package's feed parser tells it: a field, a
# continuation, or an mbox "From " line; the first other line (an empty one) ends the section.
_HEADER_LINE = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")
_CACHED_FROM = 1024          # From fields longer than this are parsed every time (bounded cache)
# The email package parses an address in ~0.13 ms, on the event loop: a From: of the 256 KiB
# scanned (12,000 addresses) held every session of the edge for 1.6 s of CPU per message.
# No one's From: is this long; beyond it the message is refused unparsed.
MAX_FROM = 4096
FROM_TOO_LONG = Reply(550, "5.7.1", f"From: header longer than {MAX_FROM} octets", "from_too_long")


def from_addresses(head: bytes) -> tuple[str, ...]:
    """The addresses in the ``From:`` fields of a header section, read as ``email.policy.SMTP``
    and ``getaddresses`` read them.  Only the From fields are parsed, and that parse is
    cached by their raw text: a client sending many messages repeats its From (parsing every
    header section cost ~6% of an edge's CPU in the outbound benchmark).  Raises
    ``FromTooLong`` when the From fields are longer than ``MAX_FROM`` octets."""
    fields: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in head.splitlines(keepends=True):
        if not _HEADER_LINE.match(line):
            break
        if line[:1] in b" \t":
            if current is not None:
                current.append(line)
            continue
        current = [line] if line[:5].lower() == b"from:" else None
        if current is not None:
            fields.append(current)
    raw = tuple(b"".join(f) for f in fields)
    length = sum(map(len, raw))
    if length > MAX_FROM:
        raise FromTooLong(length)
    if length > _CACHED_FROM:
        return _parse_from(raw)
    return _cached_from(raw)


class FromTooLong(ValueError):
    """The From fields are longer than ``MAX_FROM``: not parsed."""


def _parse_from(fields: tuple[bytes, ...]) -> tuple[str, ...]:
    headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(b"".join(fields) + b"\r\n")
    return tuple(address for _, address in email.utils.getaddresses([str(v) for v in headers.get_all("From", [])]))


_cached_from = functools.lru_cache(maxsize=1024)(_parse_from)


class SubmissionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.auth = Counter("colony_submission_auth", "Submission AUTH attempts by result.", ["result"],
                            registry=registry)
        self.throttled = Counter("colony_submission_throttled", "Submissions refused for the sending rate, "
                                 "by scope (account, domain).", ["scope"], registry=registry)
        self.forged_results = Counter("colony_submission_forged_auth_results",
                                      "Authentication-Results fields under our authserv-id in submitted mail, "
                                      "deleted (RFC 8601 section 5).", registry=registry)


class SubmissionPolicy(BasePolicy):
    def __init__(self, directory, auth: AuthClient, counters: SharedCounters, js: JetStreamContext,
                 settings: Settings, metrics: SubmissionMetrics, node_id: str, srs=None,
                 login_cache: LoginCache | None = None, familiar: FamiliarClients | None = None,
                 throttle: LoginThrottle | None = None,
                 refund: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.directory, self.auth_client, self.counters, self.js = directory, auth, counters, js
        # A logged-in session's connection no longer counts toward its address's connection
        # rate (``EdgeGate.refund_connection``), as on IMAP and POP3: an office's senders
        # behind one NAT address open a connection per message.
        self.refund = refund
        self.familiar = familiar   # clients that logged in before: not held by an account's lock
        self.throttle = throttle   # failed logins per address and per account, shared with IMAP/POP3
        # The edge's login cache (as IMAP/POP3 use it): a client that submits every few
        # minutes with the same password costs one argon2id check per TTL, not one per session.
        self.login_cache = login_cache
        self.settings, self.metrics, self.node_id = settings, metrics, node_id
        # With an SRS key, a hosted recipient that forwards outside is accepted with its remote
        # targets (as on the MX); the copies keep the account's own envelope sender.
        self.recipients = RecipientPolicy(directory, settings.postmaster_address, srs)
        self._audited: OrderedDict[str, float] = OrderedDict()   # account -> last audit (bounded)

    async def auth(self, session: SmtpSession, auth: E.Auth) -> Verdict:
        if auth.authzid and auth.authzid.lower() != auth.username.lower():
            # RFC 4616 §2: acting as another user needs that right, and nobody has it here (as
            # on the edge's IMAP and POP3); authenticating the authcid instead would leave the
            # client believing it acts as the authzid.
            self.metrics.auth.labels(result="refused").inc()
            return refuse(R.AUTH_FAILED)
        if self.throttle is not None and await self.throttle.blocked(session.peer_ip, auth.username):
            self.metrics.auth.labels(result="throttled").inc()
            return refuse(AUTH_THROTTLED)
        cache, reply = self.login_cache, None
        if cache is not None:
            key = cache.key("mail", auth.username, auth.password)
            reply = cache.get(key)
        if reply is None:
            mark = cache.mark() if cache is not None else 0
            try:
                reply = await self.auth_client.check(auth.username, auth.password, service="mail",
                                                     remote_addr=session.peer_ip)
                if not reply.ok and reply.reason == AuthFailure.THROTTLED and self.familiar is not None \
                        and await self.familiar.known(auth.username, session.peer_ip):
                    # the account's lock holds strangers only (colony_edge.familiar)
                    reply = await self.auth_client.check(auth.username, auth.password, service="mail",
                                                         remote_addr=session.peer_ip, familiar=True)
            except AuthUnavailable:
                self.metrics.auth.labels(result="unavailable").inc()
                return refuse(AUTH_UNAVAILABLE)
            finally:
                if cache is not None:
                    cache.put(key, auth.username, reply, mark)
        if not reply.ok:
            if reply.reason == AuthFailure.INTERNAL:   # the service failed, not the password: 454 (RFC 4954)
                self.metrics.auth.labels(result="unavailable").inc()
                return refuse(AUTH_UNAVAILABLE)
            self.metrics.auth.labels(result="throttled" if reply.reason == "throttled" else "refused").inc()
            if reply.reason == AuthFailure.THROTTLED:
                return refuse(AUTH_THROTTLED)
            if reply.reason == AuthFailure.INVALID and self.throttle is not None:   # a wrong guess
                await self.throttle.failed(session.peer_ip, auth.username)
            return refuse(R.AUTH_FAILED)
        self.metrics.auth.labels(result="ok").inc()
        if self.throttle is not None:
            await self.throttle.succeeded(session.peer_ip, auth.username)   # remembers the client as familiar
        elif self.familiar is not None:
            await self.familiar.remember(auth.username, session.peer_ip)
        if self.refund is not None and not session.notes.get("refunded"):
            session.notes["refunded"] = True      # once per connection, however often it logs in
            await self.refund(session.peer_ip)
        session.notes["account"] = reply.account
        session.notes["account_domain"] = reply.domain
        session.notes["rate_per_hour"] = reply.sending_rate_per_hour
        log.info("submission %s from %s: authenticated as %s", session.id, session.peer_ip, reply.account)
        return ACCEPT

    # --- envelope -------------------------------------------------------------------------

    def owns(self, account: str, address: str) -> bool:
        """Whether ``address`` is ``account``'s: itself, or an alias (also through a domain
        alias) that delivers to it."""
        local, _, domain = address.lower().rpartition("@")
        if not local or not domain:
            return False
        candidates = [f"{local}@{domain}"]
        real = self.directory.domain_alias(domain)
        if real:
            candidates.append(f"{local}@{real}")
        for candidate in candidates:
            if candidate == account.lower():
                return True
            entry = self.directory.address(candidate)
            if isinstance(entry, AliasInfo) and account.lower() in (t.lower() for t in entry.targets):
                return True
            if isinstance(entry, AccountInfo) and entry.address.lower() == account.lower():
                return True
        return False

    async def mail_from(self, session: SmtpSession, mail: E.MailFrom) -> Verdict:
        account = str(session.notes.get("account", ""))
        if not mail.address:
            return refuse(NULL_SENDER)
        if not self.owns(account, mail.address):
            log.warning("submission %s: %s tried to send as %s; refused", session.id, account, mail.address)
            return refuse(NOT_YOUR_SENDER)
        return await self._rate(session, account)

    async def _rate(self, session: SmtpSession, account: str) -> Verdict:
        domain = str(session.notes.get("account_domain") or account.rpartition("@")[2])
        limits = [("account", account, session.notes.get("rate_per_hour")),
                  ("domain", domain, self.settings.submission_domain_rate_per_hour or None)]
        for scope, subject, per_hour in limits:
            if not per_hour:
                continue
            # The shared counters keep one-minute windows: an hourly allowance is held as
            # its sixtieth per minute (at least one), which also stops a burst early.
            per_minute = max(1.0, per_hour / 60.0)
            seen = await self.counters.hit(f"submit_{scope}", subject)
            if seen > per_minute:
                self.metrics.throttled.labels(scope=scope).inc()
                log.warning("submission %s: %s %s over its sending rate (%.0f/min > %.0f/min) from %s; throttled",
                            session.id, scope, subject, seen, per_minute, session.peer_ip)
                await self._audit(account, domain, scope, seen, per_minute, session.peer_ip)
                return refuse(RATE_LIMITED)
        return ACCEPT

    async def _audit(self, account: str, domain: str, scope: str, seen: float, limit: float, ip: str) -> None:
        now = time.monotonic()
        last = self._audited.get(account)
        if last is not None and now - last < 60:
            return
        self._audited[account] = now
        self._audited.move_to_end(account)
        while len(self._audited) > 10_000:
            self._audited.popitem(last=False)
        event = AuditRecorded(actor=account, role="system", action="submission.throttled", target=account,
                              domain=domain, remote_addr=ip, outcome="refused",
                              detail={"scope": scope, "rate_per_minute": round(seen, 1), "limit_per_minute": limit,
                                      "edge": self.node_id})
        try:
            await self.js.publish(names.audit_subject(domain), event.encode(), timeout=self.settings.mail_publish_timeout)
        except Exception:  # the refusal stands whether or not the audit trail could be written
            log.exception("audit event for throttled %s not written", account)

    async def rcpt_to(self, session: SmtpSession, rcpt: E.RcptTo) -> Verdict:
        domain = rcpt.address.rpartition("@")[2].lower()
        if rcpt.address.lower() == "postmaster" or self.directory.domain(domain) or self.directory.domain_alias(domain):
            return await self.recipients.rcpt_to(session, rcpt)
        if not domain or not self.directory.loaded.is_set():
            return refuse(R.BAD_RECIPIENT_SYNTAX if not domain else Reply(451, "4.3.0", "Directory not loaded yet",
                                                                          "directory_not_ready"))
        session.recipients.append(AcceptedRecipient(rcpt, ()))   # remote: no mailbox here
        return ACCEPT

    async def data_complete(self, session: SmtpSession, message: IncomingMessage) -> Verdict:
        account = str(session.notes.get("account", ""))
        try:
            senders = from_addresses(message.read_head(_HEADER_SCAN))
        except FromTooLong as exc:
            log.warning("submission %s: %s sent a From: of %s octets; refused", session.id, account, exc)
            return refuse(FROM_TOO_LONG)
        if not senders or any(not self.owns(account, a) for a in senders):
            log.warning("submission %s: %s sent From: %s; refused", session.id, account, ", ".join(senders) or "(none)")
            return refuse(NOT_YOUR_FROM)
        session.notes["from_domain"] = senders[0].rpartition("@")[2].lower()
        # A logged-in user is no more trusted with our verdicts than a stranger on the MX:
        # results under our authserv-id in what they send were not written by us (RFC 8601
        # §5), and delivered to a colleague's mailbox a mail client would show them as ours.
        _, header_section, terminated = await read_header_section(message, 0)
        if not terminated:      # fields past the scan could not be checked
            return refuse(HEADER_TOO_LARGE)
        forged = await delete_claimed_results(message, header_section, terminated, self.settings.authserv_id)
        if forged:
            log.warning("submission %s: %s sent %d Authentication-Results field(s) under our authserv-id; "
                        "deleted", session.id, account, forged)
            if self.metrics is not None:
                self.metrics.forged_results.inc(forged)
        return ACCEPT


class SubmissionAcceptor:
    """Local recipients through the MX's ``MailAcceptor`` (into MAIL), remote ones as one
    ``OutboundMail`` per destination domain; returns only once every stream acknowledged."""

    def __init__(self, local: MailAcceptor, js: JetStreamContext, settings: Settings, node_id: str) -> None:
        self.local, self.js, self.settings, self.node_id = local, js, settings, node_id
        self.tracer = local.tracer

    async def accept(self, session: SmtpSession, message: IncomingMessage) -> str:
        # Remote: recipients outside the cluster, and hosted recipients' forwarding targets.
        remote = [r for r in session.recipients if not r.mailboxes or r.remote]
        local = [r for r in session.recipients if r.mailboxes]
        message_id = await self.local.accept_for(session, message, local) if local else None
        if remote:
            message_id = await self._outbound(session, message, remote, message_id or new_message_id())
        assert message_id is not None
        return message_id

    async def _outbound(self, session: SmtpSession, message: IncomingMessage, remote: list[AcceptedRecipient],
                        message_id: str) -> str:
        mail = session.mail_from
        account = str(session.notes.get("account", ""))
        tls = f" (using {session.tls})" if session.tls else ""
        received = (f"from {session.helo or 'unknown'} ([{session.peer_ip}]) by {self.local.hostname} (Colony) "
                    f"with ESMTPSA id {message_id}{tls}; {email.utils.format_datetime(email.utils.localtime())}")
        head = fold("Received", received)
        size, body, ref = await outbound_body(self.local, self.settings, message_id, head, message)
        by_domain = outbound_recipients(remote)
        await publish_outbound(self.js, self.settings, message_id, (
            OutboundMail.new(
                message_id=message_id, destination=destination, mail_from=mail.address, recipients=recipients,
                account=account, sign_domain=str(session.notes.get("from_domain", "")), sender_local=True,
                body_type=mail.body, smtputf8=mail.smtputf8, ret=mail.ret, envid=mail.envid, size=size,
                edge_node=self.node_id, body=body, body_ref=ref)
            for destination, recipients in by_domain.items()), "outbound")
        log.info("submitted %s by %s for %d remote recipient(s) in %d domain(s)", message_id, account,
                 sum(len(v) for v in by_domain.values()), len(by_domain))
        return message_id


async def open_submission(workload, runtime, acceptor: MailAcceptor, metrics, counters: SharedCounters,
                          tls, hostname: str, srs=None, gate: EdgeGate | None = None) -> dict[str, str]:
    """Open the submission listeners of an edge (a ``ConnectionWorkload``): 587 with
    STARTTLS and 465 with implicit TLS.  Off (a warning) without a TLS certificate: a
    password must never cross the network in the clear."""
    from colony_edge.smtp_server import SmtpServer, SmtpServerConfig

    settings = workload.settings
    if tls is None:
        log.warning("no TLS certificate: submission (587/465) is not offered")
        return {}
    js = runtime.nc.jetstream()
    familiar = edge_familiar(workload, settings, js)
    policy = SubmissionPolicy(workload.directory, AuthClient(runtime.nc), counters, js, settings,
                              SubmissionMetrics(runtime.metrics.registry), runtime.node_id, srs,
                              login_cache=edge_login_cache(workload, settings, runtime.metrics),
                              familiar=familiar,
                              throttle=LoginThrottle(settings, counters, gate, familiar) if gate is not None else None,
                              refund=gate.refund_connection if gate is not None else None)
    submit = ExpansionReports(SubmissionAcceptor(acceptor, js, settings, runtime.node_id), js, settings,
                              runtime.node_id, workload.directory)
    addresses = {}
    for name, port, implicit in (("submission", settings.submission_port, False),
                                 ("submissions", settings.submissions_port, True)):
        server = SmtpServer(SmtpServerConfig(
            hostname=hostname, spool_dir=settings.data_dir / "spool" / runtime.node_id / name,
            max_message_size=settings.smtp_max_message_size, max_recipients=settings.smtp_max_recipients,
            max_errors=settings.smtp_max_errors, timeout=settings.smtp_timeout, auth_mechanisms=("PLAIN", "LOGIN"),
            auth_required=True, implicit_tls=implicit),
            PolicyChain([GateAtConnect(gate), policy]) if gate is not None and not implicit else policy,
            submit, metrics, workload.tracker, tls)
        # The edge gate at connect, without the block lists (mail users send from the networks
        # they list): 587 in SMTP's words, 465 before the handshake (a TLS client could read no
        # SMTP refusal).
        addresses[name] = await workload.listen(name, settings.host, port, server.handle,
                                                refuse=lambda writer: writer.write(R.SHUTTING_DOWN.to_bytes()),
                                                ssl=tls if implicit else None,
                                                gate=gate.for_clients() if gate is not None and implicit else None)
    return addresses
