"""/v1/domains/{domain}/accounts and …/aliases: a domain's addresses."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from colony.bus import names
from colony_admin import aggregates, db, queries
from colony_admin.auth import roles
from colony_admin.deps import Admin, Caller, IfMatch, client_addr
from colony_admin.models import (
    AccountCreate,
    AccountOut,
    AccountPatch,
    AliasCreate,
    AliasOut,
    AliasPatch,
    Page,
    SipCredentials,
    Vacation,
    check_local,
)
from colony_admin.problems import COMMON_RESPONSES, Invalid
from colony_admin.routes._common import Cursor, Limit, Prefix, apply_all, set_etag
from colony_admin.routes.domains import domain_name

router = APIRouter(prefix="/v1/domains/{domain}", tags=["accounts"], responses=COMMON_RESPONSES)


def local_name(name: str) -> str:
    try:
        return check_local(name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def account_out(row: dict[str, Any], version: int | None = None) -> AccountOut:
    return AccountOut(address=row["address"], domain=row["domain"], name=row["name"], real_name=row["real_name"],
                      cos=row["cos"], quota_bytes=row["quota_bytes"], services=row["services"],
                      forwarding=row["forwarding"], forward_keep_copy=bool(row.get("forward_keep_copy")),
                      vacation=row.get("vacation"), state=row["state"], has_password=bool(row["password_hash"]),
                      version=version if version is not None else row["version"])


def alias_out(row: dict[str, Any], version: int | None = None) -> AliasOut:
    return AliasOut(address=row["address"], domain=row["domain"], name=row["name"], targets=row["targets"],
                    version=version if version is not None else row["version"])


def imported_ha1(domain: str, sip: SipCredentials | None) -> dict[str, str]:
    """Imported SIP credentials; HA1 is bound to its realm, and a domain's realm is its name."""
    if sip is None:
        return {}
    if sip.realm is not None and sip.realm != domain:
        raise Invalid(f"SIP credentials for realm {sip.realm} do not work in {domain} (its realm is {domain})")
    return sip.ha1()


async def credentials(ctx: Admin, name: str, domain: str, password: str | None, password_hash: str | None,
                      sip: SipCredentials | None) -> tuple[str | None, dict[str, str]]:
    """(stored password hash, HA1 per algorithm) for a plaintext password or imported hashes."""
    ha1 = imported_ha1(domain, sip)
    if password is not None:
        hashed, derived = await ctx.provisioning.hash_password(name, domain, password)
        return hashed, ha1 or derived
    return password_hash, ha1


async def cos_exists(ctx: Admin, cos: str | None) -> bool:
    return cos is None or (await ctx.provisioning.load(names.AGG_COS, cos)).state is not None


# --- accounts -------------------------------------------------------------------------------------

@router.get("/accounts", response_model=Page[AccountOut], summary="List a domain's accounts")
async def list_accounts(domain: str, ctx: Admin, who: Caller, cursor: Cursor = None, limit: Limit = 100,
                        prefix: Prefix = None) -> Page[AccountOut]:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    t = db.accounts
    # Keyed on (domain, name): the unique index serves both the page and the prefix range.
    rows, nxt = await ctx.db(queries.page, t, t.c.name, where=[t.c.domain == domain], cursor=cursor,
                             prefix=prefix.lower() if prefix else None, limit=limit)
    return Page[AccountOut](items=[account_out(r) for r in rows], next_cursor=nxt)


@router.post("/accounts", response_model=AccountOut, status_code=201, summary="Create an account")
async def create_account(domain: str, body: AccountCreate, request: Request, response: Response, ctx: Admin,
                         who: Caller) -> AccountOut:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    if body.cos is not None:
        roles.require_system(who, "choose an account's class of service")
    dom = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, f"{body.name}@{domain}")
    hashed, ha1 = (body.password_hash, imported_ha1(domain, body.sip_ha1))
    if body.password is not None and loaded.state is None and dom.state is not None:
        hashed, ha1 = await credentials(ctx, body.name, domain, body.password, None, body.sip_ha1)
    events = aggregates.create_account(loaded.state, dom.state, domain, body, password_hash=hashed, sip_ha1=ha1,
                                       cos_exists=await cos_exists(ctx, body.cos))
    outcome = await ctx.provisioning.commit(loaded, events)
    await ctx.provisioning.audit(who, "account.create", f"{body.name}@{domain}", domain=domain,
                                 remote_addr=client_addr(request))
    set_etag(response, outcome.version)
    return account_out(apply_all(loaded.state, events), outcome.version)


