"""FastAPI dependencies: the admin context on app.state, the caller's identity, If-Match."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from argon2 import PasswordHasher
from fastapi import Depends, Header, Request
from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import Engine

from colony.bus import names
from colony.eventstore import EventStore
from colony.netaddr import counting_unit
from colony.settings import Settings
from colony_admin import db, queries
from colony_admin.auth import secrets
from colony_admin.auth.roles import Principal
from colony_admin.auth.throttle import Throttle
from colony_admin.commands import Provisioning
from colony_admin.models import Role
from colony_admin.problems import BadRequest, TooManyRequests, Unauthorized
from colony_admin.projections.position import PositionTracker
from colony_admin.projections.runner import StreamProjection


@dataclass
class AdminContext:
    """Everything a request needs; one per app, stored as ``app.state.admin``."""

    settings: Settings
    nc: Client
    js: JetStreamContext
    engine: Engine
    store: EventStore
    hasher: PasswordHasher
    throttle: Throttle
    provisioning: Provisioning
    readmodel: PositionTracker  # a StreamProjection here, or a RemoteReadModel (projectors write it)
    usage_projection: StreamProjection | None = None  # None: projectors run it
    audit_projection: StreamProjection | None = None
    auth_service: Any = None
    projections: list[Any] = field(default_factory=list)  # asyncio tasks of projections run here
    imports: dict[str, Any] = field(default_factory=dict)  # running and finished bulk imports

    async def db(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(conn, *args)`` on a read connection in a worker thread."""
        def work():
            with self.engine.connect() as conn:
                return fn(conn, *args, **kwargs)
        return await asyncio.to_thread(work)


def admin(request: Request) -> AdminContext:
    return request.app.state.admin


Admin = Annotated[AdminContext, Depends(admin)]


def client_addr(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def principal(request: Request, ctx: Admin,
                    authorization: Annotated[str | None, Header(description="Bearer <token>")] = None) -> Principal:
    addr = counting_unit(client_addr(request))
    now = time.monotonic()
    wait = ctx.throttle.retry_after(f"ip:{addr}", now)
    if wait:
        raise TooManyRequests("too many failed token checks from this address", retry_after=wait)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send Authorization: Bearer <token>")
    try:
        token_id, secret = secrets.split_token(token.strip())
    except secrets.MalformedToken:
        ctx.throttle.failed(f"ip:{addr}", now)
        raise Unauthorized("unknown token") from None
    # No lockout per token id: a secret of 256 random bits cannot be guessed, so such a lock
    # protected nothing, while anyone could keep a token locked -- ten wrong secrets a minute
    # named with its id (bootstrap0000000 is public; ids appear in audit entries) shut its
    # holder out from everywhere.  Guessing is bounded per client address above.
    row = await ctx.db(queries.get, db.api_tokens, db.api_tokens.c.id, token_id)
    if row is None:
        # Created a moment ago through another instance, not yet in our read model.
        loaded = await ctx.provisioning.load(names.AGG_TOKEN, token_id)
        row = loaded.state
    if row is None or row["revoked"] or not await ctx.provisioning.keys.token_matches(
            token_id, secrets.secret_digest(secret), row["secret_sha256"]):
        ctx.throttle.failed(f"ip:{addr}", now)
        raise Unauthorized("unknown or revoked token")
    ctx.throttle.succeeded(f"ip:{addr}")
    return Principal(token_id=token_id, name=row["name"], role=Role(row["role"]), domain=row["domain"])


Caller = Annotated[Principal, Depends(principal)]


def if_match(if_match: Annotated[str | None, Header(alias="If-Match", description="Version (ETag) the change is based on")] = None) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None  # RFC 9110 13.1.1: "*" asks only that the object exist, which every command checks
    value = if_match.strip().removeprefix("W/").strip('"')
    # ASCII digits only, and few enough for a 64-bit version: int() refused 5,000 of them with
    # a ValueError (a 500), and str.isdigit() also accepts digits int() does not read.
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise BadRequest("If-Match must be a version number as given in the ETag header")
    return int(value)


IfMatch = Annotated[int | None, Depends(if_match)]
