"""/v1/cos: classes of service (system administrators only, reading included: limits are
what the provider sells, and domain administrators must never change them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from colony.bus import names
from colony_admin import aggregates, db, queries
from colony_admin.auth import roles
from colony_admin.deps import Admin, Caller, IfMatch, client_addr
from colony_admin.models import CosCreate, CosOut, CosPatch, Page, check_cos_name
from colony_admin.problems import COMMON_RESPONSES, Invalid
from colony_admin.routes._common import Cursor, Limit, Prefix, apply_all, set_etag

router = APIRouter(prefix="/v1/cos", tags=["classes of service"], responses=COMMON_RESPONSES)


def cos_name(name: str) -> str:
    try:
        return check_cos_name(name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def cos_out(row: dict[str, Any], version: int | None = None) -> CosOut:
    return CosOut(name=row["name"], description=row["description"], limits=row["limits"],
                  version=version if version is not None else row["version"])


@router.get("", response_model=Page[CosOut], summary="List classes of service")
async def list_cos(ctx: Admin, who: Caller, cursor: Cursor = None, limit: Limit = 100,
                   prefix: Prefix = None) -> Page[CosOut]:
    roles.require_system(who, "read classes of service")
    t = db.classes_of_service
    rows, nxt = await ctx.db(queries.page, t, t.c.name, cursor=cursor, prefix=prefix, limit=limit)
    return Page[CosOut](items=[cos_out(r) for r in rows], next_cursor=nxt)


@router.post("", response_model=CosOut, status_code=201, summary="Create a class of service")
async def create_cos(body: CosCreate, request: Request, response: Response, ctx: Admin, who: Caller) -> CosOut:
    roles.require_system(who, "create classes of service")
    loaded = await ctx.provisioning.load(names.AGG_COS, body.name)
    events = aggregates.create_cos(loaded.state, body)
    outcome = await ctx.provisioning.commit(loaded, events)
    await ctx.provisioning.audit(who, "cos.create", body.name, domain=None, remote_addr=client_addr(request))
    set_etag(response, outcome.version)
    return cos_out(apply_all(loaded.state, events), outcome.version)


@router.get("/{name}", response_model=CosOut, summary="One class of service")
async def get_cos(name: str, response: Response, ctx: Admin, who: Caller) -> CosOut:
    name = cos_name(name)
    roles.require_system(who, "read classes of service")
    loaded = await ctx.provisioning.load(names.AGG_COS, name)
    state = aggregates.require(loaded.state, f"class of service {name}")
    set_etag(response, loaded.version)
    return cos_out(state, loaded.version)


@router.patch("/{name}", response_model=CosOut, summary="Change a class of service's limits")
async def patch_cos(name: str, body: CosPatch, request: Request, response: Response, ctx: Admin, who: Caller,
                    expected: IfMatch = None) -> CosOut:
    name = cos_name(name)
    roles.require_system(who, "change class-of-service limits")
    changes = body.changes()
    loaded = await ctx.provisioning.load(names.AGG_COS, name)
    events = aggregates.update_cos(loaded.state, name, changes)
    outcome = await ctx.provisioning.commit(loaded, events, if_match=expected)
    if outcome.changed:
        await ctx.provisioning.audit(who, "cos.update", name, domain=None, remote_addr=client_addr(request),
                                     detail={"changes": sorted(changes)})
    set_etag(response, outcome.version)
    return cos_out(apply_all(loaded.state, events), outcome.version)


@router.delete("/{name}", status_code=204, summary="Delete an unused class of service")
async def delete_cos(name: str, request: Request, ctx: Admin, who: Caller, expected: IfMatch = None) -> Response:
    name = cos_name(name)
    roles.require_system(who, "delete classes of service")
    loaded = await ctx.provisioning.load(names.AGG_COS, name)
    in_use = await ctx.db(queries.cos_in_use, name)
    await ctx.provisioning.commit(loaded, aggregates.delete_cos(loaded.state, name, in_use=in_use), if_match=expected)
    await ctx.provisioning.audit(who, "cos.delete", name, domain=None, remote_addr=client_addr(request))
    return Response(status_code=204)
