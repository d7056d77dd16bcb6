"""Provisioning benchmark: bulk-create domains and accounts, then time deep pages and prefix searches.

    .venv/bin/python bench/provisioning.py                      # short: 2,000 domains x 5 accounts
    .venv/bin/python bench/provisioning.py --domains 100000 --accounts-per-domain 1 --time-budget 600
    .venv/bin/python bench/provisioning.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/provisioning.py --password-hashes   # a migration: rows carry foreign hashes + HA1

What it runs: a real nats-server (embedded, in a temporary directory) and the admin API app
in this process, called through httpx's ASGI transport (so latencies are the app's and the
database's, without a network hop).  Bulk creation goes through POST /v1/imports (JSON, no
passwords: argon2 is deliberately slow, ~20 hashes/s/core, and would measure only itself) in
chunks until the target is reached or --time-budget runs out; the count printed is what was
actually created.  "Created" means visible in the read model (the import job ends only when
the projection has caught up; the bench then lists the last domain's accounts to check it);
"durable" is when every row of a job was acknowledged by PROVISIONING; the directory row is
how long after that the directory KV had every event.  Goals from issue #3: >= 5,000 accounts/s, p99 page latency
<= 20 ms at 100,000 domains.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nats
from rich.console import Console
from rich.table import Table

from colony.bus.schema import ensure_schema
from colony.eventstore import EventStore
from colony.natsd import EmbeddedNats
from colony.settings import Settings
from colony_admin import aggregates
from colony_admin.app import create_app
from colony_admin.auth import secrets
from colony_admin.auth.secrets import password_hasher
from colony_admin.models import Role, TokenCreate
from colony_admin.queries import encode_cursor

console = Console()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def sysadmin_token(nc) -> str:
    from colony.bus import names

    store = EventStore(nc.jetstream(), names.STREAM_PROVISIONING, nc=nc)
    token_id, token, digest = secrets.new_token()
    events = aggregates.create_token(None, token_id, TokenCreate(name="bench", role=Role.SYSTEM_ADMIN), digest, "bench")
    await store.append(names.provisioning_subject(names.AGG_TOKEN, token_id), [e.encode() for e in events], 0)
    return token


def domain_name(run: str, i: int) -> str:
    return f"d{i:07d}-{run}.example"


accepted: list[float] = []  # per import chunk: seconds until every row was in PROVISIONING


def migration_credentials(distinct: int = 64) -> list[dict[str, str]]:
    """What a migration carries per account instead of a password: a hash from the old system
    (a mix of the schemes mail systems store, Dovecot notation) and the phone's SIP HA1.  A few
    distinct ones, reused: the import validates each row's hash; computing them is not measured."""
    import hashlib

    import bcrypt
    from argon2 import PasswordHasher
    from passlib.hash import ldap_salted_sha512, sha512_crypt

    argon2 = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    schemes = [lambda pw: "{SHA512-CRYPT}" + sha512_crypt.hash(pw, rounds=5000),
               lambda pw: "{BLF-CRYPT}" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode(),
               lambda pw: "{ARGON2ID}" + argon2.hash(pw),
               lambda pw: ldap_salted_sha512.hash(pw)]
    return [{"password_hash": schemes[i % len(schemes)](f"pw-{i}"),
             "sip_ha1_md5": hashlib.md5(f"user:realm:pw-{i}".encode()).hexdigest()} for i in range(distinct)]


