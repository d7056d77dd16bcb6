"""PROVISIONING -> SQL read model, USAGE -> usage_records, AUDIT -> audit_log.

Each ``apply_*`` function takes one batch of (stream sequence, event) in stream order and
writes it in the caller's transaction together with the projection's checkpoint.  Events at
or below the checkpoint are skipped, so a batch applied twice (a restart, or two admin-api
instances sharing one PostgreSQL database) changes nothing the second time.

A row's ``version`` is the stream sequence of the aggregate's last event: the same number
the API hands out as ETag and expects back in If-Match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import JSON, Column, Connection, Table, delete, insert, select, update

from colony import events as ev
from colony.bus.tokens import normalise_domain
from colony_admin import aggregates, db

log = logging.getLogger("colony.admin.readmodel")

READ_MODEL = "readmodel"
USAGE = "usage"
AUDIT = "audit"

Batch = Sequence[tuple[int, ev.Event]]


def checkpoint(conn: Connection, name: str, *, lock: bool = False) -> int:
    query = select(db.checkpoints.c.seq).where(db.checkpoints.c.name == name)
    if lock:
        query = query.with_for_update()  # PostgreSQL: serialise instances sharing the database
    seq = conn.execute(query).scalar()
    return int(seq) if seq is not None else 0


def _advance(conn: Connection, name: str, old: int, new: int) -> None:
    if old == 0 and conn.execute(select(db.checkpoints.c.name).where(db.checkpoints.c.name == name)).first() is None:
        conn.execute(insert(db.checkpoints).values(name=name, seq=new))
    else:
        conn.execute(update(db.checkpoints).where(db.checkpoints.c.name == name).values(seq=new))


def skip_to(conn: Connection, name: str, seq: int) -> None:
    """Move a checkpoint past an event that cannot be applied (see runner: never stall)."""
    done = checkpoint(conn, name, lock=True)
    if seq > done:
        _advance(conn, name, done, seq)


def _fresh(conn: Connection, name: str, batch: Batch) -> tuple[int, Batch]:
    done = checkpoint(conn, name, lock=True)
    return done, [(seq, e) for seq, e in batch if seq > done]


def apply_provisioning(conn: Connection, batch: Batch) -> int:
    """Returns how many events were new."""
    done, fresh = _fresh(conn, READ_MODEL, batch)
    # Runs of creations become one multi-row INSERT per table (what bulk imports produce);
    # anything else is applied one by one, after flushing, so stream order is kept.
    # Runs of deletions likewise become one DELETE ... IN per key column (a bulk import fences
    # each new domain's name with a deletion on its domain-alias subject: one statement per
    # domain cost more than inserting the domain and its accounts).
    inserts: dict[Table, list[dict[str, Any]]] = {}
    deletes: dict[Column, list[str]] = {}
    for seq, event in fresh:
        row = _creation_row(seq, event)
        if row is not None:
            _flush_deletes(conn, deletes)
            inserts.setdefault(row[0], []).append(row[1])
            continue
        key = _deletion_key(event)
        if key is not None:
            _flush(conn, inserts)
            deletes.setdefault(key[0], []).append(key[1])
            continue
        _flush(conn, inserts)
        _flush_deletes(conn, deletes)
        _apply_one(conn, seq, event)
    _flush(conn, inserts)
    _flush_deletes(conn, deletes)
    if fresh:
        _advance(conn, READ_MODEL, done, fresh[-1][0])
    return len(fresh)


def _creation_row(seq: int, e: ev.Event) -> tuple[Table, dict[str, Any]] | None:
    # Accounts first: most events of a bulk import are, and a missed isinstance check on a
    # pydantic model costs ~0.1 us (aggregates.apply says more).
    if isinstance(e, ev.AccountCreated):
        return db.accounts, dict(address=e.address, domain=e.domain, name=e.name, real_name=e.real_name,
                                 password_hash=e.password_hash, sip_ha1=e.sip_ha1, cos=e.cos, quota_bytes=e.quota,
                                 services=e.services, forwarding=e.forwarding, forward_keep_copy=e.forward_keep_copy,
                                 state=e.state, version=seq)
    if isinstance(e, ev.DomainCreated):
        return db.domains, dict(name=e.domain, state=e.state, home_region=e.home_region, cos=e.cos,
                                branding=e.branding, storage=e.storage, dmarc_enforcement=e.dmarc_enforcement,
                                version=seq)
    if isinstance(e, ev.ApiTokenCreated):
        return db.api_tokens, dict(id=e.token_id, name=e.name, role=e.role, domain=e.domain,
                                   secret_sha256=e.secret_sha256, revoked=False, created_by=e.created_by,
                                   created_at=e.at, version=seq)
    return None


def _deletion_key(e: ev.Event) -> tuple[Column, str] | None:
    """The row a deletion removes, as (key column, value); None for any other event."""
    if isinstance(e, ev.DomainAliasDeleted):
        return db.domain_aliases.c.name, e.alias
    if isinstance(e, ev.DomainDeleted):
        return db.domains.c.name, e.domain
    if isinstance(e, ev.AccountDeleted):
        return db.accounts.c.address, e.address
    if isinstance(e, ev.AliasDeleted):
        return db.aliases.c.address, e.address
    if isinstance(e, ev.CosDeleted):
        return db.classes_of_service.c.name, e.name
    return None


_DELETE_CHUNK = 500  # values per IN list: well under any SQLite build's bound-parameter limit


def _flush_deletes(conn: Connection, deletes: dict[Column, list[str]]) -> None:
    for column, keys in deletes.items():
        for i in range(0, len(keys), _DELETE_CHUNK):
            conn.execute(delete(column.table).where(column.in_(keys[i:i + _DELETE_CHUNK])))
    deletes.clear()


def _flush(conn: Connection, inserts: dict[Table, list[dict[str, Any]]]) -> None:
    for table, rows in inserts.items():
        if table.name in _RAW_TABLES:
            _insert_raw(conn, table, rows)
        else:
            conn.execute(insert(table), rows)
    inserts.clear()


# Tables whose columns are only strings, integers, booleans and JSON: their bulk inserts skip
# SQLAlchemy's per-row parameter processing (most of the projection's CPU at import rates).
# JSON is serialised here, compactly (orjson), to the same JSON values SQLAlchemy would
# store; everything is read back through SQLAlchemy's JSON type as usual.
_RAW_TABLES = frozenset({"domains", "accounts"})
_RAW_SQL: dict[tuple[str, str, tuple[str, ...]], tuple[str, list[str], list[bool], bool]] = {}


def _insert_raw(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    columns = tuple(rows[0])
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        _copy(conn, table, columns, rows)
        return
    key = (conn.dialect.name, table.name, columns)
    compiled = _RAW_SQL.get(key)
    if compiled is None:
        stmt = insert(table).compile(dialect=conn.dialect, column_keys=list(columns))
        positional = stmt.positiontup is not None
        order = list(stmt.positiontup) if positional else list(columns)
        is_json = [isinstance(table.c[name].type, JSON) for name in order]
        compiled = _RAW_SQL[key] = (str(stmt), order, is_json, positional)
    sql, order, is_json, positional = compiled
    dumps = orjson.dumps
    # Python None in a JSON column is stored as JSON null, as SQLAlchemy's JSON type does.
    if positional:
        # The row's values in statement order with one C call, then only the JSON columns
        # replaced: a generator over every column of every row cost more than the insert.
        values = itemgetter(*order)
        json_at = [i for i, j in enumerate(is_json) if j]
        params: list[Any] = []
        for r in rows:
            row = list(values(r))
            for i in json_at:
                row[i] = dumps(row[i]).decode()
            params.append(tuple(row))
    else:
        pairs = list(zip(order, is_json, strict=True))
        params = [{c: dumps(r[c]).decode() if j else r[c] for c, j in pairs} for r in rows]
    conn.exec_driver_sql(sql, params)


_COPY_SQL: dict[tuple[str, tuple[str, ...]], tuple[str, list[bool]]] = {}


def _copy(conn: Connection, table: Table, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: the rows through ``COPY ... FROM STDIN`` in the transaction's own connection.

    An executemany sends one INSERT per row (psycopg pipelines them, but the server still
    parses, plans and executes each) and psycopg adapts every row's parameters in Python; COPY
    streams the rows as one statement and psycopg's C code formats them.  For 5,000 account
    rows: 0.17-0.22 s of the projector's CPU and 0.15-0.20 s of the backend's against
    0.03 s and 0.05-0.08 s (bench/README.md, "Provisioning").  A duplicate key fails the whole
    COPY as it failed the executemany: the runner then replays the batch event by event.
    """
    key = (table.name, columns)
    compiled = _COPY_SQL.get(key)
    if compiled is None:
        quote = conn.dialect.identifier_preparer
        sql = f"COPY {quote.format_table(table)} ({', '.join(quote.quote(c) for c in columns)}) FROM STDIN"
        compiled = _COPY_SQL[key] = (sql, [isinstance(table.c[c].type, JSON) for c in columns])
    sql, is_json = compiled
    dumps = orjson.dumps
    pairs = list(zip(columns, is_json, strict=True))
    with conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as copy:
        for r in rows:
            copy.write_row([dumps(r[c]).decode() if j else r[c] for c, j in pairs])


