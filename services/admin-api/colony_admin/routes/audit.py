"""/v1/audit: who changed what, when, from where (newest first)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Connection, select

from colony_admin import db
from colony_admin.auth import roles
from colony_admin.deps import Admin, Caller
from colony_admin.models import AuditEntry, Page
from colony_admin.problems import COMMON_RESPONSES, BadRequest
from colony_admin.routes._common import Limit, as_utc
from colony_admin.routes.domains import domain_name

router = APIRouter(prefix="/v1", tags=["audit"], responses=COMMON_RESPONSES)


def _audit_page(conn: Connection, domain: str | None, before: int | None, limit: int) -> list[dict]:
    t = db.audit_log
    query = select(t).order_by(t.c.seq.desc()).limit(limit + 1)
    if domain:
        query = query.where(t.c.domain == domain)
    if before:
        query = query.where(t.c.seq < before)
    return [dict(r) for r in conn.execute(query).mappings().all()]


@router.get("/audit", response_model=Page[AuditEntry], summary="The audit trail, newest first")
async def list_audit(ctx: Admin, who: Caller, limit: Limit = 100,
                     domain: Annotated[str | None, Query(max_length=320)] = None,
                     cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page")] = None,
                     ) -> Page[AuditEntry]:
    dom = domain_name(domain) if domain else None
    roles.require_audit(who, dom)
    if cursor is not None and not cursor.isdigit():
        raise BadRequest("cursor is not one this API handed out")
    rows = await ctx.db(_audit_page, dom, int(cursor) if cursor else None, limit)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[AuditEntry](items=[AuditEntry(**(r | {"at": as_utc(r["at"])})) for r in rows],
                            next_cursor=str(rows[-1]["seq"]) if more and rows else None)
