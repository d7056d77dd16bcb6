"""The SQL read model: tables (SQLAlchemy Core), engine set-up, and migrations at start-up.

The read model is a projection of PROVISIONING (and of USAGE and AUDIT): it can be dropped
and rebuilt from the streams at any time.  Names that are listed and searched by prefix use
byte-order collation ("C" on PostgreSQL, BINARY on SQLite) so that keyset pagination and
``LIKE 'prefix%'`` both use the primary-key index and sort identically on both databases.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    false,
)
from sqlalchemy.dialects import postgresql

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("colony.admin.db")

metadata = MetaData()


def Name(length: int = 320) -> String:  # noqa: N802 - reads like a column type
    return String(length).with_variant(postgresql.VARCHAR(length, collation="C"), "postgresql")


domains = Table(
    "domains", metadata,
    Column("name", Name(), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("home_region", String(64), nullable=False, default=""),
    Column("cos", String(64), nullable=True, index=True),
    Column("branding", JSON, nullable=False),
    Column("storage", JSON, nullable=False),
    Column("dmarc_enforcement", String(16), nullable=True),
    # The domain's latest move to another region (null: never moved); phase "done" once finished.
    Column("move_id", String(64), nullable=True),
    Column("move_phase", String(16), nullable=True),
    Column("move_source", String(64), nullable=True),
    Column("move_target", String(64), nullable=True),
    Column("version", BigInteger, nullable=False),
)

accounts = Table(
    "accounts", metadata,
    Column("address", Name(), primary_key=True),
    Column("domain", Name(), nullable=False),
    Column("name", Name(), nullable=False),
    Column("real_name", String(200), nullable=False, default=""),
    Column("password_hash", Text, nullable=True),
    Column("sip_ha1", JSON, nullable=False),
    Column("cos", String(64), nullable=True, index=True),
    Column("quota_bytes", BigInteger, nullable=True),
    Column("services", JSON, nullable=True),
    Column("forwarding", JSON, nullable=False),
    Column("forward_keep_copy", Boolean, nullable=False, default=False, server_default=false()),
    Column("vacation", JSON, nullable=True),   # auto-reply settings (models.Vacation); NULL: none
    Column("state", String(16), nullable=False),
    Column("version", BigInteger, nullable=False),
    Index("ix_accounts_domain_name", "domain", "name", unique=True),
)

aliases = Table(
    "aliases", metadata,
    Column("address", Name(), primary_key=True),
    Column("domain", Name(), nullable=False),
    Column("name", Name(), nullable=False),
    Column("targets", JSON, nullable=False),
    Column("version", BigInteger, nullable=False),
    Index("ix_aliases_domain_name", "domain", "name", unique=True),
)

domain_aliases = Table(
    "domain_aliases", metadata,
    Column("name", Name(), primary_key=True),
    Column("domain", Name(), nullable=False, index=True),
    Column("version", BigInteger, nullable=False),
)

classes_of_service = Table(
    "classes_of_service", metadata,
    Column("name", Name(64), primary_key=True),
    Column("description", String(500), nullable=False, default=""),
    Column("limits", JSON, nullable=False),
    Column("version", BigInteger, nullable=False),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", Name(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("domain", Name(), nullable=True, index=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_by", String(200), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Column("version", BigInteger, nullable=False),
)

# Where each projection is in its stream; written in the same transaction as the rows it
# describes, so a restart (or a second instance sharing the database) resumes exactly.
checkpoints = Table(
    "projection_checkpoints", metadata,
    Column("name", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

usage_records = Table(
    "usage_records", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    # The entry's index in its event: 0 for a UsageRecorded, 0..n-1 for a UsageSummed's sums.
    Column("item", Integer, primary_key=True, autoincrement=False, nullable=False, server_default="0"),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("domain", Name(), nullable=False),
    Column("account", Name(), nullable=True),
    Column("metric", String(32), nullable=False),
    Column("amount", Float, nullable=False),
    Index("ix_usage_domain_at", "domain", "at"),
    Index("ix_usage_at", "at"),
)

audit_log = Table(
    "audit_log", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(400), nullable=False),
    Column("domain", Name(), nullable=True),
    Column("remote_addr", String(64), nullable=True),
    Column("outcome", String(32), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_audit_domain_seq", "domain", "seq"),
)

# The tables rebuilt from PROVISIONING (usage and audit come from their own streams).
PROVISIONING_TABLES = (domains, accounts, aliases, domain_aliases, classes_of_service, api_tokens)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE = "colony_write"  # execution option: this transaction will write
MIGRATION_LOCK = 0x636F6C6F6E79  # PostgreSQL advisory lock id ("colony") held while migrating


# Alembic keeps its running context in a module global, so two migrations in one process
# (two apps in one test process) must not overlap; across processes the database lock above
# does the serialising.
_alembic_in_use = threading.Lock()


def write_tx(engine: Engine):
    """A transaction that writes (projections, migrations): serialised across instances."""
    return engine.execution_options(**{WRITE: True}).begin()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            # WAL: readers never block the projection's writer; NORMAL is safe with WAL
            # because the stream, not the database, is the durable source of truth.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # Let SQLAlchemy's "begin" event below decide how each transaction starts.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:
            # Writers take the write lock up front (BEGIN IMMEDIATE) so that two instances
            # sharing one file queue on busy_timeout instead of failing with a snapshot
            # conflict halfway through; readers stay deferred and never block in WAL mode.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config  # imported when needed: the projection child never migrates

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; runs at every start).

    Instances starting together migrate one after the other: the migration runs in one
    write transaction (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL; both
    have transactional DDL), so the second finds the schema current and does nothing.
    """
    from alembic import command

    with _alembic_in_use:
        command.upgrade(alembic_config(engine), "head")
