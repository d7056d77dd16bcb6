"""usage_records: one row per entry of an event, keyed (seq, item)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 03:30:00

A ``UsageSummed`` event carries many accounts' sums, each its own row under the event's
stream sequence.  Existing rows came from ``UsageRecorded`` (one fact per event) and get
item 0.  Downgrading keeps item-0 rows only: the old key cannot hold a summed event's other
entries (the projection would have to be rebuilt from the USAGE stream to get them back).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _table(key: list[str]) -> sa.Table:
    """usage_records with ``item`` and the primary key ``key``: what SQLite's batch copies to."""
    name = sa.String(length=320)
    return sa.Table(
        'usage_records', sa.MetaData(),
        sa.Column('seq', sa.BigInteger(), primary_key='seq' in key, autoincrement=False, nullable=False),
        sa.Column('item', sa.Integer(), primary_key='item' in key, autoincrement=False, nullable=False,
                  server_default='0'),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('domain', name, nullable=False),
        sa.Column('account', name, nullable=True),
        sa.Column('metric', sa.String(length=32), nullable=False),
        sa.Column('amount', sa.Float(), nullable=False),
        sa.Index('ix_usage_at', 'at'),
        sa.Index('ix_usage_domain_at', 'domain', 'at'),
    )


def _rekey(key: list[str], drop_item: bool = False) -> None:
    # SQLite cannot alter a primary key: the batch copies the table into one described here
    # (reflection would keep the old key).  PostgreSQL changes the constraint in place.
    if op.get_bind().dialect.name == 'sqlite':
        with op.batch_alter_table('usage_records', copy_from=_table(key), recreate='always') as batch:
            if drop_item:
                batch.drop_column('item')
        return
    old = sa.inspect(op.get_bind()).get_pk_constraint('usage_records').get('name') or 'usage_records_pkey'
    op.drop_constraint(old, 'usage_records', type_='primary')
    op.create_primary_key('usage_records_pkey', 'usage_records', key)
    if drop_item:
        op.drop_column('usage_records', 'item')


def upgrade() -> None:
    op.add_column('usage_records', sa.Column('item', sa.Integer(), nullable=False, server_default='0'))
    _rekey(['seq', 'item'])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM usage_records WHERE item <> 0"))
    _rekey(['seq'], drop_item=True)
