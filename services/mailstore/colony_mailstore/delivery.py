"""Delivery of inbound mail: MAIL jobs in, messages fsynced into the owners' INBOXes out.

For each recipient of an ``InboundMail`` the router decides where the write happens:

* we hold the account's lease: store it here;
* nobody holds it: the READY mailstore rendezvous hashing picks takes it -- if that is us we
  acquire the lease, else we forward to it (it acquires on receipt);
* another mailstore holds it: forward to it on its delivery subject (request/reply); *no
  responders* proves it is gone, so we take the account over at once; a time-out (paused,
  partitioned) is retried until the lease has stayed unrenewed for a whole lease length, or
  the server expired it, and then the account is taken.

The job is acknowledged (by the queue runner) only when every recipient's copy is fsynced,
here or at its owner.  A redelivery finds the copies already stored by their dedupe key
(``<message id>/<recipient>``) and stores nothing twice.  Mail that can never be stored
(undecodable, or an account over quota) is rejected to the dead-letter stream, where an
operator can replay it.

Forwarded delivery, subject ``names.mailstore_deliver_subject(owner)``::

    request  headers  Colony-Recipients: ["bob@example.com"]   (JSON list)
                      Colony-Job-Id:     01JD…/example_2ecom
                      traceparent:       00-…                  (the job's trace)
             payload  the InboundMail exactly as the MAIL stream carried it
    reply    {"stored": ["bob@example.com"], "retry": {"carol@example.com": "owned by mailstore-3"},
              "rejected": {"dave@example.com": "over quota: …"}, "held": []}

A recipient whose store's file system refuses writes (full, read-only) is *held*, not failed
(``storage_health``): the job is redelivered until the storage is back, never dead-lettered
for it, and while the storage is down this store fetches no MAIL.

Recipients that asked for NOTIFY=SUCCESS get their "delivered" report (``success_reports``)
once no recipient of the job waits for a retry any more, before the job is acknowledged.
An account with a vacation answers a newly stored message (``auto_replies``); a redelivery
the store recognises as already stored answers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import UTC, datetime

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import ObjectDeletedError, ObjectNotFoundError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import trace
from pydantic import BaseModel, Field

from colony.bus import names
from colony.cluster.membership import NodeState
from colony.cluster.ownership import AccountOwnership, MailstoreMembers, place
from colony.cluster.view import read_nodes
from colony.contracts import account_export as X
from colony.contracts.handoff import load_secret
from colony.contracts.mail import CROSS_REGION_MAX_BYTES, InboundMail
from colony.outbound.dsn import delivered_reports, store_failed_reports
from colony.events import UnknownEvent, decode
from colony.queue import Job, Reject, Retry
from colony.settings import Role, Settings
from colony.telemetry import extract_context, inject_headers
from colony_mailstore.accounts import AccountManager, NotOwner, OverQuota
from colony_mailstore.auto_replies import AutoReplies
from colony_mailstore.metrics import MailstoreMetrics
from colony_mailstore.storage_health import HELD_DELAY, StorageHealth, storage_failure
from colony_mailstore.success_reports import ReportNotSent, SuccessReports
from colony_mailstore.usage import UsageMeter

log = logging.getLogger("colony.mailstore.delivery")
tracer = trace.get_tracer("colony.mailstore")

H_RECIPIENTS = "Colony-Recipients"
H_JOB_ID = "Colony-Job-Id"

STORED, RETRY, REJECTED = "stored", "retry", "rejected"
HELD = "held"   # a retry because the storage refuses writes (storage_health): never dead-lettered
OVER_QUOTA, NO_ACCOUNT = "over quota", "no such account"    # how a REJECTED reason begins

LARGE_BODIES_AT_ONCE = 4  # object-store bodies in memory per instance (see handle)
REMOTE_TIMEOUT = 5.0      # seconds for a read of another region's node records


def _failure_status(why: str) -> tuple[str, str]:
    """The RFC 3463 status and the diagnostic a sender's DSN gives for a recipient rejected
    for ``why`` (the reason stays in the dead letter; the sender is told what kind it is)."""
    if why.startswith(OVER_QUOTA):
        return "5.2.2", "x-colony; mailbox full"
    if why.startswith(NO_ACCOUNT):
        return "5.1.1", "x-colony; no such mailbox"
    return "5.0.0", "x-colony; not delivered"


class PoisonBody(Exception):
    """The message's body can never be read (gone, or not what the edge stored)."""