async def bulk_create(client: httpx.AsyncClient, headers: dict, run: str, domains: int, per_domain: int,
                      chunk: int, budget: float, credentials: list[dict[str, str]] | None = None,
                      ) -> tuple[int, int, float]:
    created_domains = created_accounts = 0
    accepted.clear()
    started = time.perf_counter()
    i = 0
    while i < domains and time.perf_counter() - started < budget:
        rows = []
        for n in range(i, min(i + chunk, domains)):
            d = domain_name(run, n)
            rows.append({"domain": d})
            rows += [{"domain": d, "account": f"user{k:04d}",
                      **(credentials[(n + k) % len(credentials)] if credentials else {})} for k in range(per_domain)]
        t0 = time.perf_counter()
        r = await client.post("/v1/imports", json=rows, headers=headers)
        r.raise_for_status()
        job = r.json()
        appended_at = None
        while job["state"] == "running":
            await asyncio.sleep(0.02)
            job = (await client.get(f"/v1/imports/{job['id']}", headers=headers)).json()
            if appended_at is None and job["done"] == job["total"]:
                appended_at = time.perf_counter() - t0  # every row in PROVISIONING; read model catching up
        accepted.append(appended_at if appended_at is not None else time.perf_counter() - t0)
        if job["state"] != "done" or job["failed"]:
            raise SystemExit(f"import failed: {job['errors'][:5]}")
        created_domains += job["domains_created"]
        created_accounts += job["accounts_created"]
        i += chunk
        elapsed = time.perf_counter() - started
        console.print(f"  {created_domains:>7} domains, {created_accounts:>8} accounts "
                      f"({created_accounts / elapsed:,.0f} accounts/s, "
                      f"{(created_domains + created_accounts) / elapsed:,.0f} objects/s)")
    return created_domains, created_accounts, time.perf_counter() - started


async def directory_caught_up(nc, limit: float = 300.0) -> float | None:
    """Seconds from now until the directory KV (the edges' view) holds every PROVISIONING
    event (its position key has reached the stream's last sequence); None if not within limit."""
    import orjson
    from colony.bus import names
    from colony.contracts.directory import POSITION_KEY

    js = nc.jetstream()
    t0 = time.perf_counter()
    last = (await js.stream_info(names.STREAM_PROVISIONING)).state.last_seq
    kv = await js.key_value(names.BUCKET_DIRECTORY)
    while time.perf_counter() - t0 < limit:
        try:
            if orjson.loads((await kv.get(POSITION_KEY)).value).get("seq", 0) >= last:
                return time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - not written yet
            pass
        await asyncio.sleep(0.05)
    return None


async def timed(client: httpx.AsyncClient, url: str, params: dict, headers: dict) -> float:
    t = time.perf_counter()
    r = await client.get(url, params=params, headers=headers)
    elapsed = (time.perf_counter() - t) * 1000
    r.raise_for_status()
    return elapsed


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None where /proc is not Linux's.
    The projector's CPU per import is what bounds the visible rate on a quiet machine, and
    unlike the rate it stays comparable when other work takes the cores."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_projector(nats_url: str, data_dir: Path, database_url: str) -> subprocess.Popen:
    """The projector role as `colony up` runs it: its own process under the node runtime."""
    env = dict(os.environ, COLONY_NATS_URL=nats_url, COLONY_DATA_DIR=str(data_dir), COLONY_NODE_ID="projector-bench",
               COLONY_DATABASE_URL=database_url, COLONY_LOG_LEVEL="WARNING")
    return subprocess.Popen([sys.executable, "-m", "colony_admin.projector"], env=env, stdin=subprocess.DEVNULL)


def fresh_database(url: str):
    """A PostgreSQL URL gets a schema of its own for this run (the stream is new each run, so
    an old checkpoint in the database would hide every event); SQLite lives in the temp dir."""
    if not url.startswith("postgresql"):
        return url, None
    from sqlalchemy import create_engine, text

    schema = f"colony_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()

    sep = "&" if "?" in url else "?"
    # application_name: how postgres_cpu finds this run's server processes
    return f"{url}{sep}options=-csearch_path%3D{schema}&application_name={schema}", drop


def postgres_cpu(url: str) -> dict[int, float]:
    """CPU used so far by each PostgreSQL server process (backend) serving this run's
    connections (found by the application_name ``fresh_database`` gives them; the server
    must run on this machine): the read model's writes cost the server's CPU as well as the
    projector's, and on 2 cores it is taken from them."""
    from urllib.parse import parse_qs, urlsplit

    from sqlalchemy import create_engine, text

    app = parse_qs(urlsplit(url).query).get("application_name", [""])[0]
    engine = create_engine(url.split("?", 1)[0])
    try:
        with engine.connect() as conn:
            pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"), {"a": app})
            return {pid: cpu for (pid,) in pids if (cpu := cpu_seconds(pid)) is not None}
    finally:
        engine.dispose()


