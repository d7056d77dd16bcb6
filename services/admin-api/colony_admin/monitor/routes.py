"""The cluster monitor page (the seed's "Monitors/Cluster"): every instance live, and the
Make Not-Ready / Ready buttons.

For system administrators only.  ``GET /monitor`` renders the table on the server; the page's
script then follows ``GET /monitor/events`` (server-sent events: the whole cluster view and
the recent transitions once a second, so a lost event costs nothing) and presses the buttons
with ``POST /monitor/nodes/{id}/drain|ready``, which ask the controller exactly like
``colony drain/ready`` and ``POST /v1/cluster/nodes/{id}/drain`` (epoch-checked there) and
are audited the same way.  Log-in and the cookie: ``session.py``.  Nothing is loaded from
outside the admin API: the script and style are package data served under
``/monitor/static``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from nats.aio.client import Client
from nats.js.api import DeliverPolicy, ConsumerConfig

from colony import events
from colony.bus import names
from colony.bus.connection import unsubscribe_all
from colony.cluster.control import ask_controller
from colony.cluster.view import cluster_view, regions_view
from colony_admin import db, queries
from colony_admin.auth.roles import Principal
from colony_admin.deps import AdminContext, client_addr, principal
from colony_admin.models import Role
from colony_admin.monitor import session
from colony_admin.problems import Problem

log = logging.getLogger("colony.admin.monitor")

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(prefix="/monitor", include_in_schema=False)

MAX_FORM = 4096            # the log-in form is one token: anything longer is refused unread
TRANSITIONS_KEPT = 50      # recent transitions the page shows
HISTORY = timedelta(hours=6)
SSE_PERIOD = 1.0


class TransitionFeed:
    """The recent node transitions and elections from the CLUSTER stream (ordered consumers
    from ``HISTORY`` ago, then live), newest last, at most ``TRANSITIONS_KEPT``."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.recent: deque[dict] = deque(maxlen=TRANSITIONS_KEPT)
        self.cached: tuple[float, dict] | None = None  # (monotonic time, snapshot) shared by every page
        self._subs: list = []
        self._starting: asyncio.Lock = asyncio.Lock()

    async def ensure_started(self) -> None:
        async with self._starting:
            if self._subs:
                return
            js = self.nc.jetstream()
            since = (datetime.now(UTC) - HISTORY).isoformat().replace("+00:00", "Z")
            for kind in ("node", "controller"):
                self._subs.append(await js.subscribe(
                    names.cluster_event_subject(kind), stream=names.STREAM_CLUSTER, ordered_consumer=True,
                    cb=self._on_msg, deliver_policy=DeliverPolicy.BY_START_TIME,
                    config=ConsumerConfig(opt_start_time=since)))

    async def _on_msg(self, msg) -> None:
        try:
            event = events.decode(msg.data)
        except events.UnknownEvent:
            return  # a newer producer's event: the page shows what it understands
        if isinstance(event, events.NodeStateChanged):
            row = {"at": event.at.isoformat(), "node": event.node_id, "what": f"{event.old or '-'} -> {event.new}",
                   "detail": event.reason + (f" (by {event.by})" if event.by and event.by != event.node_id else "")}
        elif isinstance(event, events.ControllerElected):
            row = {"at": event.at.isoformat(), "node": event.node_id, "what": f"controller (epoch {event.epoch})",
                   "detail": event.how + (f", after {event.previous}" if event.previous else "")}
        else:
            return
        self.recent.append(row)

    def rows(self) -> list[dict]:
        return sorted(self.recent, key=lambda r: r["at"])[-TRANSITIONS_KEPT:]

    async def stop(self) -> None:
        await unsubscribe_all(self._subs)
        self._subs.clear()


def install(app: FastAPI, ctx_nc: Client, cluster_secret_file: Path | None,
            accepting: Callable[[], bool] = lambda: True) -> TransitionFeed:
    """Add the monitor to ``app``: the routes, the static files, the session key and feed.
    ``accepting``: False while this admin API drains -- open event streams then end (the
    browser's EventSource reconnects, through the balancer, to another instance), so an
    open page never keeps a draining instance busy."""
    app.state.monitor_key = session.session_key(cluster_secret_file)
    app.state.monitor_accepting = accepting
    app.state.monitor_feed = feed = TransitionFeed(ctx_nc)
    app.include_router(router)
    app.mount("/monitor/static", StaticFiles(directory=str(HERE / "static")), name="monitor-static")
    return feed


def _key(request: Request) -> bytes:
    return request.app.state.monitor_key


async def _system_admin(ctx: AdminContext, token_id: str) -> Principal | None:
    """The token's holder if it is a live system-admin token (re-checked on every request)."""
    row = await ctx.db(queries.get, db.api_tokens, db.api_tokens.c.id, token_id)
    if row is None:  # made a moment ago through another instance, not yet in our read model
        row = (await ctx.provisioning.load(names.AGG_TOKEN, token_id)).state
    if row is None or row["revoked"] or Role(row["role"]) != Role.SYSTEM_ADMIN:
        return None
    return Principal(token_id=token_id, name=row["name"], role=Role(row["role"]), domain=row["domain"])


async def _caller(request: Request) -> Principal | None:
    token_id = session.verify(_key(request), request.cookies.get(session.COOKIE), time.time())
    return await _system_admin(request.app.state.admin, token_id) if token_id else None


