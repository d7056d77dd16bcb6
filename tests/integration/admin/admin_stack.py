"""The admin API suites' harness: a stack (the app with its lifespan, its read model on SQLite
or PostgreSQL), a live server, tokens and bus connections.  In a module of its own, not in
conftest.py, so tests import it by a name no other test directory has (two conftest modules
in one pytest run shadow each other)."""


from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client
from sqlalchemy import create_engine, text

from colony.bus import names
from colony.bus.connection import connect_options
from colony.bus.permissions import SEED_SUFFIX
from colony.bus.schema import ensure_schema
from colony.eventstore import EventStore
from colony.settings import Settings
from colony_admin import aggregates
from colony_admin.app import create_app
from colony_admin.auth import secrets
from colony_admin.auth.secrets import password_hasher
from colony_admin.models import Role, TokenCreate


PG_URL = os.environ.get("COLONY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect means "not here"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


SEED_VARIABLE = "COLONY_NATS_NKEY_SEED_FILE"


class DatabaseFactory:
    """Fresh, empty databases: a SQLite file or a PostgreSQL schema; dropped at the end."""

    def __init__(self, backend: str, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.backend, self.tmp, self.request = backend, tmp, request
        self.schemas: list[str] = []

    def new(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp / f'admin-{uuid.uuid4().hex[:8]}.sqlite3'}"
        base = self.request.getfixturevalue("pg_admin_url")
        schema = f"colony_test_{uuid.uuid4().hex[:12]}"
        engine = create_engine(base)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        self.schemas.append(schema)
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}options=-csearch_path%3D{schema}"

    def drop_all(self) -> None:
        if not self.schemas:
            return
        engine = create_engine(PG_URL)
        with engine.begin() as conn:
            for schema in self.schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@dataclass
class Stack:
    nc: Client
    app: object
    client: httpx.AsyncClient
    settings: Settings
    sys_token: str

    @property
    def ctx(self):
        return self.app.state.admin

    def as_(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def token(self, role: Role, domain: str | None = None, name: str = "test") -> str:
        return await issue_token(self.nc, role, domain, name)


async def issue_token(nc: Client, role: Role, domain: str | None = None, name: str = "test") -> str:
    """A token written straight to PROVISIONING (as bootstrap does), for test set-up."""
    store = EventStore(nc.jetstream(), names.STREAM_PROVISIONING)
    token_id, token, digest = secrets.new_token()
    events = aggregates.create_token(None, token_id, TokenCreate(name=name, role=role, domain=domain), digest, "tests")
    await store.append(names.provisioning_subject(names.AGG_TOKEN, token_id), [e.encode() for e in events], 0)
    return token


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def connect(nats_url: str, role: str = "operator") -> Client:
    """A connection as ``role``, once the operator has made sure the schema exists."""
    operator = Settings().nats_nkey_seed_file
    nc = await nats.connect(nats_url, **connect_options(operator))
    await ensure_schema(nc.jetstream(), Settings(nats_url=nats_url))
    if role == "operator" or operator is None:
        return nc
    await nc.close()
    return await nats.connect(nats_url, **connect_options(operator.with_name(f"{role}{SEED_SUFFIX}")))


class PublicOnly:
    """A JetStream context with only its public face: what a pin-bump may leave us."""

    def __init__(self, js) -> None:
        self._wrapped = js

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(f"{name} is private to nats-py")
        return getattr(self._wrapped, name)


def unique_domain(tag: str = "t") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}.example"


class LiveServer:
    """The admin API under a real uvicorn on 127.0.0.1, in a thread with its own event loop
    (for clients that need a URL: the CLI and schemathesis)."""

    def __init__(self, nats_url: str, database_url: str, data_dir: Path, projections: str = "inline",
                 **settings_: Any) -> None:
        self.projections, self.settings_ = projections, settings_
        self.nats_url, self.database_url, self.data_dir = nats_url, database_url, data_dir
        self.url = ""
        self.sys_token = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="admin-api-live", daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(90) or self._error:  # migrations and projections start first: slow on a busy machine
            raise RuntimeError(f"admin API did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        import uvicorn

        self._loop = asyncio.get_running_loop()
        nc = await connect(self.nats_url, role="admin-api")
        settings = Settings(nats_url=self.nats_url, data_dir=self.data_dir, database_url=self.database_url,
                            **self.settings_)
        app = create_app(settings, nc, hasher=password_hasher(fast=True), projections=self.projections)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning"))
        serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.sys_token = await issue_token(nc, Role.SYSTEM_ADMIN, name="sysadmin")
        self.url = f"http://127.0.0.1:{port}"
        self.nc = nc
        self._ready.set()
        await serving
        await nc.close()

    def run(self, coro):
        """Run a coroutine on the server's loop (e.g. to mint tokens with its NATS connection)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(30)
