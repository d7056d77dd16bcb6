"""The read model's batching (runs of creations as one INSERT, runs of deletions as one
DELETE ... IN) gives the same rows as applying the same events one at a time, whatever the
order of creations and deletions of one name within a batch."""

from __future__ import annotations

from sqlalchemy import insert

from colony import events as ev
from colony_admin import db
from colony_admin.projections import readmodel


def _events() -> list[ev.Event]:
    out: list[ev.Event] = []
    # A bulk import's shape: every domain's name fenced (a deletion on the alias subject), then
    # the domains, then their accounts; more domains than one IN list holds.
    names = [f"d{i}.example" for i in range(1200)]
    out += [ev.DomainAliasDeleted(alias=n, domain=n) for n in names]
    out += [ev.DomainCreated(domain=n, home_region="eu") for n in names]
    out += [ev.AccountCreated(address=f"u@{n}", domain=n, name="u") for n in names]
    # Creations and deletions of the same names interleaved: order decides what remains.
    out += [ev.DomainAliasCreated(alias="alias.example", domain="d0.example"),
            ev.DomainAliasDeleted(alias="alias.example", domain="d0.example"),
            ev.DomainAliasCreated(alias="alias.example", domain="d1.example"),    # again, after its deletion
            ev.AccountDeleted(address="u@d2.example"),
            ev.AccountCreated(address="u@d2.example", domain="d2.example", name="u", real_name="second"),
            ev.AccountDeleted(address="u@d3.example"),
            ev.DomainDeleted(domain="d3.example"),
            ev.AccountCreated(address="v@d4.example", domain="d4.example", name="v"),
            ev.AliasCreated(address="x@d4.example", domain="d4.example", name="x", targets=["v@d4.example"]),
            ev.AccountDeleted(address="v@d4.example"),
            ev.AliasDeleted(address="x@d4.example"),
            ev.CosCreated(name="small", limits={}),
            ev.CosDeleted(name="small"),
            ev.CosCreated(name="small", limits={"quota": 1}),
            ev.DomainAliasDeleted(alias="alias.example", domain="d1.example")]
    return out


def test_batched_deletions_and_creations_equal_one_event_at_a_time(databases):
    batch = list(enumerate(_events(), start=1))
    engines = [db.make_engine(databases.new()), db.make_engine(databases.new())]
    try:
        for engine in engines:
            db.migrate(engine)
        with engines[0].begin() as conn:
            assert readmodel.apply_provisioning(conn, batch) == len(batch)
        for item in batch:
            with engines[1].begin() as conn:
                readmodel.apply_provisioning(conn, [item])
        dumps = []
        for engine in engines:
            with engine.connect() as conn:
                dumps.append(readmodel.dump_provisioning(conn))
        assert dumps[0] == dumps[1]
        rows = dumps[0]
        assert len(rows["domain_aliases"]) == 0
        assert len(rows["domains"]) == 1199 and "d3.example" not in {r["name"] for r in rows["domains"]}
        accounts = {r["address"]: r for r in rows["accounts"]}
        assert len(accounts) == 1199 and accounts["u@d2.example"]["real_name"] == "second"
        assert "v@d4.example" not in accounts and rows["aliases"] == []
        assert [(r["name"], r["limits"]) for r in rows["classes_of_service"]] == [("small", {"quota": 1})]
    finally:
        for engine in engines:
            engine.dispose()


def test_bulk_rows_read_back_as_sqlalchemy_writes_them(databases):
    """The bulk path (its own JSON serialisation; COPY on PostgreSQL) stores awkward values --
    tabs, newlines, backslashes, quotes, non-ASCII, NULLs, JSON null, booleans -- exactly as
    SQLAlchemy's ordinary INSERT of the same rows does."""
    odd = 'tab\there, new\nline, back\\slash \\N, "quoted", ünïcödé ✉'
    events = [ev.DomainCreated(domain="odd.example", home_region="eu", branding={"display_name": odd},
                               storage={"x": None, "y": [1, "\\"]}, dmarc_enforcement=None),
              ev.DomainCreated(domain="plain.example", home_region="")]
    events += [ev.AccountCreated(address=f"u{i}@odd.example", domain="odd.example", name=f"u{i}", real_name=odd,
                                 password_hash=None if i % 2 else f"sealed:1:k{i}:{odd}", sip_ha1={"MD5": odd},
                                 quota=None if i % 2 else 2**40, services=None if i % 2 else ["imap", odd],
                                 forwarding=[odd] if i % 2 else [], forward_keep_copy=bool(i % 2))
               for i in range(4)]
    batch = list(enumerate(events, start=1))
    engines = [db.make_engine(databases.new()), db.make_engine(databases.new())]
    try:
        for engine in engines:
            db.migrate(engine)
        with engines[0].begin() as conn:
            assert readmodel.apply_provisioning(conn, batch) == len(batch)
        with engines[1].begin() as conn:
            for seq, event in batch:
                table, row = readmodel._creation_row(seq, event)
                conn.execute(insert(table), [row])
        dumps = []
        for engine in engines:
            with engine.connect() as conn:
                dumps.append(readmodel.dump_provisioning(conn))
        assert dumps[0] == dumps[1]
        accounts = {r["address"]: r for r in dumps[0]["accounts"]}
        assert accounts["u0@odd.example"]["real_name"] == odd and accounts["u1@odd.example"]["password_hash"] is None
        assert accounts["u0@odd.example"]["services"] == ["imap", odd] and accounts["u1@odd.example"]["services"] is None
        assert accounts["u1@odd.example"]["forward_keep_copy"] is True
    finally:
        for engine in engines:
            engine.dispose()
