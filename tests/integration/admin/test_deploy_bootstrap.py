"""The compose file's first start, outside Docker: the one-shot `admin-bootstrap` job
(`python -m colony_admin.bootstrap`, as docker-compose.yml runs it, with the admin API's bus
identity) makes the first system-admin token on a fresh cluster, the token works against
the admin API, a second run changes nothing, and the token is on no command line, in no
environment and, as SHA-256, not in PROVISIONING."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import httpx
import nats
import pytest

from colony.bus import names
from colony.bus.connection import connect_options
from colony.bus.schema import ensure_schema
from colony.natsd import EmbeddedNats
from colony.settings import Settings
from colony_admin.app import create_app
from colony_admin.auth.secrets import password_hasher


@pytest.fixture
def fresh_bus(tmp_path):
    # Its own server: the bootstrap token has a fixed id, and the suite's shared bus has one.
    srv = EmbeddedNats.authenticated(tmp_path / "nats", tmp_path / "bus", sync_always=False)
    url = srv.start()
    yield srv, url
    srv.stop()


def run_job(url: str, seed, data_dir) -> tuple[subprocess.CompletedProcess, list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLONY_")}
    env.update(COLONY_NATS_URL=url, COLONY_NATS_NKEY_SEED_FILE=str(seed), COLONY_DATA_DIR=str(data_dir),
               COLONY_ROLE="admin-api")
    argv = [sys.executable, "-m", "colony_admin.bootstrap"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120), argv, env


async def test_first_start_makes_a_usable_system_admin_token(fresh_bus, tmp_path):
    srv, url = fresh_bus
    operator = await nats.connect(url, **connect_options(srv.seed_file("operator")))
    try:
        # What the controller does in compose before the job starts (depends_on: healthy).
        await ensure_schema(operator.jetstream(), Settings(nats_url=url))
        data_dir = tmp_path / "bootstrap"
        data_dir.mkdir(mode=0o700)
        result, argv, env = run_job(url, srv.seed_file("admin-api"), data_dir)
        assert result.returncode == 0, result.stdout + result.stderr
        token_file = data_dir / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token.startswith("col_bootstrap0000000_")
        secret = token.rsplit("_", 1)[1]
        assert token not in " ".join(argv) + result.stdout + result.stderr
        assert all(secret not in value for value in env.values())

        # The admin API (as the admin-api role) accepts it as a system administrator.
        app_nc = await nats.connect(url, **connect_options(srv.seed_file("admin-api")))
        settings = Settings(nats_url=url, data_dir=tmp_path / "api", database_url=f"sqlite:///{tmp_path / 'rm.db'}")
        app = create_app(settings, app_nc, hasher=password_hasher(fast=True), projections="inline")
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as c:
                who = await c.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
                assert who.status_code == 200, who.text
                assert who.json()["role"] == "system-admin"
                made = await c.post("/v1/domains", json={"name": "first.example"},
                                    headers={"Authorization": f"Bearer {token}"})
                assert made.status_code == 201, made.text
        finally:
            await lifespan.__aexit__(None, None, None)
            await app_nc.close()

        # Its digest is keyed (colony_admin/auth/sealing.py): not in the log as SHA-256.
        info = await operator.jetstream().stream_info(names.STREAM_PROVISIONING)
        log = b"".join([(await operator.jetstream().get_msg(names.STREAM_PROVISIONING, seq)).data or b""
                        for seq in range(info.state.first_seq, info.state.last_seq + 1)])
        assert hashlib.sha256(secret.encode()).hexdigest().encode() not in log

        # A restart of the job (or of the whole deployment) makes no second token.
        again, _, _ = run_job(url, srv.seed_file("admin-api"), data_dir)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing to do" in again.stdout
        assert token_file.read_text().strip() == token
    finally:
        await operator.close()


async def test_admin_api_listener_speaks_tls_with_the_deploy_certificate(tmp_path):
    from fastapi import FastAPI

    from colony.deploy import init_deploy
    from colony.http_server import EmbeddedHttpServer

    files = init_deploy(tmp_path / "secrets", tmp_path / "bus")
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    tls_dir = files.admin_ca.parent
    server = EmbeddedHttpServer(app, "127.0.0.1", 0, tls_cert_file=tls_dir / "server.pem",
                                tls_key_file=tls_dir / "server.key")
    port = await server.start()
    try:
        async with httpx.AsyncClient(verify=str(files.admin_ca)) as client:
            answer = await client.get(f"https://localhost:{port}/ping")
            assert answer.json() == {"ok": True}
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/ping")
    finally:
        await server.stop()
