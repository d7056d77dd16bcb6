"""The outbound queue on the edges: the asyncio shell around ``colony.outbound.rules``.

Every edge runs one ``QueueRunner`` on the OUTBOUND work queue (durable consumer
``names.OUTBOUND_CONSUMER``), so a job goes to whichever edge asks next and a job of an edge
that dies is redelivered to another after ``ack_wait``.  Per job (one destination domain):

1. a requeued generation that is not due yet goes back with the rest of its back-off;
2. the MX hosts of the destination (``colony.dns.make_resolver``: ``Settings.dns_servers``),
   each host's A/AAAA addresses, tried in order until one answers the greeting;
3. SMTP with ``colony_edge.smtp_client``: STARTTLS whenever the server offers it
   (opportunistic: an unverifiable certificate does not stop delivery), MAIL, one RCPT per
   recipient, DATA -- pipelined (RFC 2920) when the server offers PIPELINING -- with the
   message DKIM-signed for ``sign_domain`` when a key is in ``Settings.dkim_key_dir``, and
   the sender's RET, ENVID, NOTIFY and ORCPT when the server offers DSN
   (``colony.outbound.dsn_relay``, RFC 3461 §5.2.1);
   at most ``outbound_destination_concurrency`` connections per destination on this edge;
4. ``rules.decide`` -> the DSN (into MAIL for a local sender, OUTBOUND otherwise) and, for
   delivered recipients that asked for NOTIFY=SUCCESS from a server without DSN, a
   "relayed" one of its own, the
   requeued generation, USAGE ``messages_out`` for the delivered recipients; then ack, or
   nak with the back-off.  The runner's ``max_deliver`` is not the limit here: expiry is
   ``outbound_max_age`` counted from ``queued_at``.

A job that cannot be decoded or whose body is gone is rejected to DEAD_LETTERS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dns.asyncresolver
import dns.exception
import dns.resolver
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter

from colony.bus import names
from colony.bus.pipelined import Outgoing, landed, publish_pipelined
from colony.bus.tokens import to_token
from colony.contracts.outbound import OutboundMail
from colony.events import UnknownEvent, UsageRecorded
from colony.outbound.dsn import build_dsn, report_messages
from colony.outbound.dsn_relay import mail_parameters, rcpt_parameters
from colony.outbound.mta_sts import Policy
from colony.outbound.srs import Srs, SrsError, is_srs
from colony.outbound.rules import (NullMx, RecipientResult, Unsendable, check_binary, decide, mail_exchangers,
                                   transfer_options)
from colony.protocols.smtp.client import RemoteReply, Transaction, encode_message
from colony.outbound.signing import DkimKey, current_key, from_json, sign
from colony.dns import make_resolver
from colony.netaddr import NetworkList
from colony.queue import Done, Job, QueueMetrics, QueuePolicy, QueueRunner, Reject, Retry
from colony.settings import Settings
from colony.telemetry import inject_headers

from colony_edge.mta_sts import MtaSts, verified_tls_context
from colony_edge.smtp_client import SmtpClient, SmtpError, opportunistic_context

log = logging.getLogger("colony.edge.outbound")

_MAX_UNSENT = 10_000   # unconfirmed USAGE events kept for a resend; older ones are dropped
# What one delivery attempt tries, whatever the destination publishes: a domain may list
# thousands of MX hosts (or addresses) that never answer, and trying each in turn held the
# job and the destination's slot for hours (2,000 hosts x 30 s).  Postfix stops at 5
# addresses (smtp_mx_address_limit), Exim at 5 hosts (hosts_max_try); the rest waits for
# the next attempt, when equal preferences are shuffled again.
MAX_MX_HOSTS = 10       # MX hosts whose addresses are looked up
MAX_MX_ADDRESSES = 5    # addresses connected to
# In a delivery marker (a JSON list of the addresses delivered), the entry of a delivered
# address whose server took the DSN parameters, beside the address itself.  No mailbox
# starts so (":" is not in an unquoted local part), so an edge that does not know these
# entries reads them as addresses of no recipient, and skips nothing it should not.
_DSN_PASSED = "dsn-passed:"


class OutboundMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.recipients = Counter("colony_outbound_recipients", "Outbound recipients by result: delivered, "
                                  "deferred, failed.", ["result"], registry=registry)
        self.dsns = Counter("colony_outbound_dsns", "Delivery status notifications sent, by action.", ["action"],
                            registry=registry)
        self.connections = Counter("colony_outbound_connections", "Outbound SMTP sessions used for a delivery: "
                                   "new, reused (kept open from an earlier one), stale (a kept one found dead).",
                                   ["kind"], registry=registry)
        self.mta_sts = Counter("colony_outbound_mta_sts", "MTA-STS outcomes: tls_verified_<mode>, "
                               "tls_failed_<mode>, mx_not_in_policy.", ["result"], registry=registry)


class _Unreachable(Exception):
    """No MX host of the destination answered (every recipient is deferred with this text)."""


class _Loop(Exception):
    """The MX host greets with our own name: delivering there would send the mail back to
    us (RFC 5321 §5.1 -- Postfix says "mail for ... loops back to myself", 5.4.6)."""


class _Stale(Exception):
    """A kept-open connection failed before the message was sent: try a new one."""


def _policy_key(policy: Policy | None) -> str:
    """Connections are reused only under the policy they were opened (and verified) for."""
    return "" if policy is None or policy.mode == "none" else f"{policy.mode}:{policy.id}"


@dataclass
class _Outcome:
    """What one delivery attempt came to: a result per recipient, the recipients the remote
    server took the message for (to be recorded at once), and a connection to QUIT."""

    results: list[RecipientResult]
    delivered: list[str] = field(default_factory=list)
    quit: _Connection | None = None
    dsn_passed: bool = False   # the server had the DSN parameters: it reports success, not us


@dataclass(eq=False)
class _Connection:
    client: SmtpClient
    host: str
    ip: str
    policy_key: str
    messages: int = 0
    expiry: asyncio.TimerHandle | None = None
    watch: asyncio.Task | None = None   # while idle: ends the connection if the server speaks
    # No mail transaction open: greeted, or the last one ended with the reply to its data
    # (RFC 5321 4.1.1.4: that clears the server's buffers) or a refused MAIL.
    clean: bool = True


class ConnectionPool:
    """Idle outbound SMTP sessions by destination domain, kept ``idle_timeout`` seconds for
    the next message to the same destination, each for at most ``max_messages`` messages.

    A connection is only ever in the pool or held by the one job that took it, and a job
    takes one only while it holds its destination's concurrency slot, so connections per
    destination stay within ``outbound_destination_concurrency``.  At most ``limit`` idle
    connections in all (beyond it, a finished connection is closed), so a queue spread over
    many destinations does not hold a socket per destination.  An idle connection that
    times out is closed without QUIT (a timer cannot wait for the reply); one that reaches
    its message cap says QUIT.  While idle a connection is watched: if the server sends
    anything (a reply nobody asked for, which the next transaction would take for its own)
    or closes it, it is closed and dropped at once.
    """

    def __init__(self, idle_timeout: float, max_messages: int, limit: int) -> None:
        self.idle_timeout, self.max_messages, self.limit = idle_timeout, max_messages, limit
        self._idle: dict[str, list[_Connection]] = {}
        self._count = 0

    async def take(self, destination: str, policy_key: str) -> _Connection | None:
        idle = self._idle.get(destination)
        while idle:
            connection = idle.pop()
            self._count -= 1
            if not idle:
                del self._idle[destination]
            watch = connection.watch
            _stop_idling(connection)
            if watch is not None:
                # Its read must be over before the transaction reads (a stream takes one
                # reader at a time); wait() neither raises nor passes the cancellation on.
                await asyncio.wait([watch])
            if connection.policy_key == policy_key and connection.client.is_connected:
                return connection
            connection.client.close()
            idle = self._idle.get(destination)
        return None

    def keep(self, destination: str, connection: _Connection) -> bool:
        """Keep ``connection`` for the next message to ``destination``; False when it is not
        kept (reuse off, at its message cap, the pool full): the caller says QUIT (``quit``)."""
        if self.idle_timeout <= 0 or connection.messages >= self.max_messages or self._count >= self.limit:
            return False
        loop = asyncio.get_running_loop()
        connection.expiry = loop.call_later(self.idle_timeout, self._expire, destination, connection)
        connection.watch = loop.create_task(self._watch(destination, connection))
        self._idle.setdefault(destination, []).append(connection)
        self._count += 1
        return True

    async def quit(self, connection: _Connection) -> None:
        try:
            await connection.client.quit()
        except (SmtpError, OSError):
            connection.client.close()

    async def _watch(self, destination: str, connection: _Connection) -> None:
        """A server that speaks while nothing was asked (a reply too many, sent late) or
        closes the idle session: the session ends now, or the next transaction on it would
        take that reply for its own.  Never raises: ``idle`` does not, and the task is
        cancelled when the connection is taken or closed."""
        await connection.client.idle()
        connection.watch = None
        self._expire(destination, connection)

    def _expire(self, destination: str, connection: _Connection) -> None:
        idle = self._idle.get(destination)
        if idle and connection in idle:
            idle.remove(connection)
            self._count -= 1
            if not idle:
                del self._idle[destination]
        _stop_idling(connection)
        connection.client.close()

    def idle(self, destination: str) -> int:
        return len(self._idle.get(destination, ()))

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                _stop_idling(connection)
                connection.client.close()
        self._idle.clear()
        self._count = 0


def _stop_idling(connection: _Connection) -> None:
    if connection.expiry is not None:
        connection.expiry.cancel()
        connection.expiry = None
    if connection.watch is not None:
        connection.watch.cancel()
        connection.watch = None


class OutboundDelivery:
    def __init__(self, js: JetStreamContext, settings: Settings, node_id: str, hostname: str,
                 resolver: dns.asyncresolver.Resolver, metrics: OutboundMetrics,
                 tracer: trace.Tracer | None = None, srs: Srs | None = None, nc: Client | None = None) -> None:
        self.js, self.settings, self.node_id, self.hostname = js, settings, node_id, hostname
        self.srs = srs   # to send the DSN of a forwarded message straight to its original sender
        self.resolver, self.metrics = resolver, metrics
        if resolver.cache is None:
            # MX/A/AAAA/TXT answers kept for their TTL: without it every message cost three
            # or four queries to the same few destinations (a seventh of the edge's CPU in the
            # outbound benchmark).
            resolver.cache = dns.resolver.LRUCache(10_000)
        self.mta_sts = MtaSts(settings, resolver, js) if settings.mta_sts else None
        self.deny = NetworkList.parse(settings.outbound_deny_networks, "COLONY_OUTBOUND_DENY_NETWORKS")
        self.tls_verified = verified_tls_context(settings)
        self.tls_any = opportunistic_context()
        self.pool = ConnectionPool(settings.outbound_connection_idle, settings.outbound_messages_per_connection,
                                   limit=settings.outbound_concurrency)
        self.key_dir = settings.dkim_key_dir or settings.data_dir / "dkim"
        self.tracer = tracer or trace.get_tracer("colony.edge.outbound")  # the global provider (setup_tracing)
        self._slots: dict[str, asyncio.Semaphore] = {}   # per destination, while in use
        self._users: dict[str, int] = {}
        self._bodies = None
        self._marks = None
        self._key_bucket = None
        self._keys: dict[str, tuple[float, DkimKey | None]] = {}   # domain -> (valid until, key)
        self._usage_counts: dict[tuple[str, str], int] = {}         # (sender domain, account) -> delivered
        self._usage_unsent: list[Outgoing] = []                     # events to send again (bounded)
        # Message ids unique across restarts of the same node id (colony up reuses them).
        self._usage_run, self._usage_flushes = uuid.uuid4().hex[:12], 0
        self.nc = nc

    async def handle(self, job: Job) -> Done | Retry | Reject:
        try:
            mail = OutboundMail.from_bytes(job.data)
        except (UnknownEvent, ValueError) as exc:
            return Reject(f"not an outbound message: {exc}")
        now = datetime.now(UTC)
        if mail.not_before is not None and mail.not_before > now:
            return Retry("backing off", delay=(mail.not_before - now).total_seconds())
        try:
            body = await self._body(mail)
        except LookupError as exc:
            return Reject(str(exc))
        attempt = mail.attempts + job.delivered
        with self.tracer.start_as_current_span("outbound.deliver", attributes={
                "colony.message_id": mail.message_id, "colony.destination": mail.destination,
                "colony.attempt": attempt}) as span:
            # A first delivery of a first generation cannot have been delivered before: no
            # marker read (one bus round trip per message saved).
            first = job.delivered <= 1 and mail.generation == 0
            done_before, passed_before = (set(), set()) if first else await self._delivered_before(mail)
            todo = [r for r in mail.recipients if r.address not in done_before]
            results = [RecipientResult(a, 250, "2.0.0 delivered before a restart", dsn_passed=a in passed_before)
                       for a in done_before if any(r.address == a for r in mail.recipients)]
            if todo:
                everyone = {r.address for r in mail.recipients}
                asked = {r.address for r in mail.recipients if r.notify and "SUCCESS" in r.notify} \
                    if mail.mail_from else set()

                async def delivered(addresses: list[str], dsn_passed: bool) -> None:
                    done = done_before | set(addresses)
                    passed = passed_before | (set(addresses) if dsn_passed else set())
                    # A recipient that asked for NOTIFY=SUCCESS and went to a server without
                    # DSN still has its "relayed" report to come after the delivery: the ack
                    # must wait for it, or a crash in between loses it.  Every recipient taken
                    # and none of those: nothing is left to do for this job (no DSN, no next
                    # generation), so the ack itself records the delivery -- one bus write
                    # instead of a marker and then the ack, and the same window.
                    if done >= everyone and not (asked - passed) and await self._ack_now(job):
                        return
                    await self._mark_delivered(mail, done, passed)
                results += await self._attempt(mail.model_copy(update={"recipients": todo}), body, delivered)
            decision = decide(mail, results, attempt, datetime.now(UTC), self.settings)
            if decision.dsn:
                await self._send_dsn(mail, decision.dsn, body)
            if decision.success:
                # A report of its own (RFC 3461 §5.2.2, Action: relayed), not mixed into a
                # bounce; recipients delivered before a restart are reported again under the
                # same id (a duplicate in the sender's mailbox, or in OUTBOUND's window) --
                # unless the marker says their server took DSN parameters.
                await self._send_dsn(mail, decision.success, body)
            if decision.requeue is not None:
                await self._publish_outbound(decision.requeue)
            if decision.delivered:
                await self._usage(mail, len(decision.delivered))
            span.set_attribute("colony.delivered", len(decision.delivered))
            span.set_attribute("colony.remote_replies", [f"{r.address}: {r.code} {r.text}"[:200] for r in results])
        self.metrics.recipients.labels(result="delivered").inc(len(decision.delivered))
        self.metrics.recipients.labels(result="failed").inc(len(decision.failed))
        self.metrics.recipients.labels(result="deferred").inc(len(decision.deferred))
        log.info("outbound %s to %s (attempt %d): %d delivered, %d failed, %d deferred%s", mail.message_id,
                 mail.destination, attempt, len(decision.delivered), len(decision.failed), len(decision.deferred),
                 f", retry in {decision.retry_after:.0f}s" if decision.retry_after and not decision.requeue else "")
        if decision.finished or decision.requeue is not None:
            return Done()
        return Retry("; ".join(f"{r.address}: {r.code} {r.text}" for r in results)[:500], delay=decision.retry_after)

    # --- exactly once across crashes -------------------------------------------------------

    def _marker_key(self, mail: OutboundMail) -> str:
        return to_token(f"{mail.message_id}/{mail.destination}")

    async def _delivered_before(self, mail: OutboundMail) -> tuple[set[str], set[str]]:
        """Recipients an earlier delivery of this job (an edge that died before its ack, or
        an earlier generation) already handed to the remote server, and those of them whose
        server took the DSN parameters (it reports their success, we do not)."""
        if self._marks is None:
            self._marks = await self.js.key_value(names.BUCKET_OUTBOUND_DELIVERED)
        try:
            entry = await self._marks.get(self._marker_key(mail))
        except KeyNotFoundError:
            return set(), set()
        entries = json.loads(entry.value or b"[]")
        return ({e for e in entries if not e.startswith(_DSN_PASSED)},
                {e[len(_DSN_PASSED):] for e in entries if e.startswith(_DSN_PASSED)})

    async def _ack_now(self, job: Job) -> bool:
        try:
            await job.ack(timeout=self.settings.mail_publish_timeout)
        except Exception as exc:   # not confirmed: the marker records it instead
            log.warning("ack of outbound job %s not confirmed (%r); writing its delivery marker", job.id, exc)
            return False
        return True

    async def _mark_delivered(self, mail: OutboundMail, addresses: set[str], dsn_passed: set[str]) -> None:
        # Written right after the remote 250 and before the ack: only a crash inside this
        # one write can still deliver a recipient twice (RFC 1047's window, made small).
        entries = sorted(addresses) + sorted(_DSN_PASSED + a for a in dsn_passed)
        try:
            if self._marks is None:
                self._marks = await self.js.key_value(names.BUCKET_OUTBOUND_DELIVERED)
            await self._marks.put(self._marker_key(mail), json.dumps(entries).encode())
        except Exception:
            log.exception("delivery marker of %s not written; a crash before the ack would repeat it",
                          mail.message_id)

    # --- delivery -------------------------------------------------------------------------

    async def _attempt(self, mail: OutboundMail, body: bytes, on_delivered) -> list[RecipientResult]:
        """``on_delivered(addresses, dsn_passed)`` is awaited the moment the remote server
        took the message, before anything else (QUIT, the ack) can be interrupted by a crash;
        ``dsn_passed``: that server had the DSN parameters (RFC 3461 §5.2.1).

        The destination's slot is held only for the SMTP exchange: the message is signed
        before it is taken, and a connection that goes back to the pool releases it before
        the delivery is recorded (putting it back and releasing the slot do not wait, so
        no crash window opens between the remote 250 and the record), so the next job to
        the destination uses the session while this one's bus write is under way.  A
        connection that is closed with QUIT keeps the slot until then, after the record."""
        try:
            check_binary(mail, body)
        except Unsendable as exc:
            log.warning("outbound %s to %s not sent: %s", mail.message_id, mail.destination, exc)
            return [RecipientResult(r.address, exc.code, exc.text) for r in mail.recipients]
        policy = await self.mta_sts.policy(mail.destination) if self.mta_sts is not None else None
        # Signed up front, outside the slot: a DNS failure then costs a signature it did not
        # need, which is rare next to every delivery holding the slot for one.
        message = encode_message(await self._signed(mail, body))
        slot = self._slots.setdefault(mail.destination, asyncio.Semaphore(self.settings.outbound_destination_concurrency))
        self._users[mail.destination] = self._users.get(mail.destination, 0) + 1
        try:
            async with slot:
                outcome = await self._in_slot(mail, message, policy)
                if outcome.quit is not None:
                    if outcome.delivered:
                        await on_delivered(outcome.delivered, outcome.dsn_passed)
                        outcome.delivered = []
                    await self.pool.quit(outcome.quit)
        finally:
            # Bounded: a destination's semaphore lives only while jobs for it run or wait.
            self._users[mail.destination] -= 1
            if not self._users[mail.destination]:
                del self._users[mail.destination]
                self._slots.pop(mail.destination, None)
        if outcome.delivered:
            await on_delivered(outcome.delivered, outcome.dsn_passed)
        return outcome.results

    async def _in_slot(self, mail: OutboundMail, message: bytes, policy: Policy | None) -> _Outcome:
        addresses = [r.address for r in mail.recipients]
        # A connection the last delivery to this destination left open (same policy, so
        # an MX host the policy allows).  Taken before the MX lookup, which only a new
        # connection needs: a kept session is at most outbound_connection_idle old, and
        # the lookup cost a seventieth of the edge's CPU per message.
        while (cached := await self.pool.take(mail.destination, _policy_key(policy))) is not None:
            try:
                return await self._transaction(cached, mail, message, reused=True)
            except _Stale as exc:
                log.info("cached connection to %s [%s] is dead (%s); using a new one", cached.host,
                         cached.ip, exc)
                self.metrics.connections.labels(kind="stale").inc()
        try:
            hosts = await self._exchangers(mail.destination)
        except NullMx:
            return _Outcome([RecipientResult(a, 556, "5.1.10 the domain accepts no mail (null MX)") for a in addresses])
        except _Permanent as exc:
            return _Outcome([RecipientResult(a, 550, f"5.1.2 {exc}") for a in addresses])
        except (_Unreachable, dns.exception.DNSException) as exc:
            return _Outcome([RecipientResult(a, 0, f"DNS lookup failed: {exc}") for a in addresses])
        if policy is not None and policy.mode != "none":
            outside = [h for h in hosts if not policy.allows(h)]
            if outside:
                self.metrics.mta_sts.labels(result="mx_not_in_policy").inc()
                log.warning("MTA-STS (%s) of %s does not list MX %s%s", policy.mode, mail.destination,
                            ", ".join(outside), "; not used" if policy.enforced else "")
                if policy.enforced:
                    hosts = [h for h in hosts if policy.allows(h)]
        last = ("no MX host matches the MTA-STS policy" if policy is not None and policy.enforced and not hosts
                else "no mail exchanger")
        # A permanent failure only when every address was one we must not use (in
        # outbound_deny_networks, or ourselves): anything that may pass (a timeout, a DNS
        # failure) keeps the mail queued.
        refused, transient = "", not hosts
        tries = 0
        for host in hosts[:MAX_MX_HOSTS]:
            if tries >= MAX_MX_ADDRESSES:
                break
            try:
                ips = await self._addresses(host)
            except (_Unreachable, _Permanent, dns.exception.DNSException) as exc:
                last, transient = f"{host}: {exc}", True
                continue
            for ip in ips:
                if tries >= MAX_MX_ADDRESSES:
                    last, transient = f"{last}; no more than {MAX_MX_ADDRESSES} addresses tried per attempt", True
                    break
                if ip in self.deny:
                    # The domain's owner chose this address: never connect there.
                    log.warning("outbound to %s: MX %s [%s] is in outbound_deny_networks; not used",
                                mail.destination, host, ip)
                    refused = refused or f"5.4.4 {host} [{ip}] is in outbound_deny_networks (unable to route)"
                    continue
                tries += 1
                try:
                    connection = await self._open(host, ip, policy, mail.destination)
                    return await self._transaction(connection, mail, message, reused=False)
                except _Loop as exc:
                    log.warning("outbound to %s: %s", mail.destination, exc)
                    refused = f"5.4.6 {exc}"
                except _Unreachable as exc:
                    last, transient = f"{host} [{ip}]: {exc}", True
        if refused and not transient:
            return _Outcome([RecipientResult(a, 554, refused) for a in addresses])
        return _Outcome([RecipientResult(a, 0, last) for a in addresses])

    async def _exchangers(self, domain: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(domain, "MX")
            records = [(r.preference, r.exchange.to_text()) for r in answer]
        except dns.resolver.NXDOMAIN:
            raise _Permanent(f"{domain}: no such domain")
        except dns.resolver.NoAnswer:
            records = []
        return mail_exchangers(records, domain)

    async def _addresses(self, host: str) -> list[str]:
        ips: list[str] = []
        for kind in ("A", "AAAA"):
            try:
                ips += [r.to_text() for r in await self.resolver.resolve(host, kind)]
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
        if not ips:
            raise _Unreachable(f"{host} has no address")
        return ips

    async def _open(self, host: str, ip: str, policy: Policy | None, destination: str = "") -> _Connection:
        """A new session with ``host`` at ``ip``, greeted and EHLO'd, with STARTTLS: verified
        for the host name under an MTA-STS policy (enforce: or not at all; testing: else
        opportunistic, and logged), opportunistic otherwise.  Raises _Unreachable."""
        verify = policy is not None and policy.mode in ("enforce", "testing")
        try:
            client = await self._connect(ip)
            if _greets_as(client, self.hostname):
                client.close()
                raise _Loop(f"mail for {destination} loops back to myself ({host} [{ip}] greets as {self.hostname})")
            if not verify:
                client = await self._opportunistic(client, host, ip)
            else:
                try:
                    await client.starttls(self.tls_verified, server_hostname=host)   # SmtpError if not offered
                except (ssl.SSLError, ssl.CertificateError, SmtpError) as exc:
                    client.close()
                    self.metrics.mta_sts.labels(result=f"tls_failed_{policy.mode}").inc()
                    rua = await self.mta_sts.report_addresses(destination) if self.mta_sts else ()
                    log.warning("MTA-STS %s policy %s of %s: no verified TLS with %s (%s); %s%s", policy.mode,
                                policy.id, destination, host, exc,
                                "not delivering there" if policy.enforced else "delivering anyway",
                                f"; the domain asks for TLS reports at {', '.join(rua)} (TLSRPT, not sent)"
                                if rua else "")
                    if policy.enforced:
                        raise _Unreachable(f"MTA-STS: no verified TLS with {host}: {exc}")
                    client = await self._opportunistic(await self._connect(ip), host, ip)
                else:
                    self.metrics.mta_sts.labels(result=f"tls_verified_{policy.mode}").inc()
        except (SmtpError, OSError) as exc:   # ssl.SSLError is an OSError
            raise _Unreachable(str(exc) or type(exc).__name__)
        self.metrics.connections.labels(kind="new").inc()
        return _Connection(client, host, ip, _policy_key(policy))

    async def _connect(self, ip: str) -> SmtpClient:
        return await SmtpClient.connect(ip, self.settings.outbound_smtp_port, local_hostname=self.hostname,
                                        timeout=self.settings.outbound_connect_timeout)

    async def _opportunistic(self, client: SmtpClient, host: str, ip: str) -> SmtpClient:
        """STARTTLS when offered, else -- and when it fails -- plaintext (RFC 7435: with no
        policy asking for TLS, an MX whose TLS is broken still gets its mail, as Postfix's
        "may" level does; deferring would end in a bounce days later).  A refusal (RFC 3207
        §4: 454) leaves the session as it was, so it goes on in the clear; after a failed
        handshake the session is lost, so a new connection goes without STARTTLS."""
        if not client.supports("STARTTLS"):
            return client
        try:
            await client.starttls(self.tls_any)
            return client
        except SmtpError as exc:
            if exc.reply is not None and exc.reply.code == 421:   # closing: not now, in any form
                client.close()
                raise
            if exc.reply is not None and not client.tls and client.is_connected and client.in_step:
                log.info("STARTTLS refused by %s [%s] (%s); delivering in plaintext", host, ip, exc)
                return client
            failure: Exception = exc
        except (ssl.SSLError, OSError) as exc:   # ssl.CertificateError is an SSLError
            failure = exc
        except BaseException:
            client.close()
            raise
        client.close()
        log.info("TLS with %s [%s] failed (%s); delivering in plaintext on a new connection", host, ip,
                 str(failure) or type(failure).__name__)
        return await self._connect(ip)

    async def _transaction(self, connection: _Connection, mail: OutboundMail, message: bytes,
                           reused: bool) -> _Outcome:
        """One mail transaction on ``connection`` (``message`` already encoded for DATA).
        Afterwards the connection is back in the pool (healthy and under its message cap),
        closed, or -- at its cap or past the pool's limit -- handed to the caller for QUIT.
        On a reused connection a failure before the message was sent raises _Stale: nothing
        was delivered, so the caller may try again on a new connection without a duplicate."""
        client, host = connection.client, connection.host
        addresses = [r.address for r in mail.recipients]
        healthy = False
        outcome = _Outcome([])
        try:
            if reused:
                self.metrics.connections.labels(kind="reused").inc()
                if not connection.clean:
                    # A transaction left open (every RCPT refused): RSET ends it.  After a
                    # finished one RSET would be a NOOP (RFC 5321 4.1.1.5) and a round trip
                    # per message; a dead session shows at MAIL instead, still before DATA.
                    await client.rset()
            try:
                options = transfer_options(mail, message, client.supports, host)
            except Unsendable as exc:
                # Nothing was sent: the session is as it was, good for the next message.
                log.warning("outbound %s to %s not sent to %s [%s]: %s", mail.message_id, mail.destination, host,
                            connection.ip, exc)
                healthy = True
                outcome = _Outcome([RecipientResult(a, exc.code, exc.text) for a in addresses])
                return outcome
            # RFC 3461 §5.2.1: a server that advertises DSN gets the sender's DSN requests
            # and reports success itself; one that does not is reported "relayed" (rules).
            dsn = client.supports("DSN")
            rcpt_options = None
            if dsn:
                rcpt_options = [rcpt_parameters(r, "SMTPUTF8" in options) for r in mail.recipients]
                options += mail_parameters(mail)
            connection.clean = False
            tx = await client.send(mail.mail_from, addresses, message, options, encoded=True,
                                   rcpt_options=rcpt_options)
            if tx.closing is not None and reused and not tx.message_sent:
                # 421 before the message went out: the kept session was closing (the MX timed
                # it out), nothing was handed over; a new connection takes the same attempt.
                raise _Stale(f"{tx.closing.code} {tx.closing.text}")
            connection.clean = not tx.left_open
            healthy = tx.closing is None and client.in_step
            outcome = _Outcome([RecipientResult(a, reply.code, reply.text, host, dsn_passed=dsn)
                                for a, reply in _replies(tx)], tx.delivered, dsn_passed=dsn)
        except SmtpError as exc:
            tx = exc.transaction
            if reused and (tx is None or not tx.message_sent):
                raise _Stale(str(exc) or type(exc).__name__)
            # Refusals already heard stand; the rest is deferred with what went wrong.
            refused = {} if tx is None or tx.mail is None or not tx.mail.positive else {
                a: reply for a, reply in zip(tx.recipients, tx.rcpts) if reply is not None and not reply.positive}
            outcome = _Outcome([RecipientResult(a, refused[a].code, refused[a].text, host) if a in refused
                                else RecipientResult(a, 0, f"{host}: {exc}", host) for a in addresses])
        finally:
            connection.messages += 1
            if not (healthy and client.is_connected):
                client.close()
            elif not self.pool.keep(mail.destination, connection):
                outcome.quit = connection
        return outcome

    async def _key(self, domain: str) -> DkimKey | None:
        """The domain's signing key: the ``dkim_keys`` bucket, else ``dkim_key_dir``; cached
        for a minute (a rotation reaches every edge within that), at most 10,000 domains."""
        now = time.monotonic()
        cached = self._keys.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = None
        try:
            if self._key_bucket is None:
                self._key_bucket = await self.js.key_value(names.BUCKET_DKIM_KEYS)
            key = from_json((await self._key_bucket.get(to_token(domain))).value)
        except KeyNotFoundError:
            pass
        except Exception:  # the bucket unreachable: sign from files if there are any
            log.exception("DKIM key of %s not readable from the bus", domain)
        if key is None:
            key = current_key(self.key_dir, domain)
        if len(self._keys) >= 10_000:
            self._keys.clear()
        self._keys[domain] = (now + 60.0, key)
        return key

    async def _signed(self, mail: OutboundMail, body: bytes) -> bytes:
        if not mail.sign_domain:
            return body
        key = await self._key(mail.sign_domain)
        if key is None:
            return body
        try:
            return sign(body, key) + body
        except Exception:  # dkimpy raises its own errors for odd messages; send unsigned rather than never
            log.exception("DKIM signing of %s for %s failed; sending unsigned", mail.message_id, mail.sign_domain)
            return body

    # --- what the decision asks for -------------------------------------------------------

    async def _body(self, mail: OutboundMail) -> bytes:
        if mail.body is not None:
            return mail.body
        ref = mail.body_ref
        if self._bodies is None:
            self._bodies = await self.js.object_store(ref.bucket)
        try:
            result = await self._bodies.get(ref.name)
        except Exception as exc:  # nats-py's ObjectNotFoundError and friends
            raise LookupError(f"body {ref.name} of {mail.message_id} is gone: {exc!r}") from exc
        return result.data

    async def _send_dsn(self, mail: OutboundMail, failures, original: bytes) -> None:
        report = build_dsn(mail, failures, original, self.hostname, datetime.now(UTC))
        action = failures[0].action
        suffix = f"dsn-{mail.generation}-{action}"
        bounce_to = mail.mail_from
        if self.srs is not None and is_srs(bounce_to):
            # Forwarded mail: the DSN goes to the original sender directly, not through our
            # own MX and back (the SRS address is ours; reversing it here is the same step).
            try:
                bounce_to = self.srs.reverse(bounce_to, time.time())
            except SrsError as exc:
                log.warning("DSN for %s: SRS sender %s not reversed (%s); sending to it as it is",
                            mail.message_id, bounce_to, exc)
        if mail.sender_local:
            # Into the mailbox of the account that submitted it: the envelope sender may be
            # one of its aliases (or an address of a domain alias), which no mail store holds
            # as an account -- a report addressed to it was rejected to DEAD_LETTERS.
            mailboxes, remote = [(mail.account or mail.mail_from).lower()], []
        else:
            mailboxes, remote = [], [bounce_to]
        [(subject, item)] = report_messages(f"{mail.message_id}.{suffix}", report, mailboxes=mailboxes, remote=remote,
                                            original=mail.mail_from, region=self.settings.region, node_id=self.node_id)
        await self.js.publish(subject, item.encode(), headers={**inject_headers(), "Nats-Msg-Id": item.msg_id()},
                              timeout=self.settings.mail_publish_timeout)
        self.metrics.dsns.labels(action=action).inc()
        log.info("DSN (%s) for %s to %s: %s", action, mail.message_id, mail.mail_from,
                 ", ".join(f"{f.recipient.address} {f.status}" for f in failures))

    async def _publish_outbound(self, mail: OutboundMail) -> None:
        headers = {**inject_headers(), "Nats-Msg-Id": mail.msg_id()}
        await self.js.publish(names.outbound_subject(mail.destination), mail.encode(), headers=headers,
                              timeout=self.settings.mail_publish_timeout)

    async def _usage(self, mail: OutboundMail, delivered: int) -> None:
        """Counted here, published by ``flush_usage`` (every ``usage_flush_interval``): one
        USAGE event per message cost the admin API and its projector more CPU (each folds
        every event into the read model) than the edge spent delivering the message."""
        sender_domain = (mail.account or mail.mail_from).rpartition("@")[2].lower()
        if sender_domain:
            key = (sender_domain, mail.account)
            self._usage_counts[key] = self._usage_counts.get(key, 0) + delivered

    async def flush_usage(self) -> None:
        """One ``messages_out`` event per (domain, account) for what was delivered since the
        last flush.  A crash loses at most one interval of counts (never mail), as the mail
        store's metering does.

        A flush's events go out pipelined (all sent, one wait for their acks): awaited one
        after another, each after the previous one's fsync, they reached USAGE apart and the
        projector applied nearly each as a SQL transaction of its own (in the outbound
        benchmark the projector then spent more CPU per message than the queue's bus work).
        An event the bus did not confirm is kept with its ``Nats-Msg-Id`` and sent again
        first at the next flush: USAGE's duplicate window makes a resend of one that had
        landed count once (merged back into the counts it would count twice).  At most
        ``_MAX_UNSENT`` wait, so memory stays bounded while the bus is away."""
        counts, self._usage_counts = self._usage_counts, {}
        batch, self._usage_unsent = self._usage_unsent, []
        self._usage_flushes += 1
        for i, ((domain, account), amount) in enumerate(counts.items()):
            event = UsageRecorded(domain=domain, account=account or None, metric="messages_out", amount=amount,
                                  source=self.node_id)
            msg_id = f"usage/{self.node_id}/{self._usage_run}/{self._usage_flushes}/{i}"
            batch.append((names.usage_subject(domain), event.encode(), {"Nats-Msg-Id": msg_id}))
        if not batch:
            return
        try:
            answers = await self._publish_many(batch)
        except Exception as exc:  # metering must never turn a delivery into a retry (a duplicate)
            log.warning("USAGE messages_out not recorded yet (%d events): %r", len(batch), exc)
            answers = [None] * len(batch)
        failed = [msg for msg, answer in zip(batch, answers, strict=True) if not landed(answer)]
        if failed:
            log.warning("USAGE messages_out: %d of %d events not confirmed; sent again with the next flush",
                        len(failed), len(batch))
            if len(failed) > _MAX_UNSENT:
                log.warning("USAGE messages_out: %d unconfirmed events dropped (more than %d waiting)",
                            len(failed) - _MAX_UNSENT, _MAX_UNSENT)
            self._usage_unsent = failed[-_MAX_UNSENT:]

    async def _publish_many(self, batch: list[Outgoing]) -> list[dict | None]:
        if self.nc is not None:
            return await publish_pipelined(self.nc, batch, self.settings.mail_publish_timeout)
        answers: list[dict | None] = []   # without the connection (tests that pass only js): in turn
        for subject, payload, headers in batch:
            try:
                ack = await self.js.publish(subject, payload, headers=headers,
                                            timeout=self.settings.mail_publish_timeout)
                answers.append({"stream": ack.stream, "seq": ack.seq})
            except Exception:
                answers.append(None)
        return answers


class _Permanent(Exception):
    """The destination cannot exist (NXDOMAIN): a permanent failure."""


def _greets_as(client: SmtpClient, hostname: str) -> bool:
    """The server's greeting names ``hostname`` (our own: every edge greets with it)."""
    if client.greeting is None or not hostname:
        return False
    words = client.greeting.text.split(None, 1)
    return bool(words) and words[0].rstrip(".").lower() == hostname.rstrip(".").lower()


def _replies(tx: Transaction) -> list[tuple[str, RemoteReply]]:
    """What the remote server said about each recipient: a refused MAIL for all of them
    (in a pipelined group the RCPTs' and DATA's 503s would only echo it); else its RCPT
    reply if refused, the reply to DATA if that refused, the reply to the message's end; a
    421 for whatever it cut short."""
    cut = tx.closing or RemoteReply(421, "4.4.2 the session ended")
    if tx.mail is None or not tx.mail.positive:
        return [(a, tx.mail or cut) for a in tx.recipients]
    if tx.data is not None and tx.data.code != 354:
        after = tx.data
    else:
        after = tx.final or cut
    return [(a, after if reply is not None and reply.positive else reply or cut)
            for a, reply in zip(tx.recipients, tx.rcpts)]


def outbound_policy(settings: Settings) -> QueuePolicy:
    """The runner's policy: expiry, not ``max_deliver``, ends a message's life, so the
    deliveries allowed are those the back-off schedule needs to reach ``outbound_max_age``
    (plus slack for redeliveries after a crash); a handler that keeps raising still ends in
    DEAD_LETTERS."""
    doublings = math.ceil(math.log2(max(settings.outbound_retry_max / settings.outbound_retry_initial, 1))) + 1
    attempts = doublings + math.ceil(settings.outbound_max_age / settings.outbound_retry_max) + 10
    return QueuePolicy.from_settings(settings, max_deliver=attempts, concurrency=settings.outbound_concurrency,
                                     backoff=(settings.outbound_retry_initial,))


def outbound_runner(nc: Client, delivery: OutboundDelivery, settings: Settings, queue_metrics) -> QueueRunner:
    return QueueRunner(nc, stream=names.STREAM_OUTBOUND, durable=names.OUTBOUND_CONSUMER,
                       filter_subject=names.SUBJECTS_OUTBOUND, handler=delivery.handle,
                       policy=outbound_policy(settings), metrics=queue_metrics, name="outbound",
                       tracer=delivery.tracer)


async def start_outbound(runtime, settings: Settings, hostname: str, srs: Srs | None = None) -> QueueRunner:
    """The edge's outbound runner, started on the runtime's task owner (stop it with ``stop()``)."""
    js = runtime.nc.jetstream()
    delivery = OutboundDelivery(js, settings, runtime.node_id, hostname, make_resolver(settings),
                                OutboundMetrics(runtime.metrics.registry), srs=srs, nc=runtime.nc)
    runner = outbound_runner(runtime.nc, delivery, settings, runtime.metrics.once(QueueMetrics))
    await runner.start(runtime.spawn)

    async def meter() -> None:
        try:
            while True:
                await asyncio.sleep(settings.usage_flush_interval)
                await delivery.flush_usage()
        finally:   # stopping: publish what the last interval counted, close kept connections
            delivery.pool.close()
            await asyncio.wait_for(delivery.flush_usage(), settings.mail_publish_timeout)
    runtime.spawn("outbound-usage", meter)
    return runner


__all__ = ["OutboundDelivery", "OutboundMetrics", "outbound_policy", "outbound_runner", "start_outbound"]