@router.get("/accounts/{name}", response_model=AccountOut, summary="One account")
async def get_account(domain: str, name: str, response: Response, ctx: Admin, who: Caller) -> AccountOut:
    domain, name = domain_name(domain), local_name(name)
    roles.require_domain(who, domain)
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, f"{name}@{domain}")
    state = aggregates.require_kind(loaded.state, "account", f"{name}@{domain}")
    set_etag(response, loaded.version)
    return account_out(state, loaded.version)


@router.patch("/accounts/{name}", response_model=AccountOut, summary="Change an account")
async def patch_account(domain: str, name: str, body: AccountPatch, request: Request, response: Response,
                        ctx: Admin, who: Caller, expected: IfMatch = None) -> AccountOut:
    domain, name = domain_name(domain), local_name(name)
    roles.require_domain(who, domain)
    changes = body.changes()
    password = changes.pop("password", None)
    password_hash = changes.pop("password_hash", None)
    changes.pop("sip_ha1", None)
    if "cos" in changes:
        roles.require_system(who, "change an account's class of service")
        if not await cos_exists(ctx, changes["cos"]):
            raise Invalid(f"class of service {changes['cos']} does not exist")
    address = f"{name}@{domain}"
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, address)
    aggregates.require_kind(loaded.state, "account", address)
    hashed, ha1 = await credentials(ctx, name, domain, password, password_hash, body.sip_ha1)
    if hashed is None and body.sip_ha1 is not None:
        hashed = loaded.state["password_hash"]  # new SIP credentials only: the password stays
    if hashed is None:
        ha1 = None
    events = aggregates.update_account(loaded.state, address, changes, password_hash=hashed, sip_ha1=ha1)
    outcome = await ctx.provisioning.commit(loaded, events, if_match=expected)
    if outcome.changed:
        await ctx.provisioning.audit(who, "account.update", address, domain=domain, remote_addr=client_addr(request),
                                     detail={"changes": sorted(changes) + (["password"] if password or password_hash else [])
                                             + (["sip_ha1"] if body.sip_ha1 else [])})
    set_etag(response, outcome.version)
    return account_out(apply_all(loaded.state, events), outcome.version)


async def _set_vacation(domain: str, name: str, vacation: Vacation | None, request: Request, response: Response,
                        ctx: Admin, who: Caller, expected: int | None) -> AccountOut:
    domain, name = domain_name(domain), local_name(name)
    roles.require_domain(who, domain)
    address = f"{name}@{domain}"
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, address)
    value = vacation.model_dump(mode="json") if vacation is not None else None
    events = aggregates.update_account(loaded.state, address, {"vacation": value})
    outcome = await ctx.provisioning.commit(loaded, events, if_match=expected)
    if outcome.changed:
        await ctx.provisioning.audit(who, "account.vacation", address, domain=domain, remote_addr=client_addr(request),
                                     detail={"vacation": "set" if value else "cleared"})
    set_etag(response, outcome.version)
    return account_out(apply_all(loaded.state, events), outcome.version)


@router.put("/accounts/{name}/vacation", response_model=AccountOut,
            summary="Set an account's automatic reply (out of office); the same as PATCH with vacation")
async def put_vacation(domain: str, name: str, body: Vacation, request: Request, response: Response, ctx: Admin,
                       who: Caller, expected: IfMatch = None) -> AccountOut:
    return await _set_vacation(domain, name, body, request, response, ctx, who, expected)


@router.delete("/accounts/{name}/vacation", response_model=AccountOut, summary="Remove an account's automatic reply")
async def delete_vacation(domain: str, name: str, request: Request, response: Response, ctx: Admin, who: Caller,
                          expected: IfMatch = None) -> AccountOut:
    return await _set_vacation(domain, name, None, request, response, ctx, who, expected)


