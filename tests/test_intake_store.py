# SPDX-License-Identifier: MIT
"""The SMTP listener's queue commit without SQLAlchemy (``maild.ingest.intake_store.IntakeStore``):
the rows it writes are the ones the ORM wrote, copies are counted on the first row, one bad message
does not cost the others, a large spooled message is stored byte-exact, SQLite writers take turns
on the shared writer lock, a lost PostgreSQL connection is made again, and neither SQLAlchemy nor
(on SQLite) psycopg is ever loaded. Real stores, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import REPO
from helpers import Desk, build_mail, mt
from sqlalchemy import select, text

from maild.db import transaction
from maild.ingest import intake_store, queue, spool
from maild.ingest.intake_store import IntakeStore, PostgresTarget, Queued, SqliteTarget, parse_url
from maild.ingest.raw import RawMail
from maild.models import RawBody, RawMessage


def smtp_raw(data: bytes, minute: int = 5, **envelope: Any) -> RawMail:
    fields: dict[str, Any] = {"source": "smtp", "mail_from": "peter@initech.example",
                              "rcpt_tos": ("support@example.com",), "peer": "127.0.0.1",
                              "received_at": mt(2026, 11, 20, 10, minute)} | envelope
    return RawMail(data=data, **fields)


@pytest.fixture
def store(desk: Desk) -> Iterator[IntakeStore]:
    with IntakeStore(desk.settings.database_url) as made:
        yield made


def raw_row(desk: Desk, row_id: int) -> tuple[Any, ...]:
    """The row's columns as stored (SQLite: the text and integers on disk), all but its keys."""
    with transaction(desk.factory) as s:
        return tuple(s.execute(text(
            "SELECT sha256, source, mail_from, CAST(rcpt_tos AS TEXT), peer, helo, tls, received_at, size, "
            "message_id, outcome, reason, case_id, duplicates, attempts FROM raw_messages WHERE id = :id"),
            {"id": row_id}).one())


def test_rows_are_stored_as_sqlalchemy_stores_them(desk: Desk, store: IntakeStore) -> None:
    # The same message written by the ORM (as the daemon's paths write it) and by the lean store: every
    # column holds the same value (on SQLite: the same text for the time and the JSON, 0/1 for tls), and
    # the ORM reads the lean row back as it was given: aware UTC, a list, a bool.
    received = datetime(2026, 11, 20, 10, 5, 7, 123456, tzinfo=mt(2026, 11, 20).tzinfo)
    raw = smtp_raw(build_mail(subject="Stored as the ORM stores it"), helo="mx.initech.example", tls=True,
                   rcpt_tos=("support@example.com", "andré@example.com"), received_at=received,
                   source_key="imap/acct/INBOX/7/42")
    [queued] = store.enqueue_batch([raw])
    assert isinstance(queued, Queued) and not queued.duplicate
    with transaction(desk.factory) as s:
        s.add(RawMessage(envelope_key="reference", sha256=raw.sha256, source=raw.source, source_key="reference",
                         mail_from=raw.mail_from, rcpt_tos=list(raw.rcpt_tos), peer=raw.peer, helo=raw.helo,
                         tls=raw.tls, received_at=raw.received_at, size=raw.size, reason="", duplicates=0,
                         attempts=0, data=raw.data))
        s.flush()
        reference = s.scalars(select(RawMessage.id).where(RawMessage.envelope_key == "reference")).one()
    assert raw_row(desk, queued.raw_id) == raw_row(desk, reference)
    with transaction(desk.factory) as s:
        row = s.get(RawMessage, queued.raw_id)
        assert row is not None
        assert (row.envelope_key, row.sha256, row.source_key) == (raw.envelope_key, raw.sha256, raw.source_key)
        assert row.received_at == received and row.received_at.tzinfo == UTC
        assert row.rcpt_tos == ["support@example.com", "andré@example.com"]
        assert row.tls is True and (row.mail_from, row.peer, row.helo) == (raw.mail_from, raw.peer, raw.helo)
        assert (row.size, row.outcome, row.reason, row.duplicates, row.attempts) == (len(raw.data), None, "", 0, 0)
        assert row.data == raw.data


