# SPDX-License-Identifier: MIT
"""Tests for migration 0003 (deferred composition) on a store that already holds mail: the outbox rows,
their bytes and the case history's links to them survive the upgrade and the downgrade."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Engine, text

import maild.db
from maild.config import SecuritySettings, Settings
from maild.models import OutboxItem
from maild.outbound.outbox import message_bytes

T = "'2026-11-20 17:00:00'"
RAW = b"From: support@example.com\r\nSubject: s\r\n\r\nqueued before the upgrade\r\n"


def fill_at_0002(engine: Engine) -> None:
    """A store at revision 0002 with a case, two outbox rows and the case history pointing at them."""
    command.upgrade(maild.db._alembic_config(engine), "0002")
    with engine.begin() as c:
        c.execute(text(
            "INSERT INTO cases (id, kind, priority, status, requester, requester_name, subject, created_at, "
            f"updated_at, participants, escalation_level, expedited) VALUES (1, 'technical', 'P4', 'new', "
            f"'a@acme.example', '', 'Phones down', {T}, {T}, '[]', 0, false)"))  # fmt: skip
        for n in (1, 2):
            c.execute(text(
                "INSERT INTO outbox (id, case_id, template, from_addr, to_addr, subject, message_id, data, "
                "automatic, status, attempts, created_at, next_attempt_at, expires_at) VALUES (:n, 1, "
                f"'ack_new_case', 'support@example.com', 'a@acme.example', 's', :mid, :data, true, 'queued', 0, "
                f"{T}, {T}, {T})"), {"n": n, "mid": f"m{n}@example.com", "data": RAW})  # fmt: skip
            c.execute(text(
                "INSERT INTO case_messages (id, case_id, direction, author, from_addr, to_addrs, cc_addrs, "
                "subject, message_id, date, text, quoted, signature, outbox_id) VALUES (:n, 1, 'out', 'system', "
                f"'support@example.com', '[]', '[]', 's', :mid, {T}, 'hi', '', '', :n)"),
                {"n": n, "mid": f"m{n}@example.com"})  # fmt: skip


def links(engine: Engine) -> list[tuple[int, int | None]]:
    with engine.connect() as c:
        return [(r[0], r[1]) for r in c.execute(text("SELECT id, outbox_id FROM case_messages ORDER BY id"))]


def test_upgrade_and_downgrade_keep_rows_bytes_and_links(store_url: str) -> None:
    # SQLite rebuilds the outbox table for the nullable column; the case_messages rows must still
    # point at their outbox rows (foreign keys stay on), and queued bytes must still be sent as they are.
    engine = maild.db.make_engine(store_url)
    fill_at_0002(engine)
    maild.db.migrate(engine)
    assert links(engine) == [(1, 1), (2, 2)]
    with engine.connect() as c:
        assert c.execute(text("SELECT id, data, pending FROM outbox ORDER BY id")).all() == [(1, RAW, None),
                                                                                             (2, RAW, None)]
        if engine.dialect.name == "sqlite":
            assert c.execute(text("PRAGMA foreign_key_check")).all() == []
    factory = maild.db.make_sessionmaker(engine)
    with maild.db.transaction(factory) as s:
        item = s.get(OutboxItem, 1)
        assert item is not None and message_bytes(item, Settings(security=SecuritySettings(secret="x"))) == RAW
    command.downgrade(maild.db._alembic_config(engine), "0002")
    assert links(engine) == [(1, 1), (2, 2)]
    with engine.connect() as c:
        assert c.execute(text("SELECT data FROM outbox ORDER BY id")).scalars().all() == [RAW, RAW]
    engine.dispose()
