"""``create_app(settings, nc)``: the admin API as a FastAPI app (``service.py`` runs it).

Lifespan: open the read-model database and migrate it, follow the read model's position
(written by projector instances, or by projections in this event loop: see ``create_app``),
start the cluster auth service, and serve once the read model has caught up; stop them on
the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Literal

from argon2 import PasswordHasher
from fastapi import FastAPI
from nats.aio.client import Client
from sqlalchemy import select

from colony.bus import names
from colony.eventstore import EventStore
from colony.contracts.recipients import Limits
from colony.metrics import BusRequestMetrics, Metrics
from colony.settings import Settings
from colony_admin import db, gcpolicy
from colony_admin.auth.secrets import password_hasher
from colony_admin.auth.throttle import Throttle
from colony_admin.authservice import AuthService
from colony_admin.bodylimit import BodyLimit
from colony_admin.commands import Provisioning
from colony_admin.deps import AdminContext
from colony_admin.problems import install_problem_handlers
from colony_admin.projections import readmodel
from colony_admin.projections.directory import DirectoryProjection
from colony_admin.projections.position import RemoteReadModel
from colony_admin.projections.runner import StreamProjection
from colony_admin.routes import accounts, audit, cos, dkim, domains, imports, queue, tokens, usage

log = logging.getLogger("colony.admin")

DESCRIPTION = """\
Colony's provisioning, delegation and billing API: one system image of the whole cluster.

