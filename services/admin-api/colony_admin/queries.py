"""Read-model queries (synchronous; routes call them in a worker thread).

Listing is keyset pagination: the cursor is the last key of the previous page (opaque,
base64url), the next page is ``WHERE key > cursor ORDER BY key LIMIT n``.  Its cost does not
depend on how deep the page is, unlike OFFSET.  Prefix search is a range on the same index.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, ColumnElement, Table, and_, func, select

from colony_admin import db
from colony_admin.problems import BadRequest

USAGE_METRICS = ("storage_bytes", "messages_in", "messages_out", "sip_call_seconds", "sip_registrations")
GAUGES = {"storage_bytes"}


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        key = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = "\x00"
    if "\x00" in key:  # no key holds one, and PostgreSQL refuses it as a parameter
        raise BadRequest("cursor is not one this API handed out")
    return key


def page(conn: Connection, table: Table, key: Column, *, where: list[ColumnElement[bool]] | None = None,
         cursor: str | None = None, prefix: str | None = None, prefix_col: Column | None = None,
         limit: int = 100) -> tuple[list[dict[str, Any]], str | None]:
    conds = list(where or [])
    if cursor:
        conds.append(key > decode_cursor(cursor))
    if prefix:
        col = prefix_col if prefix_col is not None else key
        # A closed index range [prefix, next prefix) keeps a search for a rare prefix from
        # scanning to the end of the table; byte-order collation makes code-point order the
        # index order on both databases.  LIKE then only re-checks rows inside the range.
        conds.append(col >= prefix)
        if ord(prefix[-1]) < 0x10FFFF:
            conds.append(col < prefix[:-1] + chr(ord(prefix[-1]) + 1))
        conds.append(col.startswith(prefix, autoescape=True))
    query = select(table).order_by(key).limit(limit + 1)
    if conds:
        query = query.where(and_(*conds))
    rows = [dict(r) for r in conn.execute(query).mappings().all()]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1][key.name]) if more and rows else None)


def get(conn: Connection, table: Table, key: Column, value: str) -> dict[str, Any] | None:
    row = conn.execute(select(table).where(key == value)).mappings().first()
    return dict(row) if row else None


def domain_has_addresses(conn: Connection, domain: str) -> bool:
    for table in (db.accounts, db.aliases):
        if conn.execute(select(table.c.address).where(table.c.domain == domain).limit(1)).first():
            return True
    return bool(conn.execute(select(db.domain_aliases.c.name).where(db.domain_aliases.c.domain == domain).limit(1)).first())


def domain_has_accounts(conn: Connection, domain: str) -> bool:
    """Accounts only: they are what has stored mailboxes (aliases and domain aliases store nothing)."""
    return bool(conn.execute(select(db.accounts.c.address).where(db.accounts.c.domain == domain).limit(1)).first())


def domain_account_page(conn: Connection, domain: str, after: str | None, limit: int) -> list[tuple[str, str]]:
    """(name, address) of up to ``limit`` accounts of ``domain`` whose local part sorts after
    ``after``, in that order: a range of the (domain, name) index, so a page costs the page,
    never a scan of every account of the cluster (what a domain move's list of accounts was)."""
    where = [db.accounts.c.domain == domain]
    if after is not None:
        where.append(db.accounts.c.name > after)
    query = (select(db.accounts.c.name, db.accounts.c.address).where(*where)
             .order_by(db.accounts.c.name).limit(limit))
    return [(row.name, row.address) for row in conn.execute(query)]


def cos_in_use(conn: Connection, name: str) -> bool:
    return bool(conn.execute(select(db.domains.c.name).where(db.domains.c.cos == name).limit(1)).first()
                or conn.execute(select(db.accounts.c.address).where(db.accounts.c.cos == name).limit(1)).first())


def usage_report(conn: Connection, start: datetime, end: datetime, domain: str | None,
                 per_account: bool) -> list[dict[str, Any]]:
    """Counters are summed over [start, end); the storage gauge is the latest value per account.

    Rows: one per domain (``account`` None, the domain total) and, with ``per_account``, one
    per account that has usage.
    """
    u = db.usage_records
    window = [u.c.at >= start, u.c.at < end]
    if domain:
        window.append(u.c.domain == domain)
    totals: dict[tuple[str, str | None], dict[str, float]] = defaultdict(lambda: dict.fromkeys(USAGE_METRICS, 0.0))

    counters = (select(u.c.domain, u.c.account, u.c.metric, func.sum(u.c.amount))
                .where(and_(*window, u.c.metric.not_in(GAUGES)))
                .group_by(u.c.domain, u.c.account, u.c.metric))
    for dom, account, metric, amount in conn.execute(counters):
        if metric in totals[(dom, None)]:
            totals[(dom, None)][metric] += amount
            if per_account and account:
                totals[(dom, account)][metric] += amount

    # The latest storage report per (domain, account) in the window: max(seq) is the latest.
    latest = (select(func.max(u.c.seq)).where(and_(*window, u.c.metric.in_(GAUGES)))
              .group_by(u.c.domain, u.c.account, u.c.metric))
    gauges = select(u.c.domain, u.c.account, u.c.metric, u.c.amount).where(u.c.seq.in_(latest))
    for dom, account, metric, amount in conn.execute(gauges):
        totals[(dom, None)][metric] += amount
        if per_account and account:
            totals[(dom, account)][metric] += amount

    return [{"domain": d, "account": a, **m}
            for (d, a), m in sorted(totals.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))]
