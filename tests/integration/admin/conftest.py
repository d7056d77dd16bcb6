"""Fixtures for the admin API suites: a real nats-server for the session, and an admin API
stack (app with its lifespan, read model on SQLite or on PostgreSQL) per test.

PostgreSQL: COLONY_TEST_POSTGRES_URL (default the server on this machine).  Each stack gets
its own schema, dropped afterwards, so runs never see each other's rows.  If the server is
unreachable the PostgreSQL variants are skipped — except with CI=true, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from colony.natsd import EmbeddedNats
from colony.settings import Settings
from colony.supervisor import die_with_parent
from colony_admin.app import create_app
from colony_admin.auth.secrets import password_hasher
from colony_admin.models import Role

from admin_stack import PG_URL, SEED_VARIABLE, DatabaseFactory, LiveServer, Stack, _pg_reachable, connect, issue_token


@pytest.fixture(scope="session")
def nats_url(request, tmp_path_factory) -> str:
    """The authenticated bus, as `colony up` runs it: the suite itself is the operator
    (COLONY_NATS_NKEY_SEED_FILE, so a plain ``Settings()`` may do anything), and every admin
    API stack connects as the admin-api role, with that role's permissions only.

    One server per test process, kept on the pytest config and stopped when the run ends: under
    pytest-xdist this session fixture was seen set up twice in one worker (both servers up until
    the end), and the second one's operator seed in the environment then failed every
    connection to the first (authentication errors, NoServersError)."""
    shared = getattr(request.config, "_colony_admin_bus", None)
    if shared is None:
        base = tmp_path_factory.mktemp("nats")
        srv = EmbeddedNats.authenticated(base / "nats", base / "bus", sync_always=False,
                                         preexec_fn=die_with_parent)  # outlives no test run
        url = srv.start()
        before = os.environ.get(SEED_VARIABLE)
        os.environ[SEED_VARIABLE] = str(srv.seed_file("operator"))

        def stop() -> None:
            if before is None:
                os.environ.pop(SEED_VARIABLE, None)
            else:
                os.environ[SEED_VARIABLE] = before
            srv.stop()

        request.config.add_cleanup(stop)
        shared = request.config._colony_admin_bus = url
    return shared


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    problem = _pg_reachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable in CI: {problem}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({problem}); set COLONY_TEST_POSTGRES_URL")
    return PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
def databases(request, tmp_path) -> DatabaseFactory:
    factory = DatabaseFactory(request.param, tmp_path, request)
    yield factory
    factory.drop_all()


@pytest.fixture
async def make_stack(nats_url, databases, tmp_path) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """Start admin API stacks (several may share the bus, each with its own database)."""
    opened: list[tuple] = []

    async def start(database_url: str | None = None, projections: str = "inline", **settings_: Any) -> Stack:
        # The app connects as the admin-api role; the test's own connection (``stack.nc``) is
        # the operator's, so a test may also act as an edge or a mailstore would.
        app_nc = await connect(nats_url, role="admin-api")
        nc = await connect(nats_url)
        settings = Settings(nats_url=nats_url, data_dir=tmp_path, database_url=database_url or databases.new(),
                            **settings_)
        app = create_app(settings, app_nc, hasher=password_hasher(fast=True), projections=projections)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test")
        sys_token = await issue_token(nc, Role.SYSTEM_ADMIN, name="sysadmin")
        opened.append((nc, app_nc, lifespan, client))
        return Stack(nc, app, client, settings, sys_token)

    yield start
    for nc, app_nc, lifespan, client in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
        await nc.close()
        await app_nc.close()


@pytest.fixture
async def stack(make_stack) -> Stack:
    return await make_stack()


@pytest.fixture
def make_live_server(nats_url, databases, tmp_path):
    """Start live servers with Settings of one's own (``region=...``); stopped afterwards."""
    started: list[LiveServer] = []

    def start(**settings_: Any) -> LiveServer:
        server = LiveServer(nats_url, databases.new(), tmp_path, **settings_).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def live_server(nats_url, databases, tmp_path) -> LiveServer:
    server = LiveServer(nats_url, databases.new(), tmp_path).start()
    yield server
    server.stop()
