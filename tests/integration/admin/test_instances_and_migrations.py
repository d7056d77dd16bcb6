"""Several admin-api instances are one system image; the Alembic migrations match the model."""

from __future__ import annotations

import asyncio
import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from colony_admin import db
from colony_admin.models import Role


async def test_a_token_made_on_one_instance_works_at_once_on_another(make_stack):
    a, b = await make_stack(), await make_stack()
    r = await a.client.post("/v1/tokens", json={"name": "ops", "role": "system-admin"}, headers=a.as_(a.sys_token))
    token = r.json()["token"]
    # b may not have projected the token yet: it falls back to the PROVISIONING stream
    who = await b.client.get("/v1/whoami", headers=b.as_(token))
    assert who.status_code == 200 and who.json()["name"] == "ops"
    # and a change made through b is seen by a (read-your-writes via the stream)
    d = "shared-" + token[4:12] + ".example"
    assert (await b.client.post("/v1/domains", json={"name": d}, headers=b.as_(token))).status_code == 201
    assert (await a.client.get(f"/v1/domains/{d}", headers=a.as_(token))).status_code == 200
    assert await a.token(Role.BILLING_READER)  # tokens written straight to the stream work too


def test_migrations_upgrade_downgrade_and_match_the_tables(databases):
    engine = db.make_engine(databases.new())
    try:
        db.migrate(engine)
        db.migrate(engine)  # idempotent: every start runs it
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        cfg = db.alembic_config(engine)
        command.downgrade(cfg, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")
        assert "accounts" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


async def test_instances_sharing_one_database_migrate_and_project_together(make_stack, databases):
    url = databases.new()
    a, b = await asyncio.gather(make_stack(url), make_stack(url))  # concurrent start: concurrent migrations
    h = a.as_(a.sys_token)
    d = f"together-{uuid.uuid4().hex[:8]}.example"
    await a.client.post("/v1/domains", json={"name": d}, headers=h)
    results = await asyncio.gather(*(
        (a if i % 2 else b).client.post(f"/v1/domains/{d}/accounts", json={"name": f"u{i}"}, headers=h)
        for i in range(20)))
    assert all(r.status_code == 201 for r in results)
    last = (await a.ctx.js.stream_info("PROVISIONING")).state.last_seq
    assert await a.ctx.readmodel.wait_for(last, timeout=30) and await b.ctx.readmodel.wait_for(last, timeout=30)
    listed = (await b.client.get(f"/v1/domains/{d}/accounts", headers=h)).json()["items"]
    assert sorted(x["name"] for x in listed) == sorted(f"u{i}" for i in range(20))


def test_migration_0003_gives_existing_accounts_forwarding_without_a_kept_copy(databases):
    """Accounts stored before forward_keep_copy existed keep what forwarding meant then:
    forwarded mail is not kept.  Downgrading drops the column and keeps the rows."""
    engine = db.make_engine(databases.new())
    try:
        cfg = db.alembic_config(engine)
        command.upgrade(cfg, "0002")
        assert "forward_keep_copy" not in {c["name"] for c in inspect(engine).get_columns("accounts")}
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO accounts (address, domain, name, real_name, sip_ha1, forwarding, state, version) "
                "VALUES ('old@m.example', 'm.example', 'old', '', '{}', '[\"x@y.example\"]', 'active', 7)")
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            row = conn.execute(db.accounts.select()).mappings().one()
        assert row["address"] == "old@m.example" and row["forwarding"] == ["x@y.example"]
        assert row["forward_keep_copy"] is False
        command.downgrade(cfg, "0002")
        assert "forward_keep_copy" not in {c["name"] for c in inspect(engine).get_columns("accounts")}
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT address FROM accounts").scalar() == "old@m.example"
    finally:
        engine.dispose()


