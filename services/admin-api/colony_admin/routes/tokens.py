"""/v1/tokens: API tokens (system administrators), and /v1/whoami for every token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from colony.bus import names
from colony_admin import aggregates, db, queries
from colony_admin.auth import roles, secrets
from colony_admin.deps import Admin, Caller, client_addr
from colony_admin.models import Page, Role, TokenCreate, TokenCreated, TokenOut, WhoAmI
from colony_admin.problems import COMMON_RESPONSES, Invalid, NotFound
from colony_admin.routes._common import Cursor, Limit, apply_all, token_out

router = APIRouter(prefix="/v1", tags=["tokens"], responses=COMMON_RESPONSES)


async def issue_token(ctx: Admin, body: TokenCreate, created_by: str) -> tuple[str, dict]:
    """Create a token aggregate; returns (plaintext token, state).  Used by bootstrap and import too."""
    if body.role == Role.DOMAIN_ADMIN and body.domain is not None:
        if (await ctx.provisioning.load(names.AGG_DOMAIN, body.domain)).state is None:
            raise Invalid(f"domain {body.domain} does not exist")
    token_id, token, digest = secrets.new_token()
    loaded = await ctx.provisioning.load(names.AGG_TOKEN, token_id)
    events = aggregates.create_token(loaded.state, token_id, body, digest, created_by)
    await ctx.provisioning.commit(loaded, events)
    return token, apply_all(loaded.state, events)


@router.get("/whoami", response_model=WhoAmI, summary="The calling token's identity and role")
async def whoami(who: Caller) -> WhoAmI:
    return WhoAmI(token_id=who.token_id, name=who.name, role=who.role, domain=who.domain)


@router.get("/tokens", response_model=Page[TokenOut], summary="List API tokens (never their secrets)")
async def list_tokens(ctx: Admin, who: Caller, cursor: Cursor = None, limit: Limit = 100,
                      domain: Annotated[str | None, Query(max_length=320)] = None) -> Page[TokenOut]:
    roles.require_system(who, "list tokens")
    t = db.api_tokens
    where = [t.c.domain == domain.lower()] if domain else None
    rows, nxt = await ctx.db(queries.page, t, t.c.id, where=where, cursor=cursor, limit=limit)
    return Page[TokenOut](items=[token_out(r) for r in rows], next_cursor=nxt)


@router.post("/tokens", response_model=TokenCreated, status_code=201,
             summary="Create a token; the response is the only time its secret is shown")
async def create_token(body: TokenCreate, request: Request, ctx: Admin, who: Caller) -> TokenCreated:
    roles.require_system(who, "create tokens")
    token, state = await issue_token(ctx, body, who.actor)
    await ctx.provisioning.audit(who, "token.create", state["id"], domain=body.domain, remote_addr=client_addr(request),
                                 detail={"role": body.role.value, "name": body.name})
    return TokenCreated(**token_out(state).model_dump(), token=token)


@router.get("/tokens/{token_id}", response_model=TokenOut, summary="One token")
async def get_token(token_id: str, ctx: Admin, who: Caller) -> TokenOut:
    roles.require_system(who, "read tokens")
    # Ids are short and alphanumeric; anything else (a NUL, which PostgreSQL refuses) is unknown.
    if len(token_id) > 64 or not (token_id.isascii() and token_id.isalnum()):
        raise NotFound(f"token {token_id!r} does not exist")
    row = await ctx.db(queries.get, db.api_tokens, db.api_tokens.c.id, token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")
    return token_out(row)


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a token")
async def revoke_token(token_id: str, request: Request, ctx: Admin, who: Caller) -> Response:
    roles.require_system(who, "revoke tokens")
    if len(token_id) > 64:
        raise NotFound(f"token {token_id} does not exist")
    loaded = await ctx.provisioning.load(names.AGG_TOKEN, token_id)
    await ctx.provisioning.commit(loaded, aggregates.revoke_token(loaded.state, token_id))
    domain = loaded.state["domain"] if loaded.state else None
    await ctx.provisioning.audit(who, "token.revoke", token_id, domain=domain, remote_addr=client_addr(request))
    return Response(status_code=204)
