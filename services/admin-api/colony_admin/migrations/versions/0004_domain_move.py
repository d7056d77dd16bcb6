"""domains: the latest move to another region (id, phase, source, target)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 17:50:00

Existing rows get nulls: no domain had moved before these columns (a move could not be
asked for), and null reads as "never moved".
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('domains') as batch:
        batch.add_column(sa.Column('move_id', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('move_phase', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('move_source', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('move_target', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('domains') as batch:
        for column in ('move_target', 'move_source', 'move_phase', 'move_id'):
            batch.drop_column(column)