def test_migration_0004_existing_domains_have_never_moved_and_the_projection_records_a_move(databases):
    """Domains stored before the move columns read as never moved; the read model then folds
    a move's phases (a repeated phase changes nothing but the version) and the flip re-homes
    the domain.  Downgrading drops the columns and keeps the rows."""
    from colony import events as ev
    from colony_admin.projections import readmodel

    engine = db.make_engine(databases.new())
    try:
        cfg = db.alembic_config(engine)
        command.upgrade(cfg, "0003")
        assert "move_phase" not in {c["name"] for c in inspect(engine).get_columns("domains")}
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO domains (name, state, home_region, branding, storage, version) "
                "VALUES ('m.example', 'active', 'eu', '{}', '{}', 3)")
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            row = conn.execute(db.domains.select()).mappings().one()
        assert row["home_region"] == "eu" and row["move_id"] is None and row["move_phase"] is None
        ids = {"domain": "m.example", "move_id": "mv1"}
        batch = [(10, ev.DomainMoveRequested(**ids, source="eu", target="us")),
                 (11, ev.DomainMoveRouting(**ids, epoch=4)),
                 (12, ev.DomainMoveRouting(**ids, epoch=4)),          # a repeated append
                 (13, ev.DomainMoveCopying(**ids, accounts=["a@m.example"], epoch=4)),
                 (14, ev.DomainMoveAccountCopied(**ids, address="a@m.example", copy_pass=1, source_messages=1,
                                                 target_messages=1, source_digest="x", target_digest="x", epoch=4))]
        with engine.begin() as conn:
            readmodel.apply_provisioning(conn, batch)
            row = conn.execute(db.domains.select()).mappings().one()
        assert (row["move_id"], row["move_phase"], row["move_source"], row["move_target"], row["home_region"]) \
            == ("mv1", "copying", "eu", "us", "eu")
        assert row["version"] == 13  # the domain subject's last event (the progress one is another subject)
        with engine.begin() as conn:
            readmodel.apply_provisioning(conn, [
                (20, ev.DomainMoveFlipped(**ids, target="us", epoch=4)),   # sealing skipped: refused
                (21, ev.DomainMoveSealing(**ids, epoch=4)), (22, ev.DomainMoveFlipped(**ids, target="us", epoch=4))])
            row = conn.execute(db.domains.select()).mappings().one()
        assert (row["move_phase"], row["home_region"], row["version"]) == ("flipped", "us", 22)
        command.downgrade(cfg, "0003")
        assert "move_phase" not in {c["name"] for c in inspect(engine).get_columns("domains")}
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT home_region FROM domains").scalar() == "us"
    finally:
        engine.dispose()


def test_migration_0005_keys_usage_rows_by_sequence_and_item(databases):
    """Usage rows stored before 0005 become item 0 of their event; a UsageSummed then
    projects one row per entry under its one sequence.  Downgrading keeps the item-0 rows."""
    from colony import events as ev
    from colony_admin.projections import readmodel

    engine = db.make_engine(databases.new())
    try:
        cfg = db.alembic_config(engine)
        command.upgrade(cfg, "0004")
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO usage_records (seq, at, domain, account, metric, amount) "
                "VALUES (5, '2026-11-25 10:00:00+00:00', 'm.example', 'a@m.example', 'messages_in', 2)")
        command.upgrade(cfg, "head")
        summed = ev.UsageSummed(domain="m.example", sums=[("a@m.example", "sip_registrations", 3),
                                                          ("b", "sip_call_seconds", 1.5)])
        with engine.begin() as conn:
            readmodel.apply_usage(conn, [(9, summed)])
            readmodel.apply_usage(conn, [(9, summed)])       # applied twice: nothing new
            rows = conn.execute(db.usage_records.select().order_by("seq", "item")).mappings().all()
        assert [(r["seq"], r["item"], r["account"], r["metric"], r["amount"]) for r in rows] == [
            (5, 0, "a@m.example", "messages_in", 2), (9, 0, "a@m.example", "sip_registrations", 3),
            (9, 1, "b@m.example", "sip_call_seconds", 1.5)]
        command.downgrade(cfg, "0004")
        assert "item" not in {c["name"] for c in inspect(engine).get_columns("usage_records")}
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT seq FROM usage_records ORDER BY seq").scalars().all() == [5, 9]
    finally:
        engine.dispose()
