"""Alembic environment: migrations run programmatically (``colony_admin.db.migrate``) with the
engine the admin API already has, so there is no alembic.ini and no URL to keep in sync."""

from __future__ import annotations

from alembic import context

from colony_admin.db import MIGRATION_LOCK, metadata, write_tx

engine = context.config.attributes["engine"]
with write_tx(engine) as connection:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    context.run_migrations()
