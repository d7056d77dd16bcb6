"""The cluster's authentication service over NATS request/reply (queue group ``admin-api``).

``colony.auth.check`` — PLAIN password check::

    request  {"user": "alice@acme.example", "password": "...", "service": "imap", "remote_addr": "198.51.100.7"}
    reply    {"ok": true, "account": "alice@acme.example", "domain": "acme.example",
              "services": ["mail", "imap", ...], "quota_bytes": ..., "max_message_bytes": ...,
              "max_recipients_per_message": ..., "sending_rate_per_hour": ...}
          or {"ok": false, "reason": "invalid credentials" | "service not enabled" | "throttled", "retry_after": s}

``colony.auth.sip`` — SIP digest credentials, never the password::

    request  {"user": "alice", "realm": "acme.example", "algorithm": "MD5" | "SHA-256"}
    reply    {"ok": true, "username": "alice", "realm": "acme.example", "algorithm": "MD5", "ha1": "<hex>"}
          or {"ok": false, "reason": ...}

Unknown user and wrong password give the same answer (no account enumeration).  Failures
are throttled per account and per client address (brute-force protection).  A user in a
domain alias (alice@acme-alias.example) is the account in the real domain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import Connection, select

from colony.bus import names
from colony_admin import db, entitlements
from colony_admin.auth.secrets import DIGEST_ALGORITHMS
from colony_admin.auth.throttle import Throttle
from colony_admin.commands import Provisioning
from colony_admin.models import check_address, check_domain, check_local

log = logging.getLogger("colony.admin.auth")

INVALID = {"ok": False, "reason": "invalid credentials"}


def lookup(conn: Connection, address: str) -> dict[str, Any] | None:
    """The account with its domain's state and its effective class of service."""
    local, _, domain = address.rpartition("@")
    real = conn.execute(select(db.domain_aliases.c.domain).where(db.domain_aliases.c.name == domain)).scalar()
    if real:
        domain, address = real, f"{local}@{real}"
    acct = conn.execute(select(db.accounts).where(db.accounts.c.address == address)).mappings().first()
    dom = conn.execute(select(db.domains).where(db.domains.c.name == domain)).mappings().first()
    if acct is None or dom is None:
        return None
    cos_name = acct["cos"] or dom["cos"]
    limits = None
    if cos_name:
        limits = conn.execute(select(db.classes_of_service.c.limits)
                              .where(db.classes_of_service.c.name == cos_name)).scalar()
    return {"account": dict(acct), "domain_state": dom["state"], "limits": limits}


class AuthService:
    def __init__(self, nc: Client, provisioning: Provisioning, engine, throttle: Throttle) -> None:
        self.nc, self.provisioning, self.engine, self.throttle = nc, provisioning, engine, throttle
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._subs.append(await self.nc.subscribe(names.AUTH_CHECK, queue=names.QUEUE_ADMIN, cb=self._spawn(self.check)))
        self._subs.append(await self.nc.subscribe(names.AUTH_SIP_CREDENTIALS, queue=names.QUEUE_ADMIN,
                                                  cb=self._spawn(self.sip_credentials)))

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, handler):
        # nats-py runs a subscription's callbacks one at a time; argon2 takes tens of ms, so
        # each request gets its own task and checks run side by side.
        async def cb(msg: Msg) -> None:
            task = asyncio.create_task(self._answer(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return cb

    async def _answer(self, handler, msg: Msg) -> None:
        try:
            request = json.loads(msg.data)
            if not isinstance(request, dict):
                raise ValueError("not an object")
            reply = await handler(request)
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "reason": f"bad request: {exc}"}
        except Exception:
            log.exception("auth request on %s failed", msg.subject)
            reply = {"ok": False, "reason": "internal error"}
        if msg.reply:
            await msg.respond(json.dumps(reply, separators=(",", ":")).encode())

    async def _lookup(self, address: str) -> dict[str, Any] | None:
        def work():
            with self.engine.connect() as conn:
                return lookup(conn, address)
        return await asyncio.to_thread(work)

    async def check(self, request: dict[str, Any]) -> dict[str, Any]:
        password = str(request.get("password", ""))
        try:
            address = check_address(str(request.get("user", "")))
        except ValueError:
            return INVALID
        keys = [f"acct:{address}"] + ([f"ip:{request['remote_addr']}"] if request.get("remote_addr") else [])
        now = time.monotonic()
        wait = max(self.throttle.retry_after(k, now) for k in keys)
        if wait:
            return {"ok": False, "reason": "throttled", "retry_after": round(wait, 1)}
        found = await self._lookup(address)
        stored = found["account"]["password_hash"] if found else None
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
            return {"ok": False, "reason": "account disabled"}
        limits = entitlements.effective(acct, found["limits"])
        service = request.get("service")
        if service and service not in limits["services"]:
            return {"ok": False, "reason": "service not enabled"}
        return {"ok": True, "account": acct["address"], "domain": acct["domain"], **limits}

    async def sip_credentials(self, request: dict[str, Any]) -> dict[str, Any]:
        algorithm = str(request.get("algorithm", "MD5")).upper()
        if algorithm not in DIGEST_ALGORITHMS:
            return {"ok": False, "reason": f"algorithm must be one of {', '.join(DIGEST_ALGORITHMS)}"}
        user = str(request.get("user", ""))
        try:
            if "@" in user:
                address = check_address(user)
            else:
                address = f"{check_local(user)}@{check_domain(str(request.get('realm', '')))}"
        except ValueError:
            return {"ok": False, "reason": "unknown user"}
        found = await self._lookup(address)
        if not found:
            return {"ok": False, "reason": "unknown user"}
        acct = found["account"]
        if acct["state"] != "active" or found["domain_state"] != "active":
            return {"ok": False, "reason": "account disabled"}
        if "sip" not in entitlements.effective(acct, found["limits"])["services"]:
            return {"ok": False, "reason": "service not enabled"}
        ha1 = (acct["sip_ha1"] or {}).get(algorithm)
        if not ha1:
            return {"ok": False, "reason": "no SIP credentials (set a password)"}
        return {"ok": True, "username": acct["name"], "realm": acct["domain"], "algorithm": algorithm, "ha1": ha1}
