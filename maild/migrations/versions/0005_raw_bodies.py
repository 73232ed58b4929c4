"""raw_bodies: a message's bytes in their own row, apart from its queue state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:20:00.000000

SQLite rewrites a whole row, overflow pages and all, for any update: setting ``attempts`` or
``outcome`` on a 25 MB message read and wrote 25 MB again and held two copies in memory. The bytes
now live in ``raw_bodies`` (one row per message, same id, never updated), so queue updates touch a
few hundred bytes and a large message is written and read in pieces (``maild.blobio``).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('raw_bodies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['id'], ['raw_messages.id'], name=op.f('fk_raw_bodies_id_raw_messages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_raw_bodies'))
    )
    op.execute("INSERT INTO raw_bodies (id, data) SELECT id, data FROM raw_messages")
    # In place on both (SQLite >= 3.35): a batch rebuild of raw_messages would drop a table that
    # case_messages, held_messages and now raw_bodies point at, which foreign keys forbid.
    op.execute("ALTER TABLE raw_messages DROP COLUMN data")


def downgrade() -> None:
    op.add_column('raw_messages', sa.Column('data', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE raw_messages SET data = (SELECT data FROM raw_bodies WHERE raw_bodies.id = raw_messages.id)")
    if op.get_bind().dialect.name != 'sqlite':  # SQLite cannot add NOT NULL in place; 0001 had it
        op.alter_column('raw_messages', 'data', existing_type=sa.LargeBinary(), nullable=False)
    op.drop_table('raw_bodies')