def _apply_one(conn: Connection, seq: int, e: ev.Event) -> None:  # noqa: C901 - one case per event type
    t = db
    match e:
        case ev.DomainCreated():
            conn.execute(insert(t.domains).values(name=e.domain, state=e.state, home_region=e.home_region, cos=e.cos,
                                                  branding=e.branding, storage=e.storage,
                                                  dmarc_enforcement=e.dmarc_enforcement, version=seq))
        case ev.DomainUpdated():
            conn.execute(update(t.domains).where(t.domains.c.name == e.domain).values(**e.changes, version=seq))
        case ev.DomainStateChanged():
            conn.execute(update(t.domains).where(t.domains.c.name == e.domain).values(state=e.state, version=seq))
        case ev.DomainMoveRequested() | ev.DomainMoveRouting() | ev.DomainMoveCopying() | ev.DomainMoveSealing() \
                | ev.DomainMoveFlipped() | ev.DomainMoveDone() | ev.DomainMoveCancelled():
            _apply_move(conn, seq, e)
        case ev.DomainMoveAccountCopied():
            pass  # a move's per-account progress: the controller's, not the read model's
        case ev.DomainDeleted():
            conn.execute(delete(t.domains).where(t.domains.c.name == e.domain))
        case ev.DomainAliasCreated():
            conn.execute(insert(t.domain_aliases).values(name=e.alias, domain=e.domain, version=seq))
        case ev.DomainAliasDeleted():
            conn.execute(delete(t.domain_aliases).where(t.domain_aliases.c.name == e.alias))
        case ev.AccountCreated():
            conn.execute(insert(t.accounts).values(
                address=e.address, domain=e.domain, name=e.name, real_name=e.real_name, password_hash=e.password_hash,
                sip_ha1=e.sip_ha1, cos=e.cos, quota_bytes=e.quota, services=e.services, forwarding=e.forwarding,
                forward_keep_copy=e.forward_keep_copy, state=e.state, version=seq))
        case ev.AccountUpdated():
            conn.execute(update(t.accounts).where(t.accounts.c.address == e.address).values(**e.changes, version=seq))
        case ev.AccountPasswordSet():
            conn.execute(update(t.accounts).where(t.accounts.c.address == e.address)
                         .values(password_hash=e.password_hash, sip_ha1=e.sip_ha1, version=seq))
        case ev.AccountDeleted():
            conn.execute(delete(t.accounts).where(t.accounts.c.address == e.address))
        case ev.AliasCreated():
            conn.execute(insert(t.aliases).values(address=e.address, domain=e.domain, name=e.name, targets=e.targets,
                                                  version=seq))
        case ev.AliasUpdated():
            conn.execute(update(t.aliases).where(t.aliases.c.address == e.address).values(targets=e.targets, version=seq))
        case ev.AliasDeleted():
            conn.execute(delete(t.aliases).where(t.aliases.c.address == e.address))
        case ev.CosCreated():
            conn.execute(insert(t.classes_of_service).values(name=e.name, description=e.description, limits=e.limits,
                                                             version=seq))
        case ev.CosUpdated():
            conn.execute(update(t.classes_of_service).where(t.classes_of_service.c.name == e.name)
                         .values(**e.changes, version=seq))
        case ev.CosDeleted():
            conn.execute(delete(t.classes_of_service).where(t.classes_of_service.c.name == e.name))
        case ev.ApiTokenCreated():
            conn.execute(insert(t.api_tokens).values(
                id=e.token_id, name=e.name, role=e.role, domain=e.domain, secret_sha256=e.secret_sha256,
                revoked=False, created_by=e.created_by, created_at=e.at, version=seq))
        case ev.ApiTokenRevoked():
            conn.execute(update(t.api_tokens).where(t.api_tokens.c.id == e.token_id).values(revoked=True, version=seq))
        case _:
            log.warning("read model: ignoring %s at seq %d (not a provisioning event)", e.type, seq)