def _login_page(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"error": error}, status_code=status)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request):
    return _login_page(request)


def _same_origin(request: Request) -> bool:
    """A cross-site POST (log-in CSRF) carries another site's Origin; browsers always send
    Origin on POST, so a missing one is a non-browser client, which is fine."""
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host", "")


@router.post("/login")
async def login(request: Request):
    ctx: AdminContext = request.app.state.admin
    if not _same_origin(request):
        return _login_page(request, "This form may only be sent from this page.", 403)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return _login_page(request, "That is not a token.", 413)
    token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    try:
        # The API's own bearer-token check (throttling, sealed secrets, revocation), so the page
        # never accepts a token the API would refuse.
        who = await principal(request, ctx, authorization=f"Bearer {token}")
    except Problem as exc:
        return _login_page(request, str(exc.detail) if exc.status != 401 else "Unknown or revoked token.", exc.status)
    if who.role != Role.SYSTEM_ADMIN:
        return _login_page(request, "Only a system administrator's token opens the cluster monitor.", 403)
    token_id = who.token_id
    response = RedirectResponse("/monitor", status_code=303)
    response.set_cookie(session.COOKIE, session.issue(_key(request), token_id, time.time()), max_age=session.LIFETIME,
                        path="/monitor", secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request):
    response = RedirectResponse("/monitor/login", status_code=303)
    response.delete_cookie(session.COOKIE, path="/monitor", secure=True, httponly=True, samesite="strict")
    return response


async def _snapshot(request: Request) -> dict:
    """The view every open page gets; read from the bus at most once per ``SSE_PERIOD``
    whatever the number of pages open (they share it)."""
    feed: TransitionFeed = request.app.state.monitor_feed
    now = time.monotonic()
    if feed.cached is None or now - feed.cached[0] >= SSE_PERIOD * 0.9:
        feed.cached = (now, await _read_snapshot(request))
    return feed.cached[1]


async def _read_snapshot(request: Request) -> dict:
    ctx: AdminContext = request.app.state.admin
    feed: TransitionFeed = request.app.state.monitor_feed
    try:
        await feed.ensure_started()
    except Exception as exc:  # noqa: BLE001 - the table still works without the history
        log.warning("cannot follow the CLUSTER stream: %s", exc)
    now = datetime.now(UTC)
    nodes = []
    settings = ctx.settings
    if settings.region_list:
        # A super cluster: every region's instances.  Drain/ready ask this region's controller,
        # so only this region's rows get the buttons (ids repeat between regions).
        views, unreachable = await regions_view(ctx.nc, settings.region, settings.region_list)
    else:
        views, unreachable = await cluster_view(ctx.nc), []
    for v in views:
        row = v.model_dump(mode="json")
        row["local"] = not v.region or v.region == settings.region
        row["uptime"] = _duration(now - datetime.fromisoformat(v.started_at))
        row["work"] = int(v.load.get("work", 0))
        nodes.append(row)
    return {"nodes": nodes, "transitions": feed.rows(), "at": now.isoformat(), "unreachable": unreachable}


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{seconds:02d}"


@router.get("", response_class=HTMLResponse)
async def page(request: Request):
    who = await _caller(request)
    if who is None:
        return RedirectResponse("/monitor/login", status_code=303)
    snap = await _snapshot(request)
    csrf = session.csrf_token(_key(request), request.cookies[session.COOKIE])
    return templates.TemplateResponse(request, "monitor.html", {
        "who": who, "csrf": csrf, "nodes": snap["nodes"], "transitions": snap["transitions"]})


@router.get("/events")
async def stream(request: Request):
    if await _caller(request) is None:
        return Response("log in first", status_code=401)

    accepting = request.app.state.monitor_accepting

    async def frames():
        while accepting() and not await request.is_disconnected():
            try:
                data = json.dumps(await _snapshot(request))
                yield f"event: cluster\ndata: {data}\n\n".encode()
            except Exception as exc:  # noqa: BLE001 - a bus hiccup: say so, keep the stream
                log.warning("monitor snapshot failed: %s", exc)
                yield f"event: trouble\ndata: {json.dumps(str(exc))}\n\n".encode()
            await asyncio.sleep(SSE_PERIOD)

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/nodes/{node_id}/{command}")
async def command(node_id: str, command: str, request: Request):
    ctx: AdminContext = request.app.state.admin
    who = await _caller(request)
    if who is None:
        return JSONResponse({"error": "log in first"}, status_code=401)
    cookie = request.cookies.get(session.COOKIE)
    if not session.csrf_ok(_key(request), cookie, request.headers.get(session.CSRF_HEADER)):
        return JSONResponse({"error": "missing or wrong CSRF token; reload the page"}, status_code=403)
    if command not in ("drain", "ready"):
        return JSONResponse({"error": f"unknown command {command!r}"}, status_code=404)
    reply = await ask_controller(ctx.nc, command, node_id)
    await ctx.provisioning.audit(who, f"cluster.{command}", node_id, domain=None, remote_addr=client_addr(request),
                                 outcome="ok" if reply.ok else f"failed: {reply.error}")
    if not reply.ok:
        return JSONResponse({"error": reply.error or "failed"}, status_code=reply.status)
    return JSONResponse({"ok": True, "data": reply.data})
