"""A domain's accounts for a domain move (``queries.domain_account_page``, served as
``colony.dir.accounts``): a range of the read model's (domain, name) index, page by page,
never a read of other domains' accounts -- checked on the row count SQLite's plan visits and
on what the pages return."""

from __future__ import annotations

from sqlalchemy import create_engine, insert, select, text

from colony_admin import db, queries


def _engine(domains: dict[str, int]):
    engine = create_engine("sqlite://")
    db.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(db.accounts), [
            {"address": f"u{i:04d}@{d}", "domain": d, "name": f"u{i:04d}", "sip_ha1": {}, "forwarding": [],
             "state": "active", "version": 1}
            for d, n in domains.items() for i in range(n)])
    return engine


def test_pages_hold_the_domain_s_accounts_in_order_and_nothing_else():
    engine = _engine({"moving.example": 25, "big.example": 400, "other.example": 3})
    got, after = [], None
    with engine.connect() as conn:
        while True:
            page = queries.domain_account_page(conn, "moving.example", after, 10)
            got += [address for _, address in page]
            if len(page) < 10:
                break
            after = page[-1][0]
    assert got == [f"u{i:04d}@moving.example" for i in range(25)]


def test_a_page_is_a_range_of_the_domain_index_not_a_scan_of_every_account():
    engine = _engine({"moving.example": 5, "big.example": 2000})
    with engine.connect() as conn:
        query = (select(db.accounts.c.name, db.accounts.c.address)
                 .where(db.accounts.c.domain == "moving.example", db.accounts.c.name > "u0001")
                 .order_by(db.accounts.c.name).limit(10))
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        plan = " ".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
        assert "ix_accounts_domain_name" in plan and "SCAN" not in plan, plan
        # and the function runs that very query: the rows the engine steps over are the page's
        steps = []
        conn.connection.dbapi_connection.set_progress_handler(lambda: steps.append(1), 1)
        page = queries.domain_account_page(conn, "moving.example", "u0001", 10)
        conn.connection.dbapi_connection.set_progress_handler(None, 1)
    assert [a for _, a in page] == [f"u{i:04d}@moving.example" for i in range(2, 5)]
    # 2,000 accounts of another domain would cost tens of thousands of VM steps to scan
    assert len(steps) < 500, len(steps)