def _apply_move(conn: Connection, seq: int, e: ev.Event) -> None:
    """The aggregate's own rule (``aggregates.apply_move``) on the row: a repeated or
    out-of-order phase changes nothing but ``version``, which follows every event of the
    domain's subject (it is the ETag)."""
    d = db.domains.c
    row = conn.execute(select(d.home_region, d.move_id, d.move_phase, d.move_source, d.move_target)
                       .where(d.name == e.domain)).first()
    if row is None:
        return
    move = None if row.move_id is None else {"move_id": row.move_id, "phase": row.move_phase,
                                             "source": row.move_source or "", "target": row.move_target or ""}
    after = aggregates.apply_move({"home_region": row.home_region, "move": move}, e)
    moved = after["move"] or {}
    conn.execute(update(db.domains).where(d.name == e.domain).values(
        home_region=after["home_region"], move_id=moved.get("move_id"), move_phase=moved.get("phase"),
        move_source=moved.get("source"), move_target=moved.get("target"), version=seq))


# --- usage -------------------------------------------------------------------------------------

def usage_row(seq: int, e: ev.UsageRecorded, item: int = 0) -> dict[str, Any]:
    domain = normalise_domain(e.domain)
    account = e.account.strip().lower() if e.account else None
    if account and "@" not in account:
        account = f"{account}@{domain}"  # producers may send the local part only
    return {"seq": seq, "item": item, "at": e.at, "domain": domain, "account": account, "metric": e.metric,
            "amount": e.amount}


