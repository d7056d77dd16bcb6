"""accounts: forwarding may keep a copy in the forwarding mailbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:40:00

Existing rows get false: before this column, forwarding always replaced delivery.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('accounts') as batch:
        batch.add_column(sa.Column('forward_keep_copy', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('accounts') as batch:
        batch.drop_column('forward_keep_copy')