@router.delete("/accounts/{name}", status_code=204, summary="Delete an account")
async def delete_account(domain: str, name: str, request: Request, ctx: Admin, who: Caller,
                         expected: IfMatch = None) -> Response:
    domain, name = domain_name(domain), local_name(name)
    roles.require_domain(who, domain)
    address = f"{name}@{domain}"
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, address)
    await ctx.provisioning.commit(loaded, aggregates.delete_account(loaded.state, address), if_match=expected)
    await ctx.provisioning.audit(who, "account.delete", address, domain=domain, remote_addr=client_addr(request))
    return Response(status_code=204)


# --- aliases ----------------------------------------------------------------------------------------

@router.get("/aliases", response_model=Page[AliasOut], summary="List a domain's aliases", tags=["aliases"])
async def list_aliases(domain: str, ctx: Admin, who: Caller, cursor: Cursor = None, limit: Limit = 100,
                       prefix: Prefix = None) -> Page[AliasOut]:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    t = db.aliases
    rows, nxt = await ctx.db(queries.page, t, t.c.name, where=[t.c.domain == domain], cursor=cursor,
                             prefix=prefix.lower() if prefix else None, limit=limit)
    return Page[AliasOut](items=[alias_out(r) for r in rows], next_cursor=nxt)


@router.post("/aliases", response_model=AliasOut, status_code=201, summary="Create an alias", tags=["aliases"])
async def create_alias(domain: str, body: AliasCreate, request: Request, response: Response, ctx: Admin,
                       who: Caller) -> AliasOut:
    domain = domain_name(domain)
    roles.require_domain(who, domain)
    dom = await ctx.provisioning.load(names.AGG_DOMAIN, domain)
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, f"{body.name}@{domain}")
    events = aggregates.create_alias(loaded.state, dom.state, domain, body)
    outcome = await ctx.provisioning.commit(loaded, events)
    await ctx.provisioning.audit(who, "alias.create", f"{body.name}@{domain}", domain=domain,
                                 remote_addr=client_addr(request))
    set_etag(response, outcome.version)
    return alias_out(apply_all(loaded.state, events), outcome.version)


@router.get("/aliases/{name}", response_model=AliasOut, summary="One alias", tags=["aliases"])
async def get_alias(domain: str, name: str, response: Response, ctx: Admin, who: Caller) -> AliasOut:
    domain, name = domain_name(domain), local_name(name)
    roles.require_domain(who, domain)
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, f"{name}@{domain}")
    state = aggregates.require_kind(loaded.state, "alias", f"{name}@{domain}")
    set_etag(response, loaded.version)
    return alias_out(state, loaded.version)


@router.put("/aliases/{name}", response_model=AliasOut, summary="Replace an alias's targets", tags=["aliases"])
async def put_alias(domain: str, name: str, body: AliasPatch, request: Request, response: Response, ctx: Admin,
                    who: Caller, expected: IfMatch = None) -> AliasOut:
    domain, name = domain_name(domain), local_name(name)
    roles.require_domain(who, domain)
    address = f"{name}@{domain}"
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, address)
    events = aggregates.update_alias(loaded.state, address, list(body.targets))
    outcome = await ctx.provisioning.commit(loaded, events, if_match=expected)
    if outcome.changed:
        await ctx.provisioning.audit(who, "alias.update", address, domain=domain, remote_addr=client_addr(request))
    set_etag(response, outcome.version)
    return alias_out(apply_all(loaded.state, events), outcome.version)


@router.delete("/aliases/{name}", status_code=204, summary="Delete an alias", tags=["aliases"])
async def delete_alias(domain: str, name: str, request: Request, ctx: Admin, who: Caller,
                       expected: IfMatch = None) -> Response:
    domain, name = domain_name(domain), local_name(name)
    roles.require_domain(who, domain)
    address = f"{name}@{domain}"
    loaded = await ctx.provisioning.load(names.AGG_ADDRESS, address)
    await ctx.provisioning.commit(loaded, aggregates.delete_alias(loaded.state, address), if_match=expected)
    await ctx.provisioning.audit(who, "alias.delete", address, domain=domain, remote_addr=client_addr(request))
    return Response(status_code=204)
