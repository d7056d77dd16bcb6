"""/v1/imports: bulk-create domains and accounts from CSV or JSON, with progress.

The import runs as a background job on the instance that accepted it: POST answers 202 with
the job, GET /v1/imports/{id} reports progress (the CLI draws its progress bar from it).
Rows go through the same aggregate rules and optimistic concurrency as single requests
(every creation expects version 0); the appends of a batch are pipelined on one reply
subscription (``EventStore.create_many``), which is what makes bulk fast.  Existing domains are
used as they are; a new one gets the cluster's default class of service unless its rows name
one, and its name is fenced against domain aliases first (see ``aggregates``).

Re-running an import is safe: an account that exists and equals its row is ``unchanged``;
one that differs is a row error, or with ``?update=true`` is changed (under optimistic
concurrency, like a PATCH) and counted ``updated``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from colony import events as ev
from colony.bus import names
from colony.eventstore import ConcurrencyConflict
from colony_admin import aggregates, importer
from colony_admin.auth import roles, sealing, secrets
from colony_admin.auth.roles import Principal
from colony_admin.deps import Admin, AdminContext, Caller, client_addr
from colony_admin.models import AccountCreate, ImportJob, Role, TokenCreate
from colony_admin.problems import COMMON_RESPONSES, BadRequest, Conflict, NotFound, Problem

log = logging.getLogger("colony.admin.import")
router = APIRouter(prefix="/v1/imports", tags=["bulk import"], responses=COMMON_RESPONSES)

CHUNK = 1000       # aggregates created per pipelined batch
MAX_ERRORS = 100
KEEP_JOBS = 100    # finished jobs kept for their progress record


def _ha1(cmd: AccountCreate) -> dict[str, str]:
    return cmd.sip_ha1.ha1() if cmd.sip_ha1 is not None else {}


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class ImportRun:
    def __init__(self, ctx: AdminContext, who: Principal, addr: str, plan: importer.Plan, admin_tokens: bool,
                 update: bool = False) -> None:
        self.ctx, self.who, self.addr, self.plan, self.admin_tokens = ctx, who, addr, plan, admin_tokens
        self.update = update
        self.job = ImportJob(id=uuid.uuid4().hex, state="running", total=plan.rows, done=len(plan.errors),
                             failed=len(plan.errors), domains_created=0, accounts_created=0,
                             errors=plan.errors[:MAX_ERRORS], warnings=plan.warnings[:MAX_ERRORS])
        self._domains: dict[str, aggregates.State] = {}
        self._cos_exists: dict[str, bool] = {}
        self._last_seq = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"import-{self.job.id}")

    def cancel(self) -> None:
        if self._task:
            self._task.cancel()

    def _error(self, row: int | str, detail: str) -> None:
        self.job.failed += 1
        if len(self.job.errors) < MAX_ERRORS:
            self.job.errors.append(f"row {row}: {detail}")

    async def _run(self) -> None:
        try:
            for chunk in _chunks(list(self.plan.domains.values()), CHUNK):
                await self._create_domains(chunk)
            for chunk in _chunks(self.plan.accounts, CHUNK):
                await self._create_accounts(chunk)
            if self._last_seq:
                await self.ctx.readmodel.wait_for(self._last_seq, timeout=120.0)
            self.job.state = "done"
        except asyncio.CancelledError:
            self.job.state = "failed"
            raise
        except Exception as exc:
            log.exception("import %s failed", self.job.id)
            self.job.state = "failed"
            self.job.errors.append(f"job: {exc}")

    async def _default_cos(self) -> str:
        settings = self.ctx.settings
        if settings.default_cos not in self._cos_exists:
            await self.ctx.provisioning.ensure_cos(settings.default_cos, settings.default_cos_quota_bytes)
            self._cos_exists[settings.default_cos] = True
        return settings.default_cos

    async def _cos_ok(self, name: str | None) -> bool:
        if name is None:
            return True
        if name not in self._cos_exists:
            self._cos_exists[name] = (await self.ctx.provisioning.load(names.AGG_COS, name)).state is not None
        return self._cos_exists[name]

    async def _create_new(self, kind: str, items: list[tuple[str, ev.Event]],
                          sealed: list[sealing.Sealed] | None = None) -> list[int | None]:
        """Create many aggregates at once; None where one exists already.

        ``sealed``: the events of ``items`` with their secrets sealed and those keys stored
        already (``_create_accounts``); without it they are sealed here.  A conflict on a name
        that was deleted before (its subject has events) is not an "exists": it is created
        through the ordinary command path instead.
        """
        keys = self.ctx.provisioning.keys
        if sealed is None:
            # Secrets sealed (auth/sealing.py); the key writes of a batch go out together.
            sealed = await keys.seal_creations([event for _, event in items])
        results = await self.ctx.store.create_many(
            [(names.provisioning_subject(kind, name), s.events[0].encode()) for (name, _), s in zip(items, sealed)])
        out: list[int | None] = []
        for (name, event), seal, result in zip(items, sealed, results, strict=True):
            if isinstance(result, ConcurrencyConflict):
                loaded = await self.ctx.provisioning.load(kind, name)
                # An event built sealed (``sealed`` given) is committed below as it is, naming
                # its fresh key; one sealed here is committed in the clear and sealed again.
                if loaded.state is not None or event is not seal.events[0]:
                    await keys.shred_quietly(seal.fresh, "keys of a creation that lost a race")
                result = None if loaded.state is not None else \
                    (await self.ctx.provisioning.commit(loaded, [event], wait=False)).version
            if result is not None:
                self._last_seq = max(self._last_seq, result)
            out.append(result)
        return out

    async def _fence_aliases(self, domains: list[str]) -> set[str]:
        """Fence each new domain name against domain aliases (``aggregates.fence_name``);
        returns the names that are domain aliases already (those rows fail)."""
        kind = names.AGG_DOMAIN_ALIAS
        fences = [(names.provisioning_subject(kind, d), aggregates.fence_name(None, d, kind)[0].encode())
                  for d in domains]
        results = await self.ctx.store.create_many(fences)
        conflicted = [d for d, r in zip(domains, results, strict=True) if isinstance(r, ConcurrencyConflict)]
        blocked = await asyncio.gather(*(self._fence_again(d) for d in conflicted))
        return {d for d, is_blocked in zip(conflicted, blocked, strict=True) if is_blocked}

    async def _fence_again(self, domain: str) -> bool:
        """The alias subject has history (an old fence from a re-run, a deleted or a live
        alias): fence at its current version unless the domain exists.  True: blocked."""
        if (await self.ctx.provisioning.load(names.AGG_DOMAIN, domain)).state is not None:
            return False  # the domain exists: nothing is created, nothing to fence
        try:
            await self.ctx.provisioning.reserve_name(domain, names.AGG_DOMAIN)
        except Problem as exc:
            self._error(f"domain {domain}", exc.detail)
            return True
        return False

    async def _create_domains(self, cmds: list) -> None:
        items: list[tuple[str, ev.Event]] = []
        for cmd in cmds:
            if cmd.cos is None:
                cmd = cmd.model_copy(update={"cos": await self._default_cos()})
            if not await self._cos_ok(cmd.cos):
                self._error(f"domain {cmd.name}", f"class of service {cmd.cos} does not exist")
                continue
            items.append((cmd.name, aggregates.create_domain(None, cmd)[0]))
        blocked = await self._fence_aliases([name for name, _ in items])
        items = [item for item in items if item[0] not in blocked]
        created: list[str] = []
        for (name, event), seq in zip(items, await self._create_new(names.AGG_DOMAIN, items), strict=True):
            if seq is None:  # an existing domain: its accounts are added to it
                self._domains[name] = (await self.ctx.provisioning.load(names.AGG_DOMAIN, name)).state
                self.job.unchanged += self.plan.domain_only_rows.get(name, 0)
            else:
                self._domains[name] = aggregates.apply(None, event)
                created.append(name)
        self.job.domains_created += len(created)
        self.job.done += sum(self.plan.domain_only_rows.get(cmd.name, 0) for cmd in cmds)
        if created and self.admin_tokens:
            await self._issue_admin_tokens(created)
        if created:
            await self._audit("domain.create", created)

    async def _issue_admin_tokens(self, domains: list[str]) -> None:
        minted, items = [], []
        for domain in domains:
            token_id, token, digest = secrets.new_token()
            cmd = TokenCreate(name=f"admin@{domain}", role=Role.DOMAIN_ADMIN, domain=domain)
            items.append((token_id, aggregates.create_token(None, token_id, cmd, digest, self.who.actor)[0]))
            minted.append({"domain": domain, "token_id": token_id, "token": token})
        for entry, seq in zip(minted, await self._create_new(names.AGG_TOKEN, items), strict=True):
            if seq is not None:
                self.job.tokens.append(entry)
        await self._audit("token.create", [f"{t['token_id']} for {t['domain']}" for t in minted])

    def _prepare_simple(self, row: importer.AccountRow, sealer: sealing.CredentialSealer,
                        ) -> tuple[str, sealing.Sealed] | None:
        """``_prepare_account`` for the common row that needs no I/O (no password to hash, no
        CoS to look up, its domain known): decided here, without a task per row, and its
        event built with its credentials sealed already (no clear event to copy)."""
        fresh = None
        try:
            roles.require_domain(self.who, row.domain)
            cmd = row.account
            hashed, ha1, fresh = sealer.seal(row.password_hash, _ha1(cmd))
            events = aggregates.create_account(None, self._domains[row.domain], row.domain, cmd,
                                               password_hash=hashed, sip_ha1=ha1, cos_exists=True)
        except Problem as exc:
            sealer.forget(fresh)
            self._error(row.row, exc.detail)
            return None
        return f"{cmd.name}@{row.domain}", sealing.Sealed(events, fresh=[fresh] if fresh else [])

    async def _prepare_account(self, row: importer.AccountRow) -> tuple[str, ev.Event] | None:
        try:
            roles.require_domain(self.who, row.domain)
            cmd = row.account
            if cmd.cos is not None:
                roles.require_system(self.who, "choose an account's class of service")
            if row.domain not in self._domains:
                self._domains[row.domain] = (await self.ctx.provisioning.load(names.AGG_DOMAIN, row.domain)).state
            hashed, ha1 = row.password_hash, _ha1(cmd)
            if cmd.password is not None:
                hashed, derived = await self.ctx.provisioning.hash_password(cmd.name, row.domain, cmd.password)
                ha1 = ha1 or derived
            events = aggregates.create_account(None, self._domains[row.domain], row.domain, cmd, password_hash=hashed,
                                               sip_ha1=ha1, cos_exists=await self._cos_ok(cmd.cos))
        except Problem as exc:
            self._error(row.row, exc.detail)
            return None
        return f"{cmd.name}@{row.domain}", events[0]

    async def _create_accounts(self, rows: list[importer.AccountRow]) -> None:
        sealer = sealing.CredentialSealer()
        prepared: list[tuple[str, sealing.Sealed] | None] = [None] * len(rows)
        slow: list[int] = []
        for i, r in enumerate(rows):
            if r.account.password is None and r.account.cos is None and r.domain in self._domains:
                prepared[i] = self._prepare_simple(r, sealer)
            else:
                slow.append(i)
        if slow:  # passwords hash concurrently on the argon2 pool
            for i, p in zip(slow, await asyncio.gather(*(self._prepare_account(rows[i]) for i in slow)), strict=True):
                prepared[i] = None if p is None else (p[0], sealer.seal_event(p[1]))
        items = [(p, r) for p, r in zip(prepared, rows, strict=True) if p is not None]
        await self.ctx.provisioning.keys.store(sealer)  # every key acknowledged before an event names it
        results = await self._create_new(names.AGG_ADDRESS, [(address, s.events[0]) for (address, s), _ in items],
                                         [s for (_, s), _ in items])
        created, existing = [], []
        for ((address, _), row), seq in zip(items, results, strict=True):
            if seq is None:
                existing.append((address, row))
            else:
                created.append(address)
        updated = [a for a in await asyncio.gather(*(self._reconcile(a, r) for a, r in existing)) if a]
        self.job.accounts_created += len(created)
        self.job.done += len(rows)
        if created:
            await self._audit("account.create", created)
        if updated:
            await self._audit("account.update", updated)

    async def _reconcile(self, address: str, row: importer.AccountRow) -> str | None:
        """A row whose account exists: unchanged, a row error, or (``update``) changed.
        Returns the address if it was changed."""
        prov, cmd = self.ctx.provisioning, row.account
        loaded = await prov.load(names.AGG_ADDRESS, address)
        try:
            differs = aggregates.account_differences(loaded.state, address, cmd)
            state = loaded.state
            assert state is not None
            imported = _ha1(cmd)
            new_password = (cmd.password_hash is not None and state["password_hash"] != cmd.password_hash) or (
                cmd.password is not None and not await prov.verify_password(state["password_hash"], cmd.password))
            new_ha1 = any((state.get("sip_ha1") or {}).get(k) != v for k, v in imported.items())
            fields = sorted(differs) + (["password"] if new_password else []) + (["sip_ha1"] if new_ha1 else [])
            if not fields:
                self.job.unchanged += 1
                return None
            if not self.update:
                raise Conflict(f"{address} exists and differs ({', '.join(fields)}); import with update to change it")
            if "cos" in differs and not await self._cos_ok(differs["cos"]):
                raise Conflict(f"class of service {differs['cos']} does not exist")
            hashed, ha1 = None, None
            if new_password and cmd.password is not None:
                hashed, derived = await prov.hash_password(cmd.name, row.domain, cmd.password)
                ha1 = imported or derived
            elif new_password:
                hashed, ha1 = cmd.password_hash, imported
            elif new_ha1:
                hashed, ha1 = state["password_hash"], {**(state.get("sip_ha1") or {}), **imported}
            events = aggregates.update_account(state, address, differs, password_hash=hashed, sip_ha1=ha1)
            outcome = await prov.commit(loaded, events, wait=False)
        except Problem as exc:
            self._error(row.row, exc.detail)
            return None
        self._last_seq = max(self._last_seq, outcome.version)
        self.job.updated += 1
        return address

    async def _audit(self, action: str, targets: list[str]) -> None:
        # One AUDIT event per batch, listing every object it created: the trail stays
        # complete without doubling the number of appends of a bulk import.
        await self.ctx.provisioning.audit(self.who, f"import.{action}", f"import {self.job.id}",
                                          domain=self.who.domain, remote_addr=self.addr,
                                          detail={"created": targets})


@router.post("", response_model=ImportJob, status_code=202,
             summary="Start a bulk import of domains and accounts (CSV or JSON body)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "text/csv": {"schema": {"type": "string"}},
                 "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}}})
async def start_import(
    request: Request, ctx: Admin, who: Caller,
    format: Annotated[Literal["csv", "json"] | None, Query(description="Default: from Content-Type")] = None,
    admin_tokens: Annotated[bool, Query(description="Create a domain-admin token for each new domain")] = False,
    update: Annotated[bool, Query(description="Change existing accounts that differ from their rows "
                                               "(without it they are row errors; equal ones are 'unchanged')")] = False,
) -> ImportJob:
    roles.require_system(who, "run bulk imports")
    body = await request.body()
    fmt = format or ("csv" if "csv" in request.headers.get("content-type", "") else "json")
    try:
        plan = importer.plan(importer.parse(body, fmt))
    except importer.ImportFormatError as exc:
        raise BadRequest(str(exc)) from None
    run = ImportRun(ctx, who, client_addr(request), plan, admin_tokens, update)
    while len(ctx.imports) >= KEEP_JOBS:  # forget the oldest finished job
        oldest = next((k for k, r in ctx.imports.items() if r.job.state != "running"), None)
        if oldest is None:
            break
        del ctx.imports[oldest]
    ctx.imports[run.job.id] = run
    run.start()
    await ctx.provisioning.audit(who, "import.start", f"import {run.job.id}", domain=None,
                                 remote_addr=client_addr(request), detail={"rows": plan.rows, "format": fmt, "update": update})
    return run.job


@router.get("/{job_id}", response_model=ImportJob, summary="Progress of a bulk import")
async def get_import(job_id: str, ctx: Admin, who: Caller) -> ImportJob:
    roles.require_system(who, "read bulk imports")
    run = ctx.imports.get(job_id)
    if run is None:
        raise NotFound(f"no import {job_id} on this instance")
    if run.job.state == "running":
        # Tokens come with the final answer only: polls stay small for 10,000 companies.
        return run.job.model_copy(update={"tokens": []})
    return run.job
