"""The cluster's authentication and directory services over NATS request/reply (queue group
``admin-api``), serving the typed contracts of ``colony.contracts``:

- ``names.AUTH_CHECK``            ``contracts.auth.AuthCheckRequest`` -> ``AuthCheckReply``
- ``names.AUTH_SIP_CREDENTIALS``  ``contracts.auth.SipCredentialsRequest`` -> ``SipCredentialsReply``
- ``names.DIRECTORY_LOOKUP``      ``contracts.directory.DirectoryLookupRequest`` -> ``DirectoryLookupReply``
- ``names.DIRECTORY_RECIPIENTS``  ``contracts.recipients.RecipientsRequest`` -> ``RecipientsReply``

The wire formats are in those modules' docstrings.  Unknown user and wrong password give the
same answer (no account enumeration).  Failures are throttled per account and per client
address (brute-force protection).  A user in a domain alias (alice@acme-alias.example) is
the account in the real domain.  A request that does not parse gets its contract's refusal
with ``bad request: ...``, never silence.

Directory lookups read the ``directory`` bucket itself (so they answer exactly what a
``DirectoryCache`` holds); recipient resolution runs the edges' pure resolver over the read
model (``SqlDirectoryView``).
"""

from __future__ import annotations

import asyncio
import logging
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
from colony.bus.tokens import normalise_domain
from colony.contracts.auth import (
    AuthCheckReply,
    AuthCheckRequest,
    AuthFailure,
    SipCredentialsReply,
    SipCredentialsRequest,
    SipFailure,
)
from colony.contracts.directory import (
    BadEntry,
    DirectoryLookupReply,
    DirectoryLookupRequest,
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
from colony.telemetry import extract_context
from colony_admin import db
from colony_admin.auth.sealing import is_sealed
from colony_admin.auth.throttle import Throttle
from colony_admin.commands import Provisioning
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
_Handler = Callable[[Any], Awaitable[BaseModel]]


class AuthService:
    def __init__(self, nc: Client, provisioning: Provisioning, engine, throttle: Throttle,
                 limits: Limits = Limits(), metrics: BusRequestMetrics | None = None) -> None:
        self.nc, self.provisioning, self.engine, self.throttle = nc, provisioning, engine, throttle
        self.limits = limits
        self.metrics = metrics
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task] = set()
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        served: list[tuple[str, type[BaseModel], _Handler, Callable[[str], BaseModel]]] = [
            (names.AUTH_CHECK, AuthCheckRequest, self.check, AuthCheckReply.refused),
            (names.AUTH_SIP_CREDENTIALS, SipCredentialsRequest, self.sip_credentials, SipCredentialsReply.refused),
            (names.DIRECTORY_LOOKUP, DirectoryLookupRequest, self.directory_lookup,
             lambda error: DirectoryLookupReply(found=False, error=error)),
            (names.DIRECTORY_RECIPIENTS, RecipientsRequest, self.recipients,
             lambda error: RecipientsReply(results=[], error=error)),
        ]
        for subject, request_model, handler, refusal in served:
            self._subs.append(await self.nc.subscribe(subject, queue=names.QUEUE_ADMIN,
                                                      cb=self._spawn(request_model, handler, refusal)))

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, request_model: type[BaseModel], handler: _Handler, refusal: Callable[[str], BaseModel]):
        # nats-py runs a subscription's callbacks one at a time; argon2 takes tens of ms, so
        # each request gets its own task and checks run side by side.
        async def cb(msg: Msg) -> None:
            task = asyncio.create_task(self._answer(request_model, handler, refusal, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return cb

    async def _answer(self, request_model: type[BaseModel], handler: _Handler,
                      refusal: Callable[[str], BaseModel], msg: Msg) -> None:
        outcome, started = "ok", time.perf_counter()
        if self.metrics:
            self.metrics.in_flight.labels(msg.subject).inc()
        try:
            with _tracer.start_as_current_span(msg.subject, context=extract_context(msg.headers),
                                               kind=trace.SpanKind.SERVER):
                reply = await handler(request_model.model_validate_json(msg.data))
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
        if msg.reply:
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

    async def check(self, request: AuthCheckRequest) -> AuthCheckReply:
        password = request.password
        try:
            address = check_address(request.user)
        except ValueError:
            return INVALID
        keys = [f"acct:{address}"] + ([f"ip:{request.remote_addr}"] if request.remote_addr else [])
        now = time.monotonic()
        wait = max(self.throttle.retry_after(k, now) for k in keys)
        if wait:
            return AuthCheckReply.refused(AuthFailure.THROTTLED, retry_after=round(wait, 1))
        found = await self._lookup(address)
        stored = await self._credential(found["account"], "password_hash") if found else None
        # Verify even for an unknown account would cost argon2 time; we skip it and accept the
        # timing difference because throttling caps probing anyway.
        verdict = await self.provisioning.check_password(stored, password) if stored else None
        if verdict is None or not verdict.ok:
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

    async def sip_credentials(self, request: SipCredentialsRequest) -> SipCredentialsReply:
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

    async def directory_lookup(self, request: DirectoryLookupRequest) -> DirectoryLookupReply:
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

    async def recipients(self, request: RecipientsRequest) -> RecipientsReply:
        def work():
            with self.engine.connect() as conn:
                return resolve_all(SqlDirectoryView(conn), request.recipients, self.limits)
        return RecipientsReply(results=[RecipientResult.of(r) for r in await asyncio.to_thread(work)])
