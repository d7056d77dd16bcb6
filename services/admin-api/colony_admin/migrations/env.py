"""Alembic environment: migrations run programmatically (``colony_admin.db.migrate``) with the
engine the admin API already has, so there is no alembic.ini and no URL to keep in sync."""

from __future__ import annotations

from alembic import context

from colony_admin.db import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    context.run_migrations()