def usage_rows(seq: int, e: ev.Event) -> list[dict[str, Any]]:
    """The rows of one USAGE event: one for a ``UsageRecorded``, one per entry of a
    ``UsageSummed`` (both are on the stream while producers of either version run)."""
    if isinstance(e, ev.UsageRecorded):
        return [usage_row(seq, e)]
    if isinstance(e, ev.UsageSummed):
        return [usage_row(seq, record, item) for item, record in enumerate(e.records())]
    return []


def apply_usage(conn: Connection, batch: Batch) -> int:
    done, fresh = _fresh(conn, USAGE, batch)
    rows = [row for seq, e in fresh for row in usage_rows(seq, e)]
    if rows:
        conn.execute(insert(db.usage_records), rows)
    if fresh:
        _advance(conn, USAGE, done, fresh[-1][0])
    return len(fresh)


# --- audit -------------------------------------------------------------------------------------

def apply_audit(conn: Connection, batch: Batch) -> int:
    done, fresh = _fresh(conn, AUDIT, batch)
    rows = [{"seq": seq, "at": e.at, "actor": e.actor[:200], "role": e.role, "action": e.action,
             "target": e.target[:400], "domain": e.domain, "remote_addr": e.remote_addr, "outcome": e.outcome,
             "detail": e.detail} for seq, e in fresh if isinstance(e, ev.AuditRecorded)]
    if rows:
        conn.execute(insert(db.audit_log), rows)
    if fresh:
        _advance(conn, AUDIT, done, fresh[-1][0])
    return len(fresh)


def dump_provisioning(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    """Every provisioning row, ordered: what the rebuild test compares."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table in db.PROVISIONING_TABLES:
        pk = list(table.primary_key.columns)
        rows = conn.execute(select(table).order_by(*pk)).mappings().all()
        out[table.name] = [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows]
    return out
