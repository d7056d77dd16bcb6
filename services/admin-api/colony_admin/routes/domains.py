"""/v1/domains: domains, their branding, suspension and domain aliases."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

import uuid

from colony import domain_move
from colony import events as ev
from colony.bus import names
from colony.dns import make_resolver
from colony_admin import aggregates, db, queries, verification
from colony_admin.auth import roles
from colony_admin.deps import Admin, Caller, IfMatch, client_addr
from colony_admin.models import (
    Branding,
    DomainAliasCreate,
    DomainAliasOut,
    DomainCreate,
    DomainMoveOut,
    DomainMoveRequest,
    DomainMoveSummary,
    DomainOut,
    DomainPatch,
    DomainState,
    NameVerification,
    Page,
    Role,
    SuspendRequest,
    TokenOut,
    check_domain,
)
from colony_admin.problems import (
    COMMON_RESPONSES,
    AlreadyInRegion,
    Forbidden,
    Invalid,
    MoveInProgress,
    NoMoveInProgress,
    NotFound,
    UnknownRegion,
)
from colony_admin.routes._common import Cursor, Limit, Prefix, apply_all, set_etag, token_out

router = APIRouter(prefix="/v1/domains", tags=["domains"], responses=COMMON_RESPONSES)


def domain_name(domain: str) -> str:
    try:
        return check_domain(domain)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def domain_out(row: dict[str, Any], version: int | None = None) -> DomainOut:
    move = row.get("move")  # the aggregate's state; a read-model row has the move's columns
    if move is None and row.get("move_id") is not None:
        move = {"move_id": row["move_id"], "source": row.get("move_source") or "",
                "target": row.get("move_target") or "", "phase": row.get("move_phase")}
    return DomainOut(name=row["name"], state=row["state"], home_region=row["home_region"], cos=row["cos"],
                     branding=Branding(**row["branding"]), storage=row["storage"],
                     dmarc_enforcement=row.get("dmarc_enforcement"),
                     move=DomainMoveSummary(**{k: move[k] for k in ("move_id", "source", "target", "phase")})
                     if move is not None else None,
                     version=version if version is not None else row["version"])


async def default_cos(ctx: Admin) -> str:
    """The class a domain gets when none is given, created the first time it is needed."""
    await ctx.provisioning.ensure_cos(ctx.settings.default_cos, ctx.settings.default_cos_quota_bytes)
    return ctx.settings.default_cos


async def _require_cos(ctx: Admin, cos: str | None) -> None:
    if cos is not None and (await ctx.provisioning.load(names.AGG_COS, cos)).state is None:
        raise Invalid(f"class of service {cos} does not exist")


@router.get("", response_model=Page[DomainOut], summary="List domains (cursor pagination, prefix search)")
async def list_domains(ctx: Admin, who: Caller, cursor: Cursor = None, limit: Limit = 100,
                       prefix: Prefix = None) -> Page[DomainOut]:
    only = roles.visible_domain_filter(who)
    where = [db.domains.c.name == only] if only else None
    rows, nxt = await ctx.db(queries.page, db.domains, db.domains.c.name, where=where, cursor=cursor,
                             prefix=prefix.lower() if prefix else None, limit=limit)
    return Page[DomainOut](items=[domain_out(r) for r in rows], next_cursor=nxt)


@router.post("", response_model=DomainOut, status_code=201, summary="Create a domain (system admin)")
async def create_domain(body: DomainCreate, request: Request, response: Response, ctx: Admin, who: Caller) -> DomainOut:
    roles.require_system(who, "create domains")
    if body.cos is None:
        body = body.model_copy(update={"cos": await default_cos(ctx)})
    await _require_cos(ctx, body.cos)
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, body.name)
    if loaded.state is None:
        await ctx.provisioning.reserve_name(body.name, names.AGG_DOMAIN)
    events = aggregates.create_domain(loaded.state, body)
    outcome = await ctx.provisioning.commit(loaded, events)
    await ctx.provisioning.audit(who, "domain.create", body.name, domain=body.name, remote_addr=client_addr(request))
    set_etag(response, outcome.version)
    return domain_out(apply_all(loaded.state, events), outcome.version)


@router.get("/{domain}", response_model=DomainOut, summary="One domain")
async def get_domain(domain: str, response: Response, ctx: Admin, who: Caller) -> DomainOut:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    state = aggregates.require(loaded.state, f"domain {domain}")
    set_etag(response, loaded.version)
    return domain_out(state, loaded.version)


@router.patch("/{domain}", response_model=DomainOut, summary="Change a domain's settings (system admin)")
async def patch_domain(domain: str, body: DomainPatch, request: Request, response: Response, ctx: Admin,
                       who: Caller, expected: IfMatch = None) -> DomainOut:
    domain = domain_name(domain)
    roles.require_system(who, "change domain settings")
    changes = body.changes()
    if "cos" in changes and changes["cos"] is None:
        changes["cos"] = await default_cos(ctx)  # no domain is without a class of service
    if "cos" in changes:
        await _require_cos(ctx, changes["cos"])
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    # Checked against the read model, as a domain deletion is: an account created elsewhere a
    # moment ago may not be in it yet.
    has_accounts = "home_region" in changes and await ctx.db(queries.domain_has_accounts, domain)
    events = aggregates.update_domain(loaded.state, domain, changes, has_accounts=has_accounts)
    outcome = await ctx.provisioning.commit(loaded, events, if_match=expected)
    if outcome.changed:
        await ctx.provisioning.audit(who, "domain.update", domain, domain=domain, remote_addr=client_addr(request),
                                     detail={"changes": sorted(changes)})
    set_etag(response, outcome.version)
    return domain_out(apply_all(loaded.state, events), outcome.version)


@router.put("/{domain}/branding", response_model=DomainOut, summary="Replace a domain's branding (domain admin)")
async def put_branding(domain: str, body: Branding, request: Request, response: Response, ctx: Admin, who: Caller,
                       expected: IfMatch = None) -> DomainOut:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    events = aggregates.update_domain(loaded.state, domain, {"branding": body.model_dump(mode="json")},
                                      has_accounts=False)  # branding never re-homes
    outcome = await ctx.provisioning.commit(loaded, events, if_match=expected)
    if outcome.changed:
        await ctx.provisioning.audit(who, "domain.branding", domain, domain=domain, remote_addr=client_addr(request))
    set_etag(response, outcome.version)
    return domain_out(apply_all(loaded.state, events), outcome.version)


async def _set_state(domain: str, new: DomainState, reason: str, request: Request, response: Response,
                     ctx: Admin, who: Caller, expected: int | None) -> DomainOut:
    domain = domain_name(domain)
    roles.require_system(who, "suspend or resume domains")
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    events = aggregates.set_domain_state(loaded.state, domain, new, reason)
    outcome = await ctx.provisioning.commit(loaded, events, if_match=expected)
    if outcome.changed:
        await ctx.provisioning.audit(who, f"domain.{'suspend' if new == DomainState.SUSPENDED else 'resume'}", domain,
                                     domain=domain, remote_addr=client_addr(request), detail={"reason": reason})
    set_etag(response, outcome.version)
    return domain_out(apply_all(loaded.state, events), outcome.version)


@router.post("/{domain}/suspend", response_model=DomainOut, summary="Suspend a domain: its accounts cannot log in")
async def suspend_domain(domain: str, request: Request, response: Response, ctx: Admin, who: Caller,
                         body: SuspendRequest | None = None, expected: IfMatch = None) -> DomainOut:
    return await _set_state(domain, DomainState.SUSPENDED, body.reason if body else "", request, response, ctx, who,
                            expected)


@router.post("/{domain}/resume", response_model=DomainOut, summary="Re-activate a suspended domain")
async def resume_domain(domain: str, request: Request, response: Response, ctx: Admin, who: Caller,
                        expected: IfMatch = None) -> DomainOut:
    return await _set_state(domain, DomainState.ACTIVE, "", request, response, ctx, who, expected)


@router.delete("/{domain}", status_code=204, summary="Delete a domain with no accounts, aliases or domain aliases")
async def delete_domain(domain: str, request: Request, ctx: Admin, who: Caller, expected: IfMatch = None) -> Response:
    domain = domain_name(domain)
    roles.require_system(who, "delete domains")
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    busy = await ctx.db(queries.domain_has_addresses, domain)
    events = aggregates.delete_domain(loaded.state, domain, has_addresses=busy)
    await ctx.provisioning.commit(loaded, events, if_match=expected)
    await ctx.provisioning.audit(who, "domain.delete", domain, domain=domain, remote_addr=client_addr(request))
    return Response(status_code=204)


# --- moving a domain to another region ----------------------------------------------------------

_MOVE_REFUSALS = {"unknown-domain": NotFound, "unknown-region": UnknownRegion,
                  "already-in-region": AlreadyInRegion, "domain-move-in-progress": MoveInProgress,
                  "no-move-in-progress": NoMoveInProgress}


async def _move_events(ctx: Admin, domain: str) -> list[ev.Event]:
    """The domain's events and its move's per-account progress, in stream order (a copy
    result counts only after the copying event that fixed the accounts)."""
    stored = [*await ctx.provisioning.store.read(names.provisioning_subject(names.AGG_DOMAIN, domain)),
              *await ctx.provisioning.store.read(names.provisioning_subject(names.AGG_DOMAIN_MOVE, domain))]
    stored.sort(key=lambda s: s.seq)
    return [ev.decode(s.data) for s in stored]


def _move_out(move: domain_move.Move) -> DomainMoveOut:
    stuck = None
    if move.phase in (domain_move.Phase.COPYING, domain_move.Phase.SEALING):
        # The rules' own verdict (the default number of attempts, as the driver uses).
        step = domain_move.next_step(move, domain_move.Observations(), now=move.since, epoch=move.epoch,
                                     settle=timedelta(0))
        stuck = step.why if isinstance(step, domain_move.Stuck) else None
    return DomainMoveOut(**move.progress(), stuck=stuck)


@router.post("/{domain}/move", response_model=DomainMoveOut, status_code=202,
             summary="Move a domain and its stored mail to another region (system admin)")
async def move_domain(domain: str, body: DomainMoveRequest, request: Request, response: Response, ctx: Admin,
                      who: Caller) -> DomainMoveOut:
    """Records the request; the primary region's active controller carries the move out
    (routing, copying, sealing, flipped, done) and ``GET …/move`` follows it."""
    domain = domain_name(domain)
    roles.require_system(who, "move domains between regions")
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    history = await _move_events(ctx, domain)
    try:
        events = domain_move.request_move(domain_move.fold(history), loaded.state, domain, body.region,
                                          ctx.settings.region_list, uuid.uuid4().hex, requested_by=who.actor)
    except domain_move.MoveRefused as refused:
        raise _MOVE_REFUSALS[refused.reason](str(refused), domain=domain) from None
    outcome = await ctx.provisioning.commit(loaded, events)
    await ctx.provisioning.audit(who, "domain.move", domain, domain=domain, remote_addr=client_addr(request),
                                 detail={"target": body.region, "move_id": events[0].move_id})
    response.headers["Location"] = f"/v1/domains/{domain}/move"
    set_etag(response, outcome.version)
    return _move_out(domain_move.fold([*history, *events]))


@router.get("/{domain}/move", response_model=DomainMoveOut, summary="The progress of the domain's latest move")
async def get_domain_move(domain: str, ctx: Admin, who: Caller) -> DomainMoveOut:
    domain = domain_name(domain)
    roles.require_system(who, "follow domain moves")
    history = await _move_events(ctx, domain)
    move = domain_move.fold(history)
    if aggregates.fold(e for e in history if not isinstance(e, ev.DomainMoveAccountCopied)) is None:
        raise NotFound(f"domain {domain} does not exist")
    if move is None:
        raise NotFound(f"domain {domain} has never been moved (POST /v1/domains/{domain}/move starts a move)")
    return _move_out(move)


@router.delete("/{domain}/move", response_model=DomainMoveOut,
               summary="Cancel a move that has not started (phase requested; system admin)")
async def cancel_domain_move(domain: str, request: Request, response: Response, ctx: Admin,
                             who: Caller) -> DomainMoveOut:
    domain = domain_name(domain)
    roles.require_system(who, "move domains between regions")
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    aggregates.require(loaded.state, f"domain {domain}")
    history = await _move_events(ctx, domain)
    try:
        events = domain_move.cancel_move(domain_move.fold(history), domain, cancelled_by=who.actor)
    except domain_move.MoveRefused as refused:
        raise _MOVE_REFUSALS[refused.reason](str(refused), domain=domain) from None
    # Expecting the version read: a controller that starts the move meanwhile wins, and the
    # cancel is refused (409 conflict) rather than withdrawing a move already routing mail.
    outcome = await ctx.provisioning.commit(loaded, events)
    await ctx.provisioning.audit(who, "domain.move_cancel", domain, domain=domain, remote_addr=client_addr(request),
                                 detail={"move_id": events[0].move_id})
    set_etag(response, outcome.version)
    return _move_out(domain_move.fold([*history, *events]))


# --- domain aliases ------------------------------------------------------------------------------

@router.get("/{domain}/domain-aliases", response_model=Page[DomainAliasOut], summary="Other names of a domain")
async def list_domain_aliases(domain: str, ctx: Admin, who: Caller, cursor: Cursor = None,
                              limit: Limit = 100) -> Page[DomainAliasOut]:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    t = db.domain_aliases
    rows, nxt = await ctx.db(queries.page, t, t.c.name, where=[t.c.domain == domain], cursor=cursor, limit=limit)
    return Page[DomainAliasOut](items=[DomainAliasOut(**r) for r in rows], next_cursor=nxt)


async def _verification(ctx: Admin, domain: str, alias: str) -> NameVerification:
    stored = await ctx.store.read(names.provisioning_subject(names.AGG_DOMAIN, domain))
    state, incarnation = aggregates.fold_with_incarnation((s.seq, ev.decode(s.data)) for s in stored)
    aggregates.require(state, f"domain {domain}")
    tok = verification.token(domain, incarnation, alias)
    seen, lookup_error = False, None
    try:
        seen = await verification.published(make_resolver(ctx.settings), alias, tok)
    except verification.LookupFailed as exc:
        lookup_error = str(exc)
    return NameVerification(name=alias, domain=domain, record_name=alias, record_value=verification.record_value(tok),
                            verified=seen, lookup_error=lookup_error)


@router.get("/{domain}/domain-aliases/{alias}/verification", response_model=NameVerification,
            summary="The DNS record that proves control of a name before it can become a domain alias")
async def get_name_verification(domain: str, alias: str, ctx: Admin, who: Caller) -> NameVerification:
    domain, alias = domain_name(domain), domain_name(alias)
    roles.require_domain(who, domain)
    return await _verification(ctx, domain, alias)


@router.post("/{domain}/domain-aliases", response_model=DomainAliasOut, status_code=201,
             summary="Add another name for a domain (domain administrators: once DNS proves the name is theirs)")
async def create_domain_alias(domain: str, body: DomainAliasCreate, request: Request, ctx: Admin,
                              who: Caller) -> DomainAliasOut:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    if who.role != Role.SYSTEM_ADMIN:
        proof = await _verification(ctx, domain, body.name)
        if not proof.verified:
            raise Forbidden(proof.lookup_error or
                            f"prove that {body.name} is yours first: publish the DNS record {body.name} TXT "
                            f"\"{proof.record_value}\" (GET …/domain-aliases/{body.name}/verification shows it)")
    dom = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN_ALIAS, body.name)
    aggregates.create_domain_alias(loaded.state, dom.state, body.name, domain)  # refuse before fencing
    await ctx.provisioning.reserve_name(body.name, names.AGG_DOMAIN_ALIAS)
    events = aggregates.create_domain_alias(loaded.state, dom.state, body.name, domain)
    outcome = await ctx.provisioning.commit(loaded, events)
    await ctx.provisioning.audit(who, "domain_alias.create", body.name, domain=domain, remote_addr=client_addr(request),
                                 detail={"proof": "dns" if who.role != Role.SYSTEM_ADMIN else "system-admin"})
    return DomainAliasOut(name=body.name, domain=domain, version=outcome.version)


@router.delete("/{domain}/domain-aliases/{alias}", status_code=204, summary="Remove a domain alias")
async def delete_domain_alias(domain: str, alias: str, request: Request, ctx: Admin, who: Caller) -> Response:
    domain, alias = domain_name(domain), domain_name(alias)
    roles.require_domain(who, domain)
    loaded = await ctx.provisioning.load(names.AGG_DOMAIN_ALIAS, alias)
    await ctx.provisioning.commit(loaded, aggregates.delete_domain_alias(loaded.state, alias, domain))
    await ctx.provisioning.audit(who, "domain_alias.delete", alias, domain=domain, remote_addr=client_addr(request))
    return Response(status_code=204)


@router.get("/{domain}/admins", response_model=list[TokenOut], summary="The domain's administrators (their tokens)")
async def list_domain_admins(domain: str, ctx: Admin, who: Caller,
                             include_revoked: Annotated[bool, Query()] = False) -> list[TokenOut]:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    t = db.api_tokens
    where = [t.c.domain == domain] if include_revoked else [t.c.domain == domain, t.c.revoked.is_(False)]
    rows, _ = await ctx.db(queries.page, t, t.c.id, where=where, limit=1000)
    return [token_out(r) for r in rows]
