"""/v1/imports: bulk-create domains and accounts from CSV or JSON, with progress.

The import runs as a background job on the instance that accepted it: POST answers 202 with
the job, GET /v1/imports/{id} reports progress (the CLI draws its progress bar from it).
Rows go through the same aggregate rules and optimistic concurrency as single requests;
many appends are in flight at once, which is what makes bulk fast.  Existing domains are
used as they are; an account that exists already is a row error, not a failure of the job.
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
from colony_admin.auth import roles
from colony_admin.auth.roles import Principal
from colony_admin.commands import Loaded
from colony_admin.deps import Admin, AdminContext, Caller, client_addr
from colony_admin.models import ImportJob, Role, TokenCreate
from colony_admin.problems import COMMON_RESPONSES, BadRequest, NotFound, Problem
from colony_admin.routes.tokens import issue_token

log = logging.getLogger("colony.admin.import")
router = APIRouter(prefix="/v1/imports", tags=["bulk import"], responses=COMMON_RESPONSES)

CONCURRENCY = 256
AUDIT_CHUNK = 500
MAX_ERRORS = 100


class ImportRun:
    def __init__(self, ctx: AdminContext, who: Principal, addr: str, plan: importer.Plan, admin_tokens: bool) -> None:
        self.ctx, self.who, self.addr, self.plan, self.admin_tokens = ctx, who, addr, plan, admin_tokens
        self.job = ImportJob(id=uuid.uuid4().hex, state="running", total=plan.rows, done=len(plan.errors),
                             failed=len(plan.errors), domains_created=0, accounts_created=0,
                             errors=plan.errors[:MAX_ERRORS])
        self._domain_states: dict[str, aggregates.State] = {}
        self._last_seq = 0
        self._audit_pending: list[tuple[str, str]] = []
        self._task: asyncio.Task | None = None
        self._flushes: set[asyncio.Task] = set()

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
            sem = asyncio.Semaphore(CONCURRENCY)
            await asyncio.gather(*(self._domain(cmd, sem) for cmd in self.plan.domains.values()))
            await asyncio.gather(*(self._account(row, sem) for row in self.plan.accounts))
            await self._flush_audit()
            await asyncio.gather(*self._flushes)
            if self._last_seq:
                await self.ctx.readmodel.wait_for(self._last_seq, timeout=60.0)
            self.job.state = "done"
        except asyncio.CancelledError:
            self.job.state = "failed"
            raise
        except Exception as exc:
            log.exception("import %s failed", self.job.id)
            self.job.state = "failed"
            self.job.errors.append(f"job: {exc}")

    async def _append_new(self, kind: str, name: str, events: list[ev.Event]) -> int:
        """Create an aggregate expecting version 0 without reading it first (the common case)."""
        subject = names.provisioning_subject(kind, name)
        try:
            seq = await self.ctx.store.append(subject, [e.encode() for e in events], 0)
        except ConcurrencyConflict:
            # It exists, or existed and was deleted: take the careful path.
            loaded = await self.ctx.provisioning.load(kind, name)
            if loaded.state is not None:
                raise
            seq = (await self.ctx.provisioning.commit(loaded, events, wait=False)).version
        self._last_seq = max(self._last_seq, seq)
        return seq

    async def _domain(self, cmd, sem: asyncio.Semaphore) -> None:
        async with sem:
            events = aggregates.create_domain(None, cmd)
            try:
                if cmd.cos is not None and (await self.ctx.provisioning.load(names.AGG_COS, cmd.cos)).state is None:
                    raise Problem(f"class of service {cmd.cos} does not exist")
                await self._append_new(names.AGG_DOMAIN, cmd.name, events)
            except ConcurrencyConflict:
                self._domain_states[cmd.name] = (await self.ctx.provisioning.load(names.AGG_DOMAIN, cmd.name)).state
                return  # existing domain: its accounts are added to it
            except Problem as exc:
                self._error(f"domain {cmd.name}", exc.detail)
                return
            self._domain_states[cmd.name] = aggregates.apply(None, events[0])
            self.job.domains_created += 1
            self._audit(cmd.name, "domain.create")
            if self.admin_tokens:
                token, state = await issue_token(self.ctx, TokenCreate(name=f"admin@{cmd.name}", role=Role.DOMAIN_ADMIN,
                                                                        domain=cmd.name), self.who.actor)
                self.job.tokens.append({"domain": cmd.name, "token_id": state["id"], "token": token})
                self._audit(state["id"], "token.create")

    async def _account(self, row: importer.AccountRow, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                roles.require_domain(self.who, row.domain)
                dom = self._domain_states.get(row.domain)
                cmd = row.account
                hashed, ha1 = row.password_hash, {}
                if cmd.password is not None:
                    hashed, ha1 = await self.ctx.provisioning.hash_password(cmd.name, row.domain, cmd.password)
                cos_ok = cmd.cos is None or (await self.ctx.provisioning.load(names.AGG_COS, cmd.cos)).state is not None
                if cmd.cos is not None:
                    roles.require_system(self.who, "choose an account's class of service")
                events = aggregates.create_account(None, dom, row.domain, cmd, password_hash=hashed, sip_ha1=ha1,
                                                   cos_exists=cos_ok)
                try:
                    await self._append_new(names.AGG_ADDRESS, f"{cmd.name}@{row.domain}", events)
                except ConcurrencyConflict:
                    raise Problem(f"{cmd.name}@{row.domain} exists") from None
            except Problem as exc:
                self._error(row.row, exc.detail)
                return
            finally:
                self.job.done += 1
            self.job.accounts_created += 1
            self._audit(f"{cmd.name}@{row.domain}", "account.create")

    def _audit(self, target: str, action: str) -> None:
        self._audit_pending.append((action, target))
        if len(self._audit_pending) >= AUDIT_CHUNK:
            task = asyncio.create_task(self._flush_audit())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_audit(self) -> None:
        # One AUDIT event per chunk of created objects, listing every one of them: the trail
        # stays complete without doubling the number of appends of a bulk import.
        pending, self._audit_pending = self._audit_pending, []
        if pending:
            await self.ctx.provisioning.audit(
                self.who, "import.chunk", f"import {self.job.id}", domain=self.who.domain,
                remote_addr=self.addr, detail={"created": [f"{a} {t}" for a, t in pending]})


@router.post("", response_model=ImportJob, status_code=202,
             summary="Start a bulk import of domains and accounts (CSV or JSON body)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "text/csv": {"schema": {"type": "string"}},
                 "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}}})
async def start_import(
    request: Request, ctx: Admin, who: Caller,
    format: Annotated[Literal["csv", "json"] | None, Query(description="Default: from Content-Type")] = None,
    admin_tokens: Annotated[bool, Query(description="Create a domain-admin token for each new domain")] = False,
) -> ImportJob:
    roles.require_system(who, "run bulk imports")
    body = await request.body()
    fmt = format or ("csv" if "csv" in request.headers.get("content-type", "") else "json")
    try:
        plan = importer.plan(importer.parse(body, fmt))
    except importer.ImportFormatError as exc:
        raise BadRequest(str(exc)) from None
    run = ImportRun(ctx, who, client_addr(request), plan, admin_tokens)
    # Domain-only rows have nothing more to do once their domain is created: count them now.
    run.job.done += plan.rows - len(plan.errors) - len(plan.accounts)
    ctx.imports[run.job.id] = run
    run.start()
    await ctx.provisioning.audit(who, "import.start", f"import {run.job.id}", domain=None,
                                 remote_addr=client_addr(request), detail={"rows": plan.rows, "format": fmt})
    return run.job


@router.get("/{job_id}", response_model=ImportJob, summary="Progress of a bulk import")
async def get_import(job_id: str, ctx: Admin, who: Caller) -> ImportJob:
    roles.require_system(who, "read bulk imports")
    run = ctx.imports.get(job_id)
    if run is None:
        raise NotFound(f"no import {job_id} on this instance")
    return run.job
