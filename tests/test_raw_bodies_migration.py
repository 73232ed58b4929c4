# SPDX-License-Identifier: MIT
"""Migration 0005 (raw_bodies) on a store that already holds mail: every message's bytes move to
``raw_bodies`` unchanged, the queue state stays on ``raw_messages``, and the downgrade moves them back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

import maild.db

T = "'2026-11-20 17:00:00'"
MAILS = [b"From: a@acme.example\r\nSubject: one\r\n\r\nfirst\r\n", bytes(range(256)) * 40]


def test_upgrade_moves_the_bytes_and_downgrade_moves_them_back(store_url: str) -> None:
    engine = maild.db.make_engine(store_url)
    config = maild.db._alembic_config(engine)
    command.upgrade(config, "0004")
    with engine.begin() as c:
        for n, data in enumerate(MAILS, start=1):
            c.execute(text(
                "INSERT INTO raw_messages (id, envelope_key, sha256, source, rcpt_tos, tls, received_at, size, "
                f"data, reason, duplicates, attempts, outcome) VALUES (:n, :k, :k, 'smtp', '[]', false, {T}, :size, "
                ":data, '', 0, :n, :outcome)"),
                {"n": n, "k": f"key{n}", "size": len(data), "data": data, "outcome": None if n == 2 else "new-case"})
    maild.db.migrate(engine)
    with engine.connect() as c:
        assert [(r[0], bytes(r[1])) for r in c.execute(text("SELECT id, data FROM raw_bodies ORDER BY id"))] == \
            [(1, MAILS[0]), (2, MAILS[1])]
        assert c.execute(text("SELECT id, attempts, outcome FROM raw_messages ORDER BY id")).all() == \
            [(1, 1, "new-case"), (2, 2, None)]
    assert "data" not in {col["name"] for col in inspect(engine).get_columns("raw_messages")}
    command.downgrade(config, "0004")
    with engine.connect() as c:
        assert [bytes(r[0]) for r in c.execute(text("SELECT data FROM raw_messages ORDER BY id"))] == MAILS
    assert "raw_bodies" not in inspect(engine).get_table_names()
    engine.dispose()


def test_postgresql_stores_raw_bodies_uncompressed(pg_url: str) -> None:
    # Migration 0006: queued mail's bytes go in without pglz (most of a batch's commit time), and
    # a slice of a large message is read without decompressing what comes before it.
    from maild.ingest.queue import enqueue_batch
    from maild.ingest.raw import RawMail

    engine, factory = maild.db.open_store(pg_url)
    text_mail = b"From: a@acme.example\r\nSubject: logs\r\n\r\n" + b"the same log line, again and again\r\n" * 4000
    [queued] = enqueue_batch(factory, [RawMail(data=text_mail, mail_from="a@acme.example",
                                               rcpt_tos=("support@example.com",))])
    with engine.connect() as c:
        assert c.execute(text("SELECT attstorage FROM pg_attribute WHERE attrelid = 'raw_bodies'::regclass "
                              "AND attname = 'data'")).scalar() == "e"
        row = c.execute(text("SELECT pg_column_compression(data), octet_length(data), "
                             "pg_column_size(data) FROM raw_bodies WHERE id = :id"), {"id": queued.raw_id}).one()
    assert row[0] is None and row[1] == len(text_mail) and row[2] >= len(text_mail)
    engine.dispose()
