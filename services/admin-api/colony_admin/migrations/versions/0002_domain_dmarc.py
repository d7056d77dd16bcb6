"""domains: a per-domain DMARC choice for inbound mail

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:20:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('domains') as batch:
        batch.add_column(sa.Column('dmarc_enforcement', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('domains') as batch:
        batch.drop_column('dmarc_enforcement')