class BodyUnavailable(Exception):
    """The message's body is in another region that cannot be reached now: retry later."""


class ForwardReply(BaseModel):
    """The owner's answer to a forwarded delivery (wire form in the module docstring)."""

    stored: list[str] = Field(default_factory=list)
    retry: dict[str, str] = Field(default_factory=dict)
    rejected: dict[str, str] = Field(default_factory=dict)
    # Those of ``retry`` that wait for the owner's storage (a full disk): the sender holds the
    # job rather than spend its deliveries.  A sender that predates the field retries them.
    held: list[str] = Field(default_factory=list)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class Delivery:
    def __init__(self, nc: Client, node_id: str, settings: Settings, accounts: AccountManager,
                 ownership: AccountOwnership, members: MailstoreMembers, metrics: MailstoreMetrics,
                 usage: UsageMeter) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.node_id = node_id
        self.settings = settings
        self.accounts = accounts
        self.ownership = ownership
        self.members = members
        self.metrics = metrics
        self.usage = usage
        self._large = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)
        self._secret: bytes | None = None   # the cluster secret, read when a body is in another region
        self.accepting = True
        self.forwards_in_flight = 0
        self.storage = StorageHealth(settings.shared_storage, node_id)
        self.reports = SuccessReports(nc, node_id, settings, accounts.directory)
        self.auto_replies = AutoReplies(accounts, self.reports, metrics, authserv_id=settings.authserv_id)

    # --- the MAIL job ----------------------------------------------------------------------

    async def handle(self, job: Job) -> Retry | Reject | None:
        try:
            mail = decode(job.data)
        except (UnknownEvent, ValueError) as exc:
            return Reject(f"not an InboundMail: {str(exc)[:200]}")
        if not isinstance(mail, InboundMail):
            return Reject(f"not an InboundMail: {mail.type}")
        recipients = list(dict.fromkeys(r.mailbox.lower() for r in mail.recipients))
        if self.storage.down:
            # Fetched through a poll opened before the store paused: hand it back untried.
            return Retry(f"storage unavailable: {self.storage.reason}", delay=HELD_DELAY, held=True)
        target = await self._moving_to(mail.domain)
        if target is not None:
            return await self._send_on(mail, recipients, target, job.headers, job.sequence)
        # Large bodies (up to 64 MB each) are held in memory while they are stored: only a
        # few at a time, whatever the delivery concurrency.
        async with self._large if mail.body_ref is not None else contextlib.nullcontext():
            try:
                body = await self._body(mail)
            except PoisonBody as exc:
                return Reject(str(exc))
            except BodyUnavailable as exc:
                return Retry(str(exc), delay=5.0)
            results = await self.deliver(mail, job.data, body, recipients, job.id, job.headers, may_forward=True)
            rejected = {a: why for a, (status, why) in results.items() if status == REJECTED}
            retry = {a: why for a, (status, why) in results.items() if status == RETRY}
            held = {a: why for a, (status, why) in results.items() if status == HELD}
            if not retry and not held:
                # Reported only once the job is settled: the recipients still to retry would
                # otherwise be reported by a later delivery under another id, and those
                # stored now reported again with them.
                reports = delivered_reports(mail, (a for a, (status, _) in results.items() if status == STORED))
                # The edge answered 250 for the rejected ones: without a report the sender
                # would never learn that they were not delivered (RFC 5321 §6.1).
                failures = store_failed_reports(mail, {a: _failure_status(why) for a, why in rejected.items()})
                for batch in (reports, failures):
                    if batch:
                        try:
                            self.metrics.dsns.inc(await self.reports.send(mail, batch, body))
                        except ReportNotSent as exc:
                            return Retry(str(exc), delay=5.0)
        if held:
            # A storage that refuses writes outweighs the rest: the job waits for it.
            return Retry("; ".join(f"{a}: {w}" for a, w in list({**held, **retry}.items())[:3]),
                         delay=HELD_DELAY, held=True)
        if retry:
            # Owners paused or busy: a short, fixed delay, so a lapsed lease is noticed soon.
            return Retry("; ".join(f"{a}: {w}" for a, w in list(retry.items())[:3]), delay=1.0)
        if rejected:
            return Reject("; ".join(f"{a}: {w}" for a, w in list(rejected.items())[:3]))
        self.metrics.latency.observe(max(0.0, (datetime.now(UTC) - mail.at).total_seconds()))
        return None

    async def _moving_to(self, domain: str) -> str | None:
        """The region a domain's new mail goes to when that is another region of the super
        cluster (``DomainInfo.mail_region``: a moving domain's target from ``routing`` on, else
        its home); None to store it here.  Not only while the move is under way: mail accepted
        in another region before its edge saw ``routing`` is sourced into this region's MAIL
        after a delay of its own (a cross-region source can take seconds to restart, a cut link
        longer), so it can reach this store after ``done``, when the domain is plainly homed in
        the target and this region's copy has been removed; stored here it would be lost.  A
        region that is not one of ``regions`` (a single-region cluster keeping a domain's
        ``home_region`` setting) is never sent to unless the domain is moving there: nobody
        would consume it."""
        entry = await self.accounts.directory.domain(domain)
        if entry is None:
            return None
        info = entry.info()
        region = info.mail_region
        if region in ("", self.settings.region):
            return None
        if info.move_phase is None and region not in self.settings.region_list:
            return None
        return region

    async def _send_on(self, mail: InboundMail, recipients: list[str], target: str,
                       job_headers: dict[str, str] | None, sequence: int) -> Retry | Reject | None:
        """Mail for a domain moving (or moved) to ``target`` that still reached this region (an
        edge whose directory had not seen ``routing`` yet, or a redelivery): stored here it
        could miss the move's last pass or be deleted with the source's copy, so it goes to
        the target region's MAIL as an edge would have sent it, body inline (object stores are
        region-local), under a message id of its own that a redelivered job repeats (the
        edge's id is still in a duplicate window on the way: ``sent_on_msg_id``; and this
        job's own place, ``sequence`` in this region's MAIL, is part of it: a copy that bounced
        back here while the regions' directories disagreed about the move is a new job and
        must not be dropped as a duplicate of its first sending on).  A body too
        large for that stays in this region's object store and goes as a ``body_ref`` naming
        this region, which the target's store fetches from here over the inner listener: kept
        here instead, it would miss the move's last copy pass if it came after it, or be
        removed with this region's copy."""
        if mail.body_ref is not None and mail.size > CROSS_REGION_MAX_BYTES:
            if mail.body_ref.region in (None, ""):
                mail = mail.model_copy(update={"body_ref": mail.body_ref.model_copy(
                    update={"region": self.settings.region})})
        elif mail.body_ref is not None:
            try:
                body = await self._body(mail)
            except PoisonBody as exc:
                return Reject(str(exc))
            except BodyUnavailable as exc:
                return Retry(str(exc), delay=5.0)
            mail = mail.model_copy(update={"body": body, "body_ref": None})
        subject = names.mail_subject(target, mail.domain, names.mail_partition(recipients[0]))
        headers = {"Nats-Msg-Id": mail.sent_on_msg_id(target, f"{self.settings.region}.{sequence}")}
        try:
            with tracer.start_as_current_span("mailstore.send_on", context=extract_context(job_headers)):
                await self.js.publish(subject, mail.encode(), headers=inject_headers(headers), timeout=10)
        except (NatsTimeoutError, NoRespondersError) as exc:
            return Retry(f"sending on to region {target}: {exc!r}", delay=1.0)
        self.metrics.sent_on.inc()
        log.info("mail %s for moving domain %s sent on to region %s", mail.message_id, mail.domain, target)
        return None

    async def _body(self, mail: InboundMail) -> bytes:
        if mail.body is not None:
            return mail.body
        ref = mail.body_ref
        if ref.region not in (None, "", self.settings.region):
            data = await self._remote_body(mail)
        else:
            try:
                store = await self.js.object_store(ref.bucket)
                data = (await store.get(ref.name)).data
            except (ObjectNotFoundError, ObjectDeletedError) as exc:  # gone for good; the bus away is a retry
                raise PoisonBody(f"body {ref.bucket}/{ref.name} is gone") from exc
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())  # 50 MB: not on the loop
        if digest != ref.sha256:
            raise PoisonBody(f"body {ref.bucket}/{ref.name} does not match its sha256")
        return data

    async def _remote_body(self, mail: InboundMail) -> bytes:
        """A body another region's store sent on with the job, left in that region's object
        store: fetched from one of that region's READY stores over its inner listener
        (``account_export.fetch_mail_body``), the next one tried if one fails.  ``PoisonBody``
        if the region says it is gone; ``BodyUnavailable`` (retry later) if the region cannot
        be reached."""
        ref = mail.body_ref
        if self._secret is None:
            if self.settings.cluster_secret_file is None:
                raise BodyUnavailable(f"body {ref.name} is in region {ref.region}, and this mail store has no "
                                      "cluster secret to fetch it with")
            self._secret = load_secret(self.settings.cluster_secret_file)
        try:
            records = await read_nodes(self.nc, names.js_domain(ref.region), REMOTE_TIMEOUT)
        except Exception as exc:   # the link is cut, the other bus busy: the job waits
            raise BodyUnavailable(f"region {ref.region} could not be read: {type(exc).__name__}: {exc}") from None
        stores = {r.id: r.addresses["imap-inner"] for r in records
                  if r.role == Role.MAILSTORE and r.state == NodeState.READY and "imap-inner" in r.addresses}
        if not stores:
            raise BodyUnavailable(f"region {ref.region} has no READY mail store to fetch body {ref.name} from")
        first = place(ref.name, stores)
        failures = []
        for node in [first, *sorted(set(stores) - {first})]:
            host, _, port = stores[node].rpartition(":")
            client = X.ExportClient(host, int(port), self._secret, mail.domain, max_body=ref.size)
            try:
                data = await X.fetch_mail_body(client, ref.name)
            except X.NoSuchBody as exc:
                raise PoisonBody(f"body {ref.bucket}/{ref.name} is gone from region {ref.region}") from exc
            except (X.ExportError, OSError, asyncio.TimeoutError) as exc:
                failures.append(f"{node}: {exc!r}"[:200])
                continue
            self.metrics.remote_bodies.inc()
            return data
        raise BodyUnavailable(f"body {ref.name} could not be fetched from region {ref.region}: {'; '.join(failures)}")

    # --- routing ---------------------------------------------------------------------------

    async def deliver(self, mail: InboundMail, raw: bytes, body: bytes, recipients: list[str], job_id: str,
                      headers: dict[str, str] | None, may_forward: bool) -> dict[str, tuple[str, str]]:
        results: dict[str, tuple[str, str]] = {}
        local: list[str] = []
        remote: dict[str, list[str]] = {}
        for address in recipients:
            where = await self._route(address, may_forward)
            if where == self.node_id:
                local.append(address)
            elif where.startswith("!"):
                results[address] = (RETRY, where[1:])
            else:
                remote.setdefault(where, []).append(address)
        work = [*(self._store_local(mail, body, a) for a in local),
                *(self._forward(owner, raw, addrs, job_id, headers) for owner, addrs in remote.items())]
        # A lone store or forward (nearly every job) is awaited in this task: gather would
        # wrap it in a task of its own, two more loop passes per message, each a pass of its
        # own on a store with few jobs in flight.
        for outcome in [await work[0]] if len(work) == 1 else await asyncio.gather(*work):
            results.update(outcome)
        return results

    async def claim(self, address: str) -> bool:
        """Whether this store may serve ``address`` now, taking it if vacant (client sessions
        handed over by an edge: they are never forwarded)."""
        return await self._route(address, may_forward=False) == self.node_id

    async def locate(self, address: str) -> str:
        """Where ``address``'s mail is written, as a delivery would route it: our node id (held
        here, or vacant and ours to take), another owner's id, or ``!reason`` (retry later).
        Shared-folder calls (``sharing``) go there."""
        return await self._route(address, may_forward=True)

    async def _route(self, address: str, may_forward: bool) -> str:
        """Our node id (store here), another owner's id (forward), or ``!reason`` (retry later)."""
        if self.ownership.holding(address):
            return self.node_id
        async with self.ownership.deciding(address):
            if self.ownership.holding(address):  # another delivery took it while we waited
                return self.node_id
            return await self._decide(address, may_forward)

    async def _decide(self, address: str, may_forward: bool) -> str:
        for _ in range(3):
            seen = await self.ownership.owner(address)
            if seen is None:
                if self.accepting:
                    ready = set(self.members.ready) | {self.node_id}
                    target = place(address, ready)
                    if target == self.node_id or not may_forward:
                        if await self._take(address, None, "vacant"):
                            return self.node_id
                        continue  # someone else just took it: look again
                    return target
                others = [m for m in self.members.ready if m != self.node_id]
                if may_forward and others:
                    return place(address, others)
                return "!draining, no other mailstore is ready"
            holder = seen.record.holder
            if holder == self.node_id:
                if address in self.ownership.leases:
                    # Ours in this process (taken while we read): never a takeover from ourselves.
                    if self.ownership.holding(address) is None:
                        return "!our lease is ending; waiting for it to lapse"
                    return self.node_id
                # An earlier incarnation of this node id: abandoned by definition.
                if self.accepting and await self._take(address, seen, "taken-over"):
                    return self.node_id
                continue
            if not may_forward:
                return f"!owned by {holder}"
            if self.ownership.lapsed(address, seen) and self.accepting:
                if await self._take(address, seen, "expired"):
                    return self.node_id
                continue
            return holder
        return "!ownership kept changing"

    async def _take(self, address: str, seen, how: str) -> bool:
        lease = await self.ownership.acquire(address, seen, how)
        if lease is None:
            return False
        self.metrics.takeovers.labels(how).inc()
        return True

    async def _store_local(self, mail: InboundMail, body: bytes, address: str) -> dict[str, tuple[str, str]]:
        entry = await self.accounts.directory.account(address)
        if entry is None:
            # The edge checked it against the directory; it was deleted since.  Kept in the
            # dead-letter stream rather than dropped: an operator decides.
            return {address: (REJECTED, NO_ACCOUNT)}
        lease = self.ownership.holding(address)
        if lease is None:
            return {address: (RETRY, "lease lapsed before the write")}
        try:
            stored = await self.accounts.deliver(address, lease, body, f"{mail.message_id}/{address}", mail.at,
                                                 mail.special_use)
        except OverQuota as exc:
            self.metrics.over_quota.inc()
            return {address: (REJECTED, f"{OVER_QUOTA}: {exc}")}
        except NotOwner as exc:
            return {address: (RETRY, str(exc))}
        except Exception as exc:
            if storage_failure(exc):
                # One line, not a traceback per message: a full disk fails every delivery.
                if self.storage.failed(exc):
                    log.warning("shared storage refuses writes (%s: %s, storing for %s): delivery paused until "
                                "it takes writes again", type(exc).__name__, exc, address)
                return {address: (HELD, f"storage unavailable: {type(exc).__name__}: {exc}")}
            log.exception("storing for %s failed", address)
            return {address: (RETRY, f"{type(exc).__name__}: {exc}")}
        if stored.duplicate:
            self.metrics.duplicates.inc()
        else:
            self.metrics.stored.inc()
            usage = self.accounts.usage(address)
            self.usage.stored(address, usage[0] if usage else None)
            if entry.vacation is not None:    # the whole cost for an account without one
                await self.auto_replies.answer(mail, address, entry, body)
        return {address: (STORED, "")}

    # --- forwarding ------------------------------------------------------------------------

    async def _forward(self, owner: str, raw: bytes, addresses: list[str], job_id: str,
                       headers: dict[str, str] | None) -> dict[str, tuple[str, str]]:
        out_headers = {**inject_headers(), H_RECIPIENTS: orjson.dumps(addresses).decode(), H_JOB_ID: job_id}
        if headers and "traceparent" in headers and "traceparent" not in out_headers:
            out_headers["traceparent"] = headers["traceparent"]
        try:
            msg = await self.nc.request(names.mailstore_deliver_subject(owner), raw, headers=out_headers,
                                        timeout=self.settings.mailstore_forward_timeout)
            reply = ForwardReply.model_validate_json(msg.data)
        except NoRespondersError:
            # Proof of absence: its connection is gone, so it cannot write any more.
            self.metrics.forwarded.labels("gone").inc()
            out = {}
            for address in addresses:
                async with self.ownership.deciding(address):
                    seen = await self.ownership.owner(address)
                    if seen is not None and seen.record.holder == owner and self.accepting:
                        await self._take(address, seen, "taken-over")
                out[address] = (RETRY, f"owner {owner} is gone; retrying here")
            return await self._retry_locally(out, raw)
        except (NatsTimeoutError, asyncio.TimeoutError):
            self.metrics.forwarded.labels("timeout").inc()
            return {a: (RETRY, f"owner {owner} did not answer") for a in addresses}
        except ValueError as exc:
            return {a: (RETRY, f"bad reply from {owner}: {exc}") for a in addresses}
        self.metrics.forwarded.labels("ok").inc()
        out = {a: (STORED, "") for a in reply.stored}
        out.update({a: (HELD if a in reply.held else RETRY, why) for a, why in reply.retry.items()})
        out.update({a: (REJECTED, why) for a, why in reply.rejected.items()})
        for a in addresses:
            out.setdefault(a, (RETRY, f"{owner} did not say"))
        return out

    async def _retry_locally(self, out: dict[str, tuple[str, str]], raw: bytes) -> dict[str, tuple[str, str]]:
        """After a takeover, store what we now own at once instead of waiting for a redelivery."""
        mail = decode(raw)
        body = await self._body(mail)
        for address in list(out):
            if self.ownership.holding(address):
                out.update(await self._store_local(mail, body, address))
        return out

    async def serve_forward(self, msg: Msg) -> None:
        """A forwarded delivery: store what we own (or may take); say what the sender must retry."""
        self.forwards_in_flight += 1
        try:
            reply = await self._serve_forward(msg)
        except Exception as exc:
            log.exception("forwarded delivery failed")
            reply = ForwardReply(retry={"*": f"{type(exc).__name__}: {exc}"})
        finally:
            self.forwards_in_flight -= 1
        try:
            await msg.respond(reply.encode())
        except Exception as exc:
            log.warning("could not answer a forwarded delivery: %s", exc)

    async def _serve_forward(self, msg: Msg) -> ForwardReply:
        headers = msg.headers or {}
        try:
            addresses = [str(a).lower() for a in orjson.loads(headers.get(H_RECIPIENTS, "[]"))]
            mail = decode(msg.data)
            if not isinstance(mail, InboundMail):
                raise ValueError(mail.type)
        except (ValueError, UnknownEvent) as exc:
            return ForwardReply(rejected={"*": f"not an InboundMail: {str(exc)[:200]}"})
        if not self.accepting:
            return ForwardReply(retry={a: f"{self.node_id} is draining" for a in addresses})
        if self.storage.down:
            why = f"storage unavailable at {self.node_id}: {self.storage.reason}"
            return ForwardReply(retry={a: why for a in addresses}, held=list(addresses))
        with tracer.start_as_current_span(
                "mailstore forwarded delivery", context=extract_context(headers)):
            try:
                body = await self._body(mail)
            except PoisonBody as exc:
                return ForwardReply(rejected={a: str(exc) for a in addresses})
            except BodyUnavailable as exc:
                return ForwardReply(retry={a: str(exc) for a in addresses})
            results = await self.deliver(mail, msg.data, body, addresses, headers.get(H_JOB_ID, ""), headers,
                                         may_forward=False)
        reply = ForwardReply()
        for address, (status, why) in results.items():
            if status == STORED:
                reply.stored.append(address)
            elif status == REJECTED:
                reply.rejected[address] = why
            else:
                reply.retry[address] = why
                if status == HELD:
                    reply.held.append(address)
        return reply
