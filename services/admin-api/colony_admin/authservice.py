"""The cluster's authentication and directory services over NATS request/reply (queue group
``admin-api``), serving the typed contracts of ``colony.contracts``:

- ``names.AUTH_CHECK``            ``contracts.auth.AuthCheckRequest`` -> ``AuthCheckReply``
- ``names.AUTH_SIP_CREDENTIALS``  ``contracts.auth.SipCredentialsRequest`` -> ``SipCredentialsReply``
- ``names.DIRECTORY_LOOKUP``      ``contracts.directory.DirectoryLookupRequest`` -> ``DirectoryLookupReply``
- ``names.DIRECTORY_RECIPIENTS``  ``contracts.recipients.RecipientsRequest`` -> ``RecipientsReply``
- ``names.DIRECTORY_DOMAIN_ACCOUNTS``  ``contracts.directory.DomainAccountsRequest`` -> ``DomainAccountsReply``

The wire formats are in those modules' docstrings.  Unknown user and wrong password give the
same answer, after the same argon2 work (no account enumeration, by answer or by time).  Failures are throttled per account and per client
address (brute-force protection).  A user in a domain alias (alice@acme-alias.example) is
the account in the real domain.  A request that does not parse gets its contract's refusal
with ``bad request: ...``, never silence.

Load shedding (a password spray, or many clients retrying at once): argon2 is the costly
step, so password checks wait for one of ``hash_slots`` hashing slots (one per argon2 thread)
in a queue of at most ``max_queued_checks``.  A check that finds the queue full is answered
``temporarily unavailable`` at once (the edges' temporary failure: SMTP 454 4.7.0, IMAP
``NO [UNAVAILABLE]``, POP ``-ERR [SYS/TEMP]``); one whose requester stopped waiting
(``Colony-Timeout`` header, ``contracts.auth``) before it reaches a slot, or before it is
picked up at all, gets no answer and costs no hash -- its requester already answered its
client, and the bus refuses a reply to an inbox whose request has timed out.  So a burst
costs at most the queue's worth of hashes, and a request after it waits for the hashes of
the queue, not of the whole burst.  Counted as outcome ``shed`` / ``expired`` of the RED
metrics.

Directory lookups read the ``directory`` bucket itself (so they answer exactly what a
``DirectoryCache`` holds); recipient resolution runs the edges' pure resolver over the read
model (``SqlDirectoryView``), and a domain's accounts (what a domain move copies) are a range
of the read model's (domain, name) index, a page at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, select

from colony.bus import names
from colony.bus.connection import unsubscribe_all
from colony.bus.tokens import normalise_domain
from colony.contracts.auth import (
    AuthCheckReply,
    AuthCheckRequest,
    AuthFailure,
    DEFAULT_TIMEOUT,
    TIMEOUT_HEADER,
    SipCredentialsReply,
    SipCredentialsRequest,
    SipFailure,
)
from colony.contracts.directory import (
    BadEntry,
    DirectoryLookupReply,
    DirectoryLookupRequest,
    DomainAccountsReply,
    DomainAccountsRequest,
    EntryKind,
    parse_entry,
)
from colony.contracts import entitlements
from colony.contracts.entitlements import effective
from colony.contracts.recipients import (
    Limits,
    RecipientResult,
    RecipientsReply,
    RecipientsRequest,
    normalise_address,
    resolve_all,
)
from colony.metrics import BusRequestMetrics
from colony.netaddr import counting_unit
from colony.telemetry import extract_context
from colony_admin import db, queries
from colony_admin.auth.sealing import is_sealed
from colony_admin.auth.throttle import Throttle
from colony_admin.commands import ARGON2_THREADS, Provisioning
from colony_admin.directoryview import SqlDirectoryView
from colony_admin.models import check_address, check_domain, check_local

log = logging.getLogger("colony.admin.auth")
_tracer = trace.get_tracer("colony.admin.auth")

INVALID = AuthCheckReply.refused(AuthFailure.INVALID)


def lookup(conn: Connection, address: str, default_cos: str | None = entitlements.DEFAULT_COS) -> dict[str, Any] | None:
    """The account with its domain's state and its effective class of service (the
    account's, else the domain's, else the cluster's default: ``entitlements.cos_name``)."""
    local, _, domain = address.rpartition("@")
    real = conn.execute(select(db.domain_aliases.c.domain).where(db.domain_aliases.c.name == domain)).scalar()
    if real:
        domain, address = real, f"{local}@{real}"
    acct = conn.execute(select(db.accounts).where(db.accounts.c.address == address)).mappings().first()
    dom = conn.execute(select(db.domains).where(db.domains.c.name == domain)).mappings().first()
    if acct is None or dom is None:
        return None
    cos_name = entitlements.cos_name(acct["cos"], dom["cos"], default_cos)
    limits = None
    if cos_name:
        limits = conn.execute(select(db.classes_of_service.c.limits)
                              .where(db.classes_of_service.c.name == cos_name)).scalar()
    return {"account": dict(acct), "domain_state": dom["state"], "limits": limits}


