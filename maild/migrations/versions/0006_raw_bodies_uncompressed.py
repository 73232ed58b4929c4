"""raw_bodies.data stored uncompressed on PostgreSQL (STORAGE EXTERNAL)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 08:10:00.000000

PostgreSQL compresses a ``bytea`` over 2 kB with pglz by default. For the queue's insert that was
most of the commit: a batch of 8 messages (about 100 kB) took 3.9 ms, 2.0 of them in the insert of
the bytes; stored out of line uncompressed, 2.1 and 0.5. Mail bodies are mostly base64 attachments,
which pglz hardly shrinks (the benchmark's stored bodies took the same space either way). It also
lets ``substring`` read a slice of a large message without decompressing everything before it
(``maild.blobio.read``). Values stored before this revision stay as they are; SQLite has no such
setting.
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE raw_bodies ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE raw_bodies ALTER COLUMN data SET STORAGE EXTENDED")
