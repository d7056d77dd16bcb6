"""The command shell: load an aggregate from PROVISIONING, decide (pure), append under
optimistic concurrency, record the AUDIT event, wait until this instance's read model
shows the change.

Concurrency contract: every command reads the aggregate's version and appends expecting
exactly that version; a client may also pin the version it saw with ``If-Match``.  Either
way, a concurrent change in between makes the append fail and the client gets 409: an
update is never applied on top of a state its author did not see.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from nats.js import JetStreamContext

from colony import events as ev
from colony.bus import names
from colony.eventstore import ConcurrencyConflict, EventStore
from colony_admin import aggregates
from colony_admin.auth import passwords, secrets
from colony_admin.auth.sealing import SecretKeys, state_keys
from colony_admin.auth.roles import Principal
from colony_admin.models import CosCreate, CosLimits
from colony_admin.problems import Conflict
from colony_admin.projections.runner import StreamProjection

log = logging.getLogger("colony.admin.commands")

ARGON2_THREADS = max(1, (os.cpu_count() or 2))  # argon2-cffi releases the GIL: one per core


@dataclass
class Loaded:
    subject: str
    state: aggregates.State  # current credentials opened (auth/sealing.py)
    version: int
    keys: list[str] = field(default_factory=list)  # the secret_keys entries the state's secrets use


@dataclass
class Outcome:
    version: int
    changed: bool


class Provisioning:
    def __init__(self, js: JetStreamContext, store: EventStore, readmodel: StreamProjection | None,
                 hasher: PasswordHasher) -> None:
        self.js, self.store, self.readmodel, self.hasher = js, store, readmodel, hasher
        self.keys = SecretKeys(js, store.nc)  # data keys of the sealed secrets in PROVISIONING
        # argon2 gets its own small pool: a bulk import with passwords must not queue the
        # database reads of every other request (token checks included) behind its hashes.
        self._argon2 = ThreadPoolExecutor(max_workers=ARGON2_THREADS, thread_name_prefix="argon2")
        self._upgrades: dict[str, asyncio.Task] = {}  # address -> its running password re-hash

    def close(self) -> None:
        for task in self._upgrades.values():
            task.cancel()
        self._argon2.shutdown(wait=False, cancel_futures=True)

    # --- the three steps every command takes ----------------------------------------------

    async def load(self, kind: str, name: str) -> Loaded:
        subject = names.provisioning_subject(kind, name)
        stored = await self.store.read(subject)
        state = aggregates.fold(ev.decode(s.data) for s in stored)
        return Loaded(subject, await self.keys.open_state(state), stored[-1].seq if stored else 0, state_keys(state))

    async def commit(self, loaded: Loaded, events: list[ev.Event], *, if_match: int | None = None,
                     wait: bool = True) -> Outcome:
        if if_match is not None and if_match != loaded.version:
            raise Conflict(f"version {if_match} is not current (now {loaded.version}); re-read and retry",
                           current_version=loaded.version)
        if not events:
            return Outcome(loaded.version, False)
        sealed = await self.keys.seal(events, loaded.keys)
        try:
            version = await self.store.append(loaded.subject, [e.encode() for e in sealed.events], loaded.version)
        except ConcurrencyConflict as exc:
            await self.keys.shred_quietly(sealed.fresh, "keys of an append that lost a race")
            raise Conflict("changed concurrently by another request; re-read and retry",
                           current_version=exc.actual) from None
        if sealed.stale:  # crypto-shredding: the replaced secrets in the log can no longer be opened
            await self.keys.shred_quietly(sealed.stale, f"replaced secrets of {loaded.subject}")
        if wait and self.readmodel is not None:
            await self.readmodel.wait_for(version)
        return Outcome(version, True)

    async def audit(self, who: Principal, action: str, target: str, *, domain: str | None,
                    remote_addr: str | None, detail: dict[str, Any] | None = None, outcome: str = "ok") -> None:
        record = ev.AuditRecorded(actor=who.actor, role=who.role.value, action=action, target=target, domain=domain,
                                  remote_addr=remote_addr, outcome=outcome, detail=detail or {})
        await self.js.publish(names.audit_subject(domain), record.encode(), stream=names.STREAM_AUDIT)

    # --- names and the default class of service ---------------------------------------------

    async def reserve_name(self, name: str, kind: str) -> None:
        """Fence ``name`` against the other kind before creating it as ``kind`` (domain or
        domain alias; see ``aggregates``).  Call after loading the aggregate to be created."""
        other = names.AGG_DOMAIN_ALIAS if kind == names.AGG_DOMAIN else names.AGG_DOMAIN
        loaded = await self.load(other, name)
        await self.commit(loaded, aggregates.fence_name(loaded.state, name, other), wait=False)

    async def ensure_cos(self, name: str, quota_bytes: int) -> None:
        """The cluster's default class of service exists (created by the first domain that
        needs it; idempotent across instances: a concurrent creation is as good as ours)."""
        loaded = await self.load(names.AGG_COS, name)
        if loaded.state is None:
            cmd = CosCreate(name=name, description="Default class of every domain created without one",
                            limits=CosLimits(quota_bytes=quota_bytes))
            try:
                await self.commit(loaded, aggregates.create_cos(None, cmd))
            except Conflict:
                pass  # another request or instance created (or changed) it meanwhile

    # --- passwords: CPU-heavy argon2 off the event loop --------------------------------------

    async def hash_password(self, local: str, domain: str, password: str) -> tuple[str, dict[str, str]]:
        return await self.make_hash(password), secrets.sip_ha1(local, domain, password)

    async def make_hash(self, password: str) -> str:
        """The argon2id hash of ``password``, made on the argon2 pool."""
        return await asyncio.get_running_loop().run_in_executor(self._argon2, self.hasher.hash, password)

    async def check_password(self, stored: str | None, password: str) -> passwords.Verdict:
        """Any accepted scheme (``auth/passwords.py``); says whether a re-hash is due."""
        return await asyncio.get_running_loop().run_in_executor(
            self._argon2, passwords.verify, self.hasher, stored, password)

    async def verify_password(self, stored: str | None, password: str) -> bool:
        return (await self.check_password(stored, password)).ok

    def upgrade_password_later(self, address: str, verified_hash: str, password: str) -> None:
        """After a successful login against a migrated (or outdated) hash: re-hash to argon2id
        in the background, so the login answers without waiting for argon2 and an append.
        One upgrade per account at a time; a failure is logged and the next login retries."""
        if address in self._upgrades:
            return
        task = asyncio.create_task(self._upgrade(address, verified_hash, password), name=f"rehash-{address}")
        self._upgrades[address] = task
        task.add_done_callback(self._upgrade_done)

    def _upgrade_done(self, task: asyncio.Task) -> None:
        self._upgrades.pop(task.get_name().removeprefix("rehash-"), None)
        if not task.cancelled() and task.exception() is not None:
            log.error("password re-hash (%s) failed; the next login retries", task.get_name(),
                      exc_info=task.exception())

    async def _upgrade(self, address: str, verified_hash: str, password: str) -> bool:
        local, _, domain = address.rpartition("@")
        new_hash, ha1 = await self.hash_password(local, domain, password)
        loaded = await self.load(names.AGG_ADDRESS, address)
        events = aggregates.upgrade_password(loaded.state, address, verified_hash, new_hash, ha1)
        try:
            # Expecting the version just read: a password change that lands in between wins,
            # and this upgrade (of the old password) is dropped.
            return (await self.commit(loaded, events, wait=False)).changed
        except Conflict:
            log.info("password re-hash of %s skipped: the account changed meanwhile", address)
            return False
