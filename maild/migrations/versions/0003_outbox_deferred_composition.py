"""outbox: deferred composition (nullable data, pending)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:00:00.000000

Mail without attachments is queued with what compose needs (``pending``) and composed when the
sender claims it, so ``data`` is NULL until then (maild.outbound.outbox).

SQLite cannot drop a NOT NULL in place: batch mode copies the table, drops the old one and renames
the copy. With foreign keys on (maild.db), dropping ``outbox`` while ``case_messages`` rows point at
it is a violation (``defer_foreign_keys`` does not help: the rename does not clear the violations
counted by the drop), and ``PRAGMA foreign_keys=OFF`` does nothing inside a transaction. So the
pointers are set aside in a temporary table for the rebuild and put back after it, all in the
migration's one transaction.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild_outbox(change: Callable[[BatchOperations], None]) -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute('CREATE TEMPORARY TABLE _maild_outbox_refs AS '
                   'SELECT id, outbox_id FROM case_messages WHERE outbox_id IS NOT NULL')
        op.execute('UPDATE case_messages SET outbox_id = NULL WHERE outbox_id IS NOT NULL')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        change(batch_op)
    if sqlite:
        op.execute('UPDATE case_messages SET outbox_id = (SELECT r.outbox_id FROM _maild_outbox_refs r '
                   'WHERE r.id = case_messages.id) WHERE id IN (SELECT id FROM _maild_outbox_refs)')
        op.execute('DROP TABLE _maild_outbox_refs')


def _upgrade(batch_op: BatchOperations) -> None:
    batch_op.add_column(sa.Column('pending', sa.JSON(), nullable=True))
    batch_op.alter_column('data', existing_type=sa.LargeBinary(), nullable=True)


def _downgrade(batch_op: BatchOperations) -> None:
    batch_op.alter_column('data', existing_type=sa.LargeBinary(), nullable=False)
    batch_op.drop_column('pending')


def upgrade() -> None:
    _rebuild_outbox(_upgrade)


def downgrade() -> None:
    # Rows still waiting for composition have no bytes: deliver them (`maild send`) first.
    _rebuild_outbox(_downgrade)
