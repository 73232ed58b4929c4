"""raw_messages: the SMTP queue (attempts, pending index)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 03:40:00.000000

The listener answers ``250`` once a message's raw bytes and envelope are committed and processes it
afterwards (``maild.ingest.queue``): a row whose ``outcome`` is NULL is waiting. ``attempts`` counts
processing runs begun on it, so a message that keeps killing the process is quarantined instead of
stopping the queue for ever.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('raw_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index('ix_raw_messages_pending', ['id'], unique=False,
                              sqlite_where=sa.text('outcome IS NULL'), postgresql_where=sa.text('outcome IS NULL'))


def downgrade() -> None:
    # Messages still queued (outcome NULL) stay stored; process them (`maild run`) before going back.
    with op.batch_alter_table('raw_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_raw_messages_pending', sqlite_where=sa.text('outcome IS NULL'),
                            postgresql_where=sa.text('outcome IS NULL'))
        batch_op.drop_column('attempts')