def test_copies_in_a_batch_and_resends_are_counted_on_the_first_row(desk: Desk, store: IntakeStore) -> None:
    # Two copies in one batch, the same copy again later (from another thread, as asyncio.to_thread
    # calls it), and a message whose source key is stored already: one row each, the copies counted.
    a = smtp_raw(build_mail(subject="A", message_id="<a@i.example>"))
    b = smtp_raw(build_mail(subject="B", message_id="<b@i.example>"), 6, source_key="imap/acct/INBOX/1/1")
    first = store.enqueue_batch([a, b, a])
    later: list[Queued | Exception] = []
    thread = threading.Thread(target=lambda: later.extend(store.enqueue_batch(
        [a, smtp_raw(build_mail(subject="B again"), 7, source_key="imap/acct/INBOX/1/1")])))
    thread.start()
    thread.join()
    assert all(isinstance(q, Queued) for q in first + later), first + later
    ids = [(q.raw_id, q.duplicate) for q in first + later if isinstance(q, Queued)]
    assert ids[0][1] is False and ids[1][1] is False and ids[0][0] != ids[1][0]
    assert ids[2:] == [(ids[0][0], True), (ids[0][0], True), (ids[1][0], True)]
    with transaction(desk.factory) as s:
        assert [(r.id, r.duplicates) for r in s.scalars(select(RawMessage).order_by(RawMessage.id))] == [
            (ids[0][0], 2), (ids[1][0], 1)]


@pytest.mark.parametrize("via", ["listener", "daemon"])
@pytest.mark.parametrize("refusal", ["python", "sql"])
def test_one_message_that_cannot_be_stored_leaves_the_rest_of_its_batch(
        desk: Desk, store: IntakeStore, monkeypatch: pytest.MonkeyPatch, refusal: str, via: str) -> None:
    # The store refuses one message of a group commit, through the listener's own connection or the
    # one-process daemon's SQLAlchemy transaction (queue.enqueue_batch): that one gets its error (a
    # 451), the others are committed and processed. "sql": a statement fails, which aborts a
    # PostgreSQL transaction: the batch is rolled back and each message tried on its own, in a savepoint.
    raws = [smtp_raw(build_mail(subject=f"Batch {n}", message_id=f"<bq{n}@i.example>"), n) for n in range(3)]
    real = intake_store._insert_all

    def refusing(db: Any, batch: Any) -> Any:
        if raws[1] in batch:
            if refusal == "sql":
                db.execute("INSERT INTO raw_bodies (id, data) VALUES (NULL, NULL)")
            raise RuntimeError("disk says no")
        return real(db, batch)

    def enqueue(batch: list[RawMail]) -> list[Queued | Exception]:
        return store.enqueue_batch(batch) if via == "listener" else queue.enqueue_batch(desk.factory, batch)

    monkeypatch.setattr(intake_store, "_insert_all", refusing)
    results = enqueue(raws)
    assert isinstance(results[0], Queued) and isinstance(results[2], Queued)
    # the driver's own error (the insert runs on the DB-API connection): sqlite3's, or psycopg's NotNullViolation
    refused = (sqlite3.IntegrityError, psycopg.IntegrityError) if refusal == "sql" else RuntimeError
    assert isinstance(results[1], refused), results[1]
    with transaction(desk.factory) as s:
        stored = s.scalars(select(RawMessage).order_by(RawMessage.id)).all()
        assert [(r.id, r.data) for r in stored] == [(results[0].raw_id, raws[0].data),
                                                     (results[2].raw_id, raws[2].data)]
    queue.process_pending(desk.factory, desk.settings)
    assert sorted(c["subject"] for c in desk.cases()) == ["Batch 0", "Batch 2"]
    monkeypatch.undo()  # the store goes on: the refused message, sent again, is stored
    [again] = enqueue([raws[1]])
    assert isinstance(again, Queued) and not again.duplicate