async def main(args: argparse.Namespace) -> None:
    projector = None
    drop_schema = None
    cpu_before = cpu_after = None
    api_cpu = bus_cpu = pg_cpu = None
    wall_before = wall_after = 0.0
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="colony-bench-"))
    srv = EmbeddedNats(store_dir=tmp / "nats", sync_always=False)
    url = srv.start()
    nc = await nats.connect(url)
    try:
        database_url, drop_schema = fresh_database(args.database_url)
        settings = Settings(nats_url=url, data_dir=tmp, database_url=database_url)
        await ensure_schema(nc.jetstream(), settings)
        projector = start_projector(url, tmp, database_url) if args.projections == "projector" else None
        app = create_app(settings, nc, hasher=password_hasher(fast=True), projections=args.projections)
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=600)
            headers = {"Authorization": f"Bearer {await sysadmin_token(nc)}"}
            # Measure the import, not a projector still starting: wait until the read model
            # (whoever writes it) shows the token just made.
            from colony.bus import names

            last = (await nc.jetstream().stream_info(names.STREAM_PROVISIONING)).state.last_seq
            if not await app.state.admin.readmodel.wait_for(last, timeout=120):
                raise SystemExit("the read model did not follow PROVISIONING within 120 s (projector not running?)")
            run = uuid.uuid4().hex[:6]
            console.print(f"[bold]bulk create[/bold]: up to {args.domains:,} domains x {args.accounts_per_domain} "
                          f"accounts, budget {args.time_budget:.0f}s, read model {settings.sqlalchemy_url.split(':')[0]}")
            credentials = migration_credentials() if args.password_hashes else None
            cpu_before = cpu_seconds(projector.pid) if projector is not None else None
            api_cpu_before = time.process_time()
            bus_cpu_before = cpu_seconds(srv.process.pid) if srv.process is not None else None
            pg_before = postgres_cpu(database_url) if drop_schema is not None else None
            wall_before = time.perf_counter()
            n_domains, n_accounts, seconds = await bulk_create(client, headers, run, args.domains,
                                                               args.accounts_per_domain, args.chunk, args.time_budget,
                                                               credentials)
            api_cpu = time.process_time() - api_cpu_before  # before the directory poll, which is not the API's
            directory_lag = await directory_caught_up(nc)
            cpu_after = cpu_seconds(projector.pid) if projector is not None else None
            if pg_before is not None:
                # a backend that started during the import counts from zero (its start-up is small)
                pg_cpu = sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in postgres_cpu(database_url).items())
            if bus_cpu_before is not None:
                bus_cpu = cpu_seconds(srv.process.pid) - bus_cpu_before  # type: ignore[union-attr,operator]
            wall_after = time.perf_counter()
            if n_domains and args.accounts_per_domain:
                # "visible" must mean listable: the last domain's accounts, straight after its job
                last = domain_name(run, n_domains - 1)
                listed = (await client.get(f"/v1/domains/{last}/accounts", params={"limit": 100},
                                           headers=headers)).json()["items"]
                if len(listed) != min(100, args.accounts_per_domain):
                    raise SystemExit(f"read model incomplete: {len(listed)} accounts listed for {last}")
            rng = random.Random(1)
            page_ms, deep_ms, prefix_ms, acct_ms = [], [], [], []
            for _ in range(args.samples):
                page_ms.append(await timed(client, "/v1/domains", {"limit": 100}, headers))
                k = rng.randrange(max(1, n_domains - 100))
                deep_ms.append(await timed(client, "/v1/domains",
                                           {"limit": 100, "cursor": encode_cursor(domain_name(run, k))}, headers))
                prefix = domain_name(run, rng.randrange(n_domains))[:6]  # e.g. d00012: ten domains
                prefix_ms.append(await timed(client, "/v1/domains", {"prefix": prefix, "limit": 100}, headers))
                if args.accounts_per_domain:
                    d = domain_name(run, rng.randrange(n_domains))
                    acct_ms.append(await timed(client, f"/v1/domains/{d}/accounts", {"prefix": "user", "limit": 100},
                                               headers))
            await client.aclose()
    finally:
        await nc.close()
        if projector is not None:
            projector.terminate()
            projector.wait(30)
        if drop_schema is not None:
            drop_schema()
        srv.stop()

    table = Table(title=f"Provisioning benchmark ({n_domains:,} domains, {n_accounts:,} accounts)")
    for col in ("measure", "value", "p50 ms", "p99 ms", "goal"):
        table.add_column(col)
    table.add_row("bulk create, visible in read model" + (" (rows with password hashes + HA1)"
                                                           if args.password_hashes else ""),
                  f"{n_accounts / seconds:,.0f} accounts/s ({(n_domains + n_accounts) / seconds:,.0f} objects/s)",
                  "", "", ">= 5,000 accounts/s")
    if accepted:
        table.add_row("bulk create, durable in PROVISIONING", f"{n_accounts / sum(accepted):,.0f} accounts/s", "", "",
                      "")
    if cpu_before is not None and cpu_after is not None and n_accounts:
        # CPU against wall over the same span: near 1.0 the projector is bound by its CPU (one
        # event loop, the GIL); well below, by waits (round trips, commits, acks) -- or by a
        # machine whose cores other work takes (see the load average).
        cpu, wall = cpu_after - cpu_before, wall_after - wall_before
        table.add_row("projector CPU for the import", f"{cpu:.2f} s over {wall:.2f} s wall ({cpu / wall:.2f} of a core; "
                      f"{cpu * 10_000 / n_accounts:.2f} s per 10,000 accounts)", "", "", "")
    if api_cpu is not None and n_accounts:
        # This process: the admin API (in-process behind the ASGI transport) and the bench's own
        # requests and 20 ms polls; the import's cost on the API side, comparable under load.
        table.add_row("admin API (+ bench client) CPU for the import",
                      f"{api_cpu:.2f} s ({api_cpu * 10_000 / n_accounts:.2f} s per 10,000 accounts)", "", "", "")
    if bus_cpu is not None and n_accounts:
        # nats-server takes a share of the two cores too: every append, key write, directory
        # write and delivery is a message it stores or routes (same span as the projector's).
        table.add_row("nats-server CPU for the import",
                      f"{bus_cpu:.2f} s ({bus_cpu * 10_000 / n_accounts:.2f} s per 10,000 accounts)", "", "", "")
    if pg_cpu is not None and n_accounts:
        table.add_row("PostgreSQL server CPU for the import",
                      f"{pg_cpu:.2f} s ({pg_cpu * 10_000 / n_accounts:.2f} s per 10,000 accounts)", "", "", "")
    table.add_row("directory KV (edges) caught up", "not within 300 s" if directory_lag is None else
                  f"{directory_lag:.1f} s after the last import job ended", "", "", "")
    for name, values in (("first page of domains", page_ms), ("deep page of domains (cursor)", deep_ms),
                         ("domain prefix search", prefix_ms), ("accounts of a domain (prefix)", acct_ms)):
        if values:
            table.add_row(name, f"{len(values)} requests", f"{statistics.median(values):.1f}",
                          f"{percentile(values, 99):.1f}", "p99 <= 20 ms")
    console.print(table)
    load_after = os.getloadavg()
    console.print(f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
                  f"{' '.join(f'{x:.2f}' for x in load_after)} at the end; {os.cpu_count()} CPUs")
    if n_domains < args.domains:
        console.print(f"[yellow]time budget reached: {n_domains:,} of {args.domains:,} domains created[/yellow]")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", type=int, default=2000, help="domains to create (goal size: 100000)")
    p.add_argument("--accounts-per-domain", type=int, default=5)
    p.add_argument("--chunk", type=int, default=1000, help="domains per import request")
    p.add_argument("--password-hashes", action="store_true",
                   help="a migration: every account row carries a password hash from another system "
                        "({SHA512-CRYPT}, {BLF-CRYPT}, {ARGON2ID}, {SSHA512}) and a SIP HA1")
    p.add_argument("--time-budget", type=float, default=60.0, help="stop creating after this many seconds")
    p.add_argument("--samples", type=int, default=200, help="timed requests per query kind")
    p.add_argument("--database-url", default="", help="read model (default: SQLite in a temporary directory)")
    p.add_argument("--projections", choices=["projector", "inline"], default="projector",
                   help="projector: a projector instance in its own process writes the read model and the "
                        "directory (as `colony up` runs it); inline: the admin API's own event loop does")
    return p.parse_args()


if __name__ == "__main__":
    # `timeout` or Ctrl-C: unwind through the finally blocks, so nats-server is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    asyncio.run(main(parse_args()))
