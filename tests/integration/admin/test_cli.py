"""The provisioning CLI against a live admin API: the operator's day, end to end."""

from __future__ import annotations

import csv
import os
import stat
import uuid

import typer
from typer.testing import CliRunner

from colony.cli.provisioning import register

runner = CliRunner()


def colony() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def run(server, *args, token=None, ok=True):
    result = runner.invoke(colony(), [*args, "--api", server.url], env={"COLONY_TOKEN": token or server.sys_token})
    if ok:
        assert result.exit_code == 0, (args, result.output)
    return result


def test_operator_provisions_companies_from_csv_and_hands_out_tokens(live_server, tmp_path):
    tag = uuid.uuid4().hex[:6]
    companies = tmp_path / "companies.csv"
    rows = ["domain,display_name,account,real_name,password"]
    rows += [f"c{i}-{tag}.example,Company {i},admin,Admin {i},initial-pass-{i}" for i in range(30)]
    companies.write_text("\n".join(rows) + "\n")
    tokens = tmp_path / "tokens.csv"
    result = run(live_server, "domain", "import", str(companies), "--admin-tokens", "--tokens-out", str(tokens))
    assert "30 domain(s) and 30 account(s) created, 0 row(s) failed" in result.output
    assert stat.S_IMODE(os.stat(tokens).st_mode) == 0o600
    issued = list(csv.DictReader(tokens.open()))
    assert len(issued) == 30

    first, second = issued[0], issued[1]
    own = run(live_server, "account", "list", first["domain"], "--json", token=first["token"])
    assert f"admin@{first['domain']}" in own.output
    denied = run(live_server, "account", "list", second["domain"], token=first["token"], ok=False)
    assert denied.exit_code == 1 and "403" in denied.output

    listed = run(live_server, "domain", "list", "--prefix", f"c1-{tag}", "--json")
    assert f"c1-{tag}.example" in listed.output and f"c2-{tag}.example" not in listed.output


def test_domain_account_cos_token_commands(live_server):
    d = f"cli-{uuid.uuid4().hex[:8]}.example"
    run(live_server, "cos", "add", f"basic-{d[:12]}", "--services", "mail imap", "--quota", "1000")
    run(live_server, "domain", "add", d, "--cos", f"basic-{d[:12]}")
    run(live_server, "account", "add", f"bob@{d}", "--password", "bobs-password", "--real-name", "Bob")
    shown = run(live_server, "account", "show", f"bob@{d}", "--json")
    assert '"real_name": "Bob"' in shown.output
    run(live_server, "cos", "update", f"basic-{d[:12]}", "--quota", "2000")
    assert '"quota_bytes": 2000' in run(live_server, "cos", "show", f"basic-{d[:12]}", "--json").output
    created = run(live_server, "token", "create", "--role", "domain-admin", "--domain", d, "--json")
    assert '"role": "domain-admin"' in created.output
    run(live_server, "domain", "suspend", d, "--reason", "unpaid")
    assert '"state": "suspended"' in run(live_server, "domain", "show", d, "--json").output
    run(live_server, "account", "delete", f"bob@{d}")
    run(live_server, "domain", "delete", d)
    gone = run(live_server, "domain", "show", d, ok=False)
    assert gone.exit_code == 1 and "404" in gone.output
    usage = run(live_server, "usage", "report", "--from", "2020-01-01T00:00:00Z", "--to", "2030-01-01T00:00:00Z",
                "--format", "csv")
    assert usage.output.startswith("domain,account,storage_bytes")


async def test_domain_move_follows_the_move_until_done_and_says_why_one_is_refused(nats_url, make_live_server):
    """`colony domain move` asks, then prints each phase and the copy progress the controller
    records until the move is done (the controller's events are appended here as it would,
    each one after the command has shown the previous)."""
    import asyncio
    import sys
    from pathlib import Path

    import nats

    from colony import events as ev
    from colony.bus import names
    from colony.bus.connection import connect_options
    from colony.eventstore import EventStore
    from colony.settings import Settings

    server = await asyncio.to_thread(make_live_server, region="eu", regions="eu,us", primary_region="eu")
    nc = await nats.connect(nats_url, **connect_options(Settings().nats_nkey_seed_file))  # the operator
    proc = None
    try:
        d = f"mv-{uuid.uuid4().hex[:8]}.example"
        await asyncio.to_thread(run, server, "domain", "add", d, "--region", "eu")
        await asyncio.to_thread(run, server, "account", "add", f"amy@{d}")
        refused = await asyncio.to_thread(lambda: run(server, "domain", "move", d, "ap", ok=False))
        assert refused.exit_code == 1 and "422" in refused.output and "'ap'" in refused.output

        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "colony"), "domain", "move", d, "us", "--api", server.url,
            "--timeout", "120", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "COLONY_TOKEN": server.sys_token, "PYTHONUNBUFFERED": "1"})
        printed: list[str] = []

        async def shows(text: str) -> None:
            while not printed or text not in printed[-1]:
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                assert line, f"colony exited before printing {text!r}: {printed}"
                printed.append(line.decode().rstrip())

        store = EventStore(nc.jetstream(), names.STREAM_PROVISIONING)
        subject = names.provisioning_subject(names.AGG_DOMAIN, d)
        progress = names.provisioning_subject(names.AGG_DOMAIN_MOVE, d)

        async def append(on: str, event: ev.Event) -> None:
            stored = await store.read(on)
            await store.append(on, [event.encode()], stored[-1].seq if stored else 0)

        await shows(f"{d}: eu -> us: requested")
        move_id = ev.decode((await store.read(subject))[-1].data).move_id
        ids = {"domain": d, "move_id": move_id, "epoch": 1}
        copied = dict(address=f"amy@{d}", source_messages=3, target_messages=3, source_digest="z", target_digest="z")
        steps = [(subject, ev.DomainMoveRouting(**ids), ": routing"),
                 (subject, ev.DomainMoveCopying(**ids, accounts=[f"amy@{d}"]), "copying, pass 1: 0/1 accounts"),
                 (progress, ev.DomainMoveAccountCopied(**ids, copy_pass=1, **copied), "copying, pass 1: 1/1 accounts"),
                 (subject, ev.DomainMoveSealing(**ids), "sealing, pass 2: 0/1 accounts"),
                 (progress, ev.DomainMoveAccountCopied(**ids, copy_pass=2, **copied), "sealing, pass 2: 1/1 accounts"),
                 (subject, ev.DomainMoveFlipped(**ids, target="us"), "flipped"),
                 (subject, ev.DomainMoveDone(**ids), f"{d}: eu -> us: done, pass 2: 1/1 accounts verified")]
        for on, event, then in steps:
            await append(on, event)
            await shows(then)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, printed
        shown = await asyncio.to_thread(run, server, "domain", "show", d, "--json")
        assert '"home_region": "us"' in shown.output
        status = await asyncio.to_thread(run, server, "domain", "move-status", d)
        assert "done" in status.output
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await nc.close()