# One served subject: how its request parses, what a request that does not parse gets.
# A handler gets the request and its deadline (``time.monotonic()`` seconds).
_Handler = Callable[[Any, float], Awaitable[BaseModel]]

# A requester's stated wait is believed up to this long (a header cannot pin work forever).
_MAX_TIMEOUT = 60.0


class _Expired(Exception):
    """The requester stopped waiting before the work began: answer nothing."""


def deadline_of(headers: dict[str, str] | None, received: float) -> float:
    """When the requester stops waiting: ``received`` plus its ``Colony-Timeout`` header
    (seconds), else ``DEFAULT_TIMEOUT`` (a requester from before the header)."""
    raw = (headers or {}).get(TIMEOUT_HEADER)
    try:
        timeout = float(raw) if raw is not None else DEFAULT_TIMEOUT
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    if not math.isfinite(timeout) or timeout <= 0:
        timeout = DEFAULT_TIMEOUT
    return received + min(timeout, _MAX_TIMEOUT)


class AuthService:
    def __init__(self, nc: Client, provisioning: Provisioning, engine, throttle: Throttle,
                 limits: Limits = Limits(), metrics: BusRequestMetrics | None = None,
                 max_queued_checks: int = 64, hash_slots: int = ARGON2_THREADS) -> None:
        self.nc, self.provisioning, self.engine, self.throttle = nc, provisioning, engine, throttle
        self.limits = limits
        self.metrics = metrics
        self.max_queued_checks = max_queued_checks
        self._hash_slots = asyncio.Semaphore(hash_slots)
        self.queued_checks = 0   # checks waiting for a hashing slot
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task] = set()
        self._kv: KeyValue | None = None
        self._decoy_hash: asyncio.Future[str] | None = None

    async def _decoy(self) -> str:
        """A hash of a random password, made as an account's is: what a check of an account
        that does not exist (or has no password) is verified against.  Made once, by the first
        check that needs it, on the argon2 pool; checks arriving meanwhile wait for that one.
        (Each used to make its own on the default executor: a spray of unknown names right
        after a start queued one argon2 hash per check, unshed, ahead of every check's
        database lookup on that executor.)"""
        if self._decoy_hash is None:
            self._decoy_hash = asyncio.ensure_future(self.provisioning.make_hash(secrets.token_hex(16)))
        try:
            return await asyncio.shield(self._decoy_hash)  # a waiter given up on is not the hash's end
        except Exception:
            if self._decoy_hash.done():
                self._decoy_hash = None  # the next check tries again
            raise

    async def start(self) -> None:
        served: list[tuple[str, type[BaseModel], _Handler, Callable[[str], BaseModel]]] = [
            (names.AUTH_CHECK, AuthCheckRequest, self.check, AuthCheckReply.refused),
            (names.AUTH_SIP_CREDENTIALS, SipCredentialsRequest, self.sip_credentials, SipCredentialsReply.refused),
            (names.DIRECTORY_LOOKUP, DirectoryLookupRequest, self.directory_lookup,
             lambda error: DirectoryLookupReply(found=False, error=error)),
            (names.DIRECTORY_RECIPIENTS, RecipientsRequest, self.recipients,
             lambda error: RecipientsReply(results=[], error=error)),
            (names.DIRECTORY_DOMAIN_ACCOUNTS, DomainAccountsRequest, self.domain_accounts,
             lambda error: DomainAccountsReply(accounts=[], error=error)),
        ]
        for subject, request_model, handler, refusal in served:
            self._subs.append(await self.nc.subscribe(subject, queue=names.QUEUE_ADMIN,
                                                      cb=self._spawn(request_model, handler, refusal)))

    async def stop(self) -> None:
        await unsubscribe_all(self._subs)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, request_model: type[BaseModel], handler: _Handler, refusal: Callable[[str], BaseModel]):
        # nats-py runs a subscription's callbacks one at a time; argon2 takes tens of ms, so
        # each request gets its own task and checks run side by side.
        async def cb(msg: Msg) -> None:
            deadline = deadline_of(msg.headers, time.monotonic())
            task = asyncio.create_task(self._answer(request_model, handler, refusal, msg, deadline))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return cb

    async def _answer(self, request_model: type[BaseModel], handler: _Handler,
                      refusal: Callable[[str], BaseModel], msg: Msg, deadline: float) -> None:
        outcome, started = "ok", time.perf_counter()
        reply: BaseModel | None = None
        if self.metrics:
            self.metrics.in_flight.labels(msg.subject).inc()
        try:
            if time.monotonic() >= deadline:   # queued in the client library past its wait
                raise _Expired
            with _tracer.start_as_current_span(msg.subject, context=extract_context(msg.headers),
                                               kind=trace.SpanKind.SERVER):
                reply = await handler(request_model.model_validate_json(msg.data), deadline)
            if isinstance(reply, AuthCheckReply) and reply.reason == AuthFailure.UNAVAILABLE:
                outcome = "shed"
        except _Expired:
            outcome = "expired"
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "request"
            reply = refusal(f"bad request: {where}: {first['msg']}")
            outcome = "bad_request"
        except Exception:
            log.exception("request on %s failed", msg.subject)
            reply = refusal("internal error")
            outcome = "error"
        finally:
            if self.metrics:
                self.metrics.in_flight.labels(msg.subject).dec()
        if self.metrics:
            self.metrics.requests.labels(msg.subject, outcome).inc()
            self.metrics.duration.labels(msg.subject).observe(time.perf_counter() - started)
        if msg.reply and reply is not None:
            await msg.respond(reply.to_bytes())

    async def _lookup(self, address: str) -> dict[str, Any] | None:
        def work():
            with self.engine.connect() as conn:
                return lookup(conn, address, self.limits.default_cos)
        return await asyncio.to_thread(work)

    async def _credential(self, acct: dict[str, Any], field: str, algorithm: str | None = None) -> str | None:
        """An account's current credential, opened (the read model holds it sealed,
        ``auth/sealing.py``).  A key that is gone means the read model is behind a change
        that shredded it (a new password, a re-hash after login): the stream is current."""
        def pick(record: dict[str, Any]) -> str | None:
            return record.get(field) if algorithm is None else (record.get(field) or {}).get(algorithm)

        value = pick(acct)
        opened = await self.provisioning.keys.open(value)
        if opened is None and is_sealed(value):
            state = (await self.provisioning.load(names.AGG_ADDRESS, acct["address"])).state
            opened = pick(state) if state else None
        return opened

    async def _verify(self, stored: str, password: str, deadline: float):
        """The password check, shed under load: ``None`` when the queue of checks waiting for
        a hashing slot is full; ``_Expired`` when the requester's wait ends in the queue."""
        if self.queued_checks >= self.max_queued_checks:
            return None
        self.queued_checks += 1
        try:
            await self._hash_slots.acquire()
        finally:
            self.queued_checks -= 1
        try:
            if time.monotonic() >= deadline:
                raise _Expired
            return await self.provisioning.check_password(stored, password)
        finally:
            self._hash_slots.release()

    async def check(self, request: AuthCheckRequest, deadline: float = math.inf) -> AuthCheckReply:
        password = request.password
        try:
            address = check_address(request.user)
        except ValueError:
            return INVALID
        # IPv6 per /64, as every per-source limit counts (colony.netaddr): per single address a
        # holder of a /64 had a fresh budget for every guess.
        keys = [f"acct:{address}"] + ([f"ip:{counting_unit(request.remote_addr)}"] if request.remote_addr else [])
        # A client familiar to the account (the edge says so: colony_edge.familiar) is held by
        # its address's lock only: strangers' failures must not lock the owner out.  Its own
        # failures still count against the account.
        holding = keys[1:] if request.familiar and len(keys) > 1 else keys
        now = time.monotonic()
        wait = max((self.throttle.retry_after(k, now) for k in holding), default=0.0)
        if wait:
            return AuthCheckReply.refused(AuthFailure.THROTTLED, retry_after=round(wait, 1))
        found = await self._lookup(address)
        stored = await self._credential(found["account"], "password_hash") if found else None
        # An account that does not exist (or has no password) costs the same argon2 work as a
        # wrong password, against a decoy hash: the answers were already the same, and now so is
        # the time.  Answered without the hash, an unknown name took ~1 ms against ~0.1-0.3 s
        # for a real one, so one guess per name told a stranger which accounts exist, and the
        # throttle (per account and per address) does not bound one guess per name from many
        # addresses.  The hash slots and the queue shed a spray of unknown names as any other.
        verdict = await self._verify(stored or await self._decoy(), password, deadline)
        if verdict is None:   # shed: not a failed attempt, so no throttling either
            return AuthCheckReply.refused(AuthFailure.UNAVAILABLE)
        if not stored or not verdict.ok:
            for k in keys:
                self.throttle.failed(k, now)
            return INVALID
        if verdict.rehash:  # a migrated hash: argon2id from now on (colony_admin/auth/passwords.py)
            self.provisioning.upgrade_password_later(found["account"]["address"], stored, password)
        for k in keys:
            self.throttle.succeeded(k)
        acct = found["account"]
        if acct["state"] != "active" or found["domain_state"] != "active":
            return AuthCheckReply.refused(AuthFailure.ACCOUNT_DISABLED)
        limits = effective(acct, found["limits"])
        if request.service and request.service not in limits["services"]:
            return AuthCheckReply.refused(AuthFailure.SERVICE_NOT_ENABLED)
        return AuthCheckReply.granted(acct["address"], acct["domain"], limits)

    async def sip_credentials(self, request: SipCredentialsRequest, deadline: float = math.inf) -> SipCredentialsReply:
        user = request.user
        try:
            if "@" in user:
                address = check_address(user)
            else:
                address = f"{check_local(user)}@{check_domain(request.realm)}"
        except ValueError:
            return SipCredentialsReply.refused(SipFailure.UNKNOWN_USER)
        found = await self._lookup(address)
        if not found:
            return SipCredentialsReply.refused(SipFailure.UNKNOWN_USER)
        acct = found["account"]
        if acct["state"] != "active" or found["domain_state"] != "active":
            return SipCredentialsReply.refused(SipFailure.ACCOUNT_DISABLED)
        if "sip" not in effective(acct, found["limits"])["services"]:
            return SipCredentialsReply.refused(SipFailure.SERVICE_NOT_ENABLED)
        ha1 = await self._credential(acct, "sip_ha1", request.algorithm)
        if not ha1:
            return SipCredentialsReply.refused(SipFailure.NO_CREDENTIALS)
        return SipCredentialsReply(ok=True, username=acct["name"], realm=acct["domain"], algorithm=request.algorithm,
                                   ha1=ha1)

    async def directory_lookup(self, request: DirectoryLookupRequest,
                               deadline: float = math.inf) -> DirectoryLookupReply:
        if request.kind is EntryKind.ADDRESS:
            name = normalise_address(request.name)
        elif request.kind is EntryKind.COS:
            name = request.name
        else:
            name = normalise_domain(request.name) or None
        if not name:
            return DirectoryLookupReply(found=False)
        if self._kv is None:
            self._kv = await self.nc.jetstream().key_value(names.BUCKET_DIRECTORY)
        try:
            entry = await self._kv.get(names.directory_key(request.kind.value, name))
        except KeyNotFoundError:  # also raised for a deleted key
            return DirectoryLookupReply(found=False)
        try:
            parsed = parse_entry(entry.value or b"")
        except BadEntry as exc:
            log.error("directory value at %s is unreadable: %s", entry.key, exc)
            return DirectoryLookupReply(found=False, error="internal error")
        return DirectoryLookupReply(found=parsed is not None, entry=parsed)

    async def domain_accounts(self, request: DomainAccountsRequest,
                              deadline: float = math.inf) -> DomainAccountsReply:
        domain = normalise_domain(request.domain)

        def work():
            with self.engine.connect() as conn:
                return queries.domain_account_page(conn, domain, request.after, request.limit)
        page = await asyncio.to_thread(work)
        return DomainAccountsReply(accounts=[address for _, address in page],
                                   next_after=page[-1][0] if len(page) == request.limit else None)

    async def recipients(self, request: RecipientsRequest, deadline: float = math.inf) -> RecipientsReply:
        def work():
            with self.engine.connect() as conn:
                return resolve_all(SqlDirectoryView(conn), request.recipients, self.limits)
        return RecipientsReply(results=[RecipientResult.of(r) for r in await asyncio.to_thread(work)])