Every change is an event in the PROVISIONING stream, checked with optimistic concurrency:
objects carry a `version` (also the `ETag`); send it back as `If-Match` and a concurrent
change makes your request fail with 409 instead of being lost.  Errors are RFC 7807
`application/problem+json`.  Authenticate with `Authorization: Bearer <token>`.
"""


Projections = Literal["projector", "inline"]


def create_app(settings: Settings, nc: Client, *, hasher: PasswordHasher | None = None,
               projections: Projections = "projector", metrics: Metrics | None = None) -> FastAPI:
    """``projections``: who writes the read model and the directory -- projector instances
    (``colony_admin.projector``, the default: this app only follows their announced
    positions), or this event loop (tests, and an in-memory SQLite database, which exists
    only in the process that opened it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mode = projections if not _in_memory(settings.sqlalchemy_url) else "inline"
        ctx = await _start(settings, nc, hasher or password_hasher(), mode, metrics)
        app.state.admin = ctx
        _warm_routes(app)
        # Everything built so far (FastAPI's routes and models, SQLAlchemy's tables, pydantic
        # validators) lives as long as the process: keep it out of the cyclic GC's full
        # collections, which otherwise walk all of it again and again during a bulk import.
        gcpolicy.after_start_up()
        try:
            yield
        finally:
            await _stop(ctx)

    app = FastAPI(title="Colony admin API", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, by_path={"/v1/imports": settings.api_max_import_bytes})
    _self_hosted_docs(app)
    for module in (domains, accounts, cos, dkim, tokens, usage, audit, imports, queue):
        app.include_router(module.router)
    return app


def _self_hosted_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from the installed ``swagger-ui-bundle`` package, not FastAPI's
    default CDN: operators' management networks have no internet, and the page was blank."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


def _in_memory(database_url: str) -> bool:
    return database_url.startswith("sqlite") and (":memory:" in database_url or database_url.rstrip("/") == "sqlite:")


def _warm_routes(app: FastAPI) -> None:
    """Build FastAPI's per-router route state now rather than in the first requests.

    FastAPI 0.16x resolves the routes of an included router lazily, on the first request
    that reaches it (a pydantic TypeAdapter per parameter: about 0.3 s of CPU for this API
    on 2 cores), which the first requests after start-up would pay.  Best effort: this
    uses FastAPI internals and does nothing where they are not there.
    """
    for route in app.router.routes:
        for method in ("effective_candidates", "effective_low_priority_routes"):
            build = getattr(route, method, None)
            if callable(build):
                try:
                    build()
                except Exception:  # noqa: BLE001 - an optimisation only; requests build it anyway
                    log.debug("could not pre-build routes of %r", route, exc_info=True)


async def _start(settings: Settings, nc: Client, hasher: PasswordHasher, mode: Projections,
                 metrics: Metrics | None = None) -> AdminContext:
    engine = db.make_engine(settings.sqlalchemy_url)
    await asyncio.to_thread(db.migrate, engine)
    js = nc.jetstream(timeout=10.0)
    store = EventStore(js, names.STREAM_PROVISIONING, nc=nc)

    def follow(stream: str, subjects: str, name: str, apply, **kw) -> StreamProjection:
        return StreamProjection(nc=nc, js=js, engine=engine, stream=stream, subjects=subjects, name=name, apply=apply,
                                **kw)

    runners: list[tuple[str, StreamProjection]] = []
    usage_p = audit_p = None
    read: StreamProjection | RemoteReadModel
    if mode == "projector":
        read = RemoteReadModel(nc, engine, readmodel.READ_MODEL)
        await read.start()
    else:
        read = follow(names.STREAM_PROVISIONING, names.SUBJECTS_PROVISIONING, readmodel.READ_MODEL,
                      readmodel.apply_provisioning, directory=DirectoryProjection(nc, js, store))
        usage_p = follow(names.STREAM_USAGE, names.SUBJECTS_USAGE, readmodel.USAGE, readmodel.apply_usage)
        audit_p = follow(names.STREAM_AUDIT, names.SUBJECTS_AUDIT, readmodel.AUDIT, readmodel.apply_audit)
        runners = [("readmodel", read), ("usage", usage_p), ("audit", audit_p)]
    throttle = Throttle()
    provisioning = Provisioning(js, store, read, hasher)
    ctx = AdminContext(settings=settings, nc=nc, js=js, engine=engine, store=store, hasher=hasher,
                       throttle=throttle, provisioning=provisioning, readmodel=read,
                       usage_projection=usage_p, audit_projection=audit_p,
                       auth_service=AuthService(nc, provisioning, engine, Throttle(),
                                                Limits.from_settings(settings),
                                                metrics=metrics.once(BusRequestMetrics) if metrics else None,
                                                max_queued_checks=settings.auth_max_queued_checks))
    for name, runner in runners:
        ctx.projections.append(asyncio.create_task(runner.run(), name=f"admin-projection-{name}"))
    await ctx.auth_service.start()
    await _catch_up(ctx)
    await _ensure_default_cos(ctx)
    return ctx


async def _ensure_default_cos(ctx: AdminContext) -> None:
    """Domains created before every domain got a class of service have none; every door
    gives them the default class (``entitlements.cos_name``), which therefore has to exist.
    Created only when such a domain exists, so a new cluster's event log is not touched."""
    def classless() -> bool:
        with ctx.engine.connect() as conn:
            t = db.domains.c
            return conn.execute(select(t.name).where(t.cos.is_(None)).limit(1)).first() is not None
    try:
        if await asyncio.to_thread(classless):
            await ctx.provisioning.ensure_cos(ctx.settings.default_cos, ctx.settings.default_cos_quota_bytes)
    except Exception:
        # Not fatal: until it exists those domains are limited by nothing, as before.
        log.exception("could not create the default class of service %s", ctx.settings.default_cos)


async def _catch_up(ctx: AdminContext, timeout: float = 120.0) -> None:
    """Serve only once the read model holds what PROVISIONING held at start-up, so a new
    instance behind the balancer never answers lists from an empty or stale database."""
    last = (await ctx.js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
    if not await ctx.readmodel.wait_for(last, timeout=timeout):
        hint = " (is a projector running? `colony status` shows role projector)" \
            if isinstance(ctx.readmodel, RemoteReadModel) else ""
        log.warning("read model still behind PROVISIONING after %.0fs (at %d of %d); serving anyway%s",
                    timeout, ctx.readmodel.position, last, hint)


async def _stop(ctx: AdminContext) -> None:
    await ctx.auth_service.stop()
    for job in ctx.imports.values():
        job.cancel()
    for task in ctx.projections:
        task.cancel()
    results = await asyncio.gather(*ctx.projections, return_exceptions=True)
    for task, result in zip(ctx.projections, results, strict=True):
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            log.error("%s ended with %r", task.get_name(), result)
    if isinstance(ctx.readmodel, RemoteReadModel):
        await ctx.readmodel.stop()
    ctx.provisioning.close()
    ctx.engine.dispose()