def test_a_large_spooled_message_is_stored_byte_exact(desk: Desk, store: IntakeStore, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Read from its spool file in pieces (streamed by COPY on PostgreSQL), beside a small message.
    data = b"Subject: capture\r\n\r\n" + b"".join(  # ~3 MB of a packet dump: pglz would shrink it
        b"packet %08d %s\r\n" % (n, hashlib.shake_256(b"%d" % (n % 7)).hexdigest(28).encode()) for n in range(40_000))
    box = spool.Spool(tmp_path / "spool", memory=1 << 16)
    for pos in range(0, len(data), 65_536):
        box.write(data[pos:pos + 65_536])
    assert not box.in_memory
    large = smtp_raw(b"", spool=box)
    small = smtp_raw(build_mail(subject="Small"), 6)
    results = store.enqueue_batch([large, small])
    assert all(isinstance(q, Queued) and not q.duplicate for q in results), results
    with transaction(desk.factory) as s:
        row = s.scalars(select(RawMessage).where(RawMessage.id == results[0].raw_id)).one()  # type: ignore[union-attr]
        assert (row.size, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert s.get(RawBody, row.id).data == data  # type: ignore[union-attr]
        assert s.get(RawBody, results[1].raw_id).data == small.data  # type: ignore[union-attr]
        if s.bind.dialect.name == "postgresql":  # stored uncompressed, as migration 0006 wants it: read
            # back in slices without decompressing
            assert s.scalar(text("SELECT pg_column_compression(data) FROM raw_bodies WHERE id = :id"),
                            {"id": row.id}) is None
    box.close()


@pytest.fixture
def held_writer(sqlite_desk: Desk) -> Iterator[threading.Event]:
    """Another writer of the store (a thread in a maild transaction, holding the writer lock and
    SQLite's) until the event is set."""
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with transaction(sqlite_desk.factory) as s:
            s.execute(text("UPDATE raw_messages SET attempts = attempts WHERE id < 0"))
            held.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(10)
    yield release
    release.set()
    thread.join()


def test_sqlite_a_batch_waits_for_another_writer_then_commits(sqlite_desk: Desk,
                                                              held_writer: threading.Event) -> None:
    threading.Timer(0.5, held_writer.set).start()
    started = time.monotonic()
    with IntakeStore(sqlite_desk.settings.database_url, busy_timeout_ms=10_000) as store:
        [queued] = store.enqueue_batch([smtp_raw(build_mail())])
    assert 0.4 <= time.monotonic() - started < 5
    assert isinstance(queued, Queued)
    with transaction(sqlite_desk.factory) as s:
        assert s.scalars(select(RawMessage.id)).all() == [queued.raw_id]


def test_sqlite_past_the_busy_timeout_a_batch_raises_timeout_error(sqlite_desk: Desk,
                                                                   held_writer: threading.Event) -> None:
    # TimeoutError is the writer lock's (SQLite's own wait would end in sqlite3.OperationalError).
    with IntakeStore(sqlite_desk.settings.database_url, busy_timeout_ms=300) as store:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            store.enqueue_batch([smtp_raw(build_mail())])
        assert 0.25 <= time.monotonic() - started < 3
        held_writer.set()
        time.sleep(0.1)
        [queued] = store.enqueue_batch([smtp_raw(build_mail())])
    assert isinstance(queued, Queued) and not queued.duplicate


@pytest.mark.parametrize("store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_a_terminated_connection_is_made_again(desk: Desk) -> None:
    # The listener's backend is terminated while it idles (a server restart, an operator): the next
    # batch finds the connection dead before anything of it is sent, and is stored on a new one.
    name = "maild-intake-test"
    with IntakeStore(f"{desk.settings.database_url}?application_name={name}") as store:
        [first] = store.enqueue_batch([smtp_raw(build_mail(subject="Before"))])
        with transaction(desk.factory) as s:
            pids = s.scalars(text("SELECT pid FROM pg_stat_activity WHERE application_name = :n"), {"n": name}).all()
            assert len(pids) == 1
            assert s.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with transaction(desk.factory) as s:
                if not s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pids[0]}):
                    break
            time.sleep(0.05)
        [second] = store.enqueue_batch([smtp_raw(build_mail(subject="After", message_id="<after@i.example>"), 6)])
    assert isinstance(first, Queued) and isinstance(second, Queued) and second.raw_id != first.raw_id
    with transaction(desk.factory) as s:
        assert len(s.scalars(select(RawMessage.id)).all()) == 2


@pytest.mark.parametrize("store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_a_connection_lost_during_a_batch_fails_it_without_a_second_try(
        desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    # Statements of the batch had run when the connection went: it fails (451, the client sends it
    # again) rather than being run again by the store; the next batch gets a new connection.
    real = intake_store._insert_all
    runs: list[int] = []

    def dying(db: Any, batch: Any) -> Any:
        runs.append(1)
        if len(runs) == 1:
            db.execute("SELECT 1")
            db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return real(db, batch)

    monkeypatch.setattr(intake_store, "_insert_all", dying)
    with IntakeStore(desk.settings.database_url) as store:
        with pytest.raises(psycopg.OperationalError):
            store.enqueue_batch([smtp_raw(build_mail())])
        assert runs == [1]
        [queued] = store.enqueue_batch([smtp_raw(build_mail())])
    assert isinstance(queued, Queued) and not queued.duplicate


def run_python(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("module", ["maild.ingest.intake_store", "maild.locks"])
def test_the_lean_modules_import_no_sqlalchemy(module: str) -> None:
    loaded = run_python(f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} "
                        "& {'sqlalchemy', 'psycopg', 'holidays'}))")
    assert loaded == "[]"


def test_a_batch_through_the_lean_store_loads_no_sqlalchemy(desk: Desk) -> None:
    # The listener's whole path, in a process of its own: psycopg only for PostgreSQL, never SQLAlchemy
    # (nor maild.clock's holidays: the listener stamps each message itself).
    code = """if True:
        import sys
        from datetime import UTC, datetime
        from maild.ingest.intake_store import IntakeStore
        from maild.ingest.raw import RawMail
        with IntakeStore(sys.argv[1]) as store:
            [queued] = store.enqueue_batch([RawMail(data=b"Subject: lean\\r\\n\\r\\nHello\\r\\n", source="smtp",
                                                    received_at=datetime.now(UTC))])
        print(queued.raw_id, sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'psycopg', 'holidays'}))
    """
    raw_id, loaded = run_python(code, desk.settings.database_url).split(" ", 1)
    assert loaded == ("['psycopg']" if desk.settings.database_url.startswith("postgresql") else "[]")
    with transaction(desk.factory) as s:
        assert s.get(RawBody, int(raw_id)).data == b"Subject: lean\r\n\r\nHello\r\n"  # type: ignore[union-attr]


@pytest.mark.parametrize(("url", "target"), [
    ("sqlite:///var/maild.db", SqliteTarget("var/maild.db")),
    ("sqlite:////var/lib/maild/maild.db", SqliteTarget("/var/lib/maild/maild.db")),
    ("sqlite:///file:x.db", SqliteTarget("file:x.db")),  # a file of that name, as for SQLAlchemy
    ("postgresql+psycopg://maild:s%40cret@db.example:5433/desk",
     PostgresTarget({"user": "maild", "password": "s@cret", "host": "db.example", "port": "5433", "dbname": "desk"})),
    ("postgresql+psycopg://maild@/desk?host=/run/postgresql",
     PostgresTarget({"user": "maild", "dbname": "desk", "host": "/run/postgresql"})),
    ("postgresql://[::1]/desk?host=a&host=b&sslmode=require",
     PostgresTarget({"host": "a,b", "dbname": "desk", "sslmode": "require"})),
])
def test_database_urls_are_read_as_sqlalchemy_reads_them(url: str, target: SqliteTarget | PostgresTarget) -> None:
    assert parse_url(url) == target


def test_a_url_of_another_database_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        IntakeStore("mysql://maild@db/desk")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_store_is_refused_it_cannot_be_shared_with_the_work_process(url: str) -> None:
    with pytest.raises(ValueError, match="in-memory SQLite store cannot be shared"):
        IntakeStore(url)


def test_a_spool_file_that_ends_early_fails_the_message_and_stores_nothing(
        desk: Desk, store: IntakeStore, tmp_path: Path) -> None:
    # The value's length goes first (PostgreSQL's binary COPY, SQLite's zeroblob): a spool file that
    # ends before its size (a full disk, a truncated temporary file) fails the message, 451 at the
    # listener, and the transaction leaves no row, not a padded or truncated one.
    data = b"Subject: capture\r\n\r\n" + b"x" * 300_000
    box = spool.Spool(tmp_path / "spool", memory=1 << 16)
    box.write(data)
    assert not box.in_memory
    box.size += 1
    with pytest.raises(OSError, match="spool file ended"):
        store.enqueue_batch([smtp_raw(b"", spool=box)])
    with transaction(desk.factory) as s:
        assert s.scalars(select(RawMessage)).all() == []
        assert s.scalars(select(RawBody)).all() == []
    [again] = store.enqueue_batch([smtp_raw(build_mail(subject="Next"), 7)])  # the store goes on
    assert isinstance(again, Queued)


@pytest.mark.parametrize("store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_a_role_without_temp_privilege_still_stores_large_mail(desk: Desk, tmp_path: Path) -> None:
    # A hardened database revokes TEMP: the COPY through a temporary table is not possible, so the
    # listener appends the pieces instead, byte-exact, rather than answering 451 for every large message.
    url = desk.settings.database_url
    with transaction(desk.factory) as s:
        database = s.scalar(text("SELECT current_database()"))
        role = f"notemp_{database}"  # roles are the server's: one per test database
        s.execute(text(f"CREATE ROLE {role} LOGIN"))
        s.execute(text(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC'))
        s.execute(text(f"GRANT SELECT, INSERT, UPDATE ON raw_messages, raw_bodies TO {role}"))
        s.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    user = url.split("://", 1)[1].split("@", 1)[0]
    data = b"Subject: capture\r\n\r\n" + b"".join(b"packet %08d\r\n" % n for n in range(200_000))  # ~3 MB
    box = spool.Spool(tmp_path / "spool", memory=1 << 16)
    box.write(data)
    try:
        with IntakeStore(url.replace(f"://{user}@", f"://{role}@", 1)) as store:
            [queued] = store.enqueue_batch([smtp_raw(b"", spool=box)])
            assert isinstance(queued, Queued), queued
            assert store._conn.execute(  # type: ignore[union-attr]
                "SELECT has_database_privilege(current_database(), 'TEMP')").fetchone() == (False,)
    finally:
        box.close()
    with transaction(desk.factory) as s:
        assert s.get(RawBody, queued.raw_id).data == data  # type: ignore[union-attr]
