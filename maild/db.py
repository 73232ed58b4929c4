# SPDX-License-Identifier: MIT
"""Engine, sessions and the one transaction boundary.

SQLite runs in WAL mode with ``synchronous=FULL`` (a 250 promises the message survives power loss,
RELIABILITY rule 1) and takes the write lock at BEGIN (``BEGIN IMMEDIATE``), so two writers queue on
``busy_timeout`` instead of deadlocking on a lock upgrade. PostgreSQL runs with
``synchronous_commit=on``. Nothing else in maild knows which one it talks to.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from maild.locks import WriterLock, lock_path

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision in maild/migrations/versions (tests/test_core_migrations.py keeps them equal).
# A store already there starts without loading Alembic: 11 MiB and about 0.1 s at every start and
# every CLI command.
SCHEMA_HEAD = "0006"


DEFAULT_BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``url`` with maild's durability settings applied to every connection."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})
        _BUSY_TIMEOUT[engine] = busy_timeout_ms

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A reading() unit begins deferred: in WAL mode it never waits for, nor blocks, a writer.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _pg_settings(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SET synchronous_commit = on")
            cur.close()
            dbapi_conn.commit()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# SQLite writers queue on a WriterLock (maild.locks says why), one per engine, shared by its threads;
# processes queue on the same lock file, so the SMTP listener's lean store takes turns with them.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, WriterLock] = weakref.WeakKeyDictionary()
_BUSY_TIMEOUT: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_NEW_LOCK = threading.Lock()
_NO_LOCK = contextlib.nullcontext()


def _lock_path(engine: Engine) -> str | None:
    return lock_path(engine.url.database)


def _writer_lock(factory: sessionmaker[Session]) -> contextlib.AbstractContextManager[object]:
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite":
        return _NO_LOCK
    lock = _SQLITE_WRITERS.get(bind)
    if lock is None:
        with _NEW_LOCK:
            lock = _SQLITE_WRITERS.get(bind)
            if lock is None:
                timeout = _BUSY_TIMEOUT.get(bind, DEFAULT_BUSY_TIMEOUT_MS) / 1000
                lock = _SQLITE_WRITERS[bind] = WriterLock(_lock_path(bind), timeout)
    return lock


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends, roll back on any exception."""
    with _writer_lock(factory):
        session = factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


_READ_ONLY = "maild_read_only"


@contextmanager
def reading(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit that only reads (the CLI's lists and views): one consistent snapshot, rolled back.

    On SQLite it neither takes the write lock nor waits for it, so an operator can look at the queue
    or a case while the daemon commits, or while a message hangs holding the lock. Anything it would
    change is a programming error: it raises instead of being silently rolled back."""
    bind = cast(Engine, factory.kw["bind"])
    options: dict[str, Any] = {_READ_ONLY: True}
    if bind.dialect.name == "postgresql":  # one snapshot for every statement, not one each
        options |= {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    session = factory(bind=bind.execution_options(**options), autoflush=False)
    try:
        yield session
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("a read-only unit of work changed objects")
    finally:
        session.rollback()
        session.close()


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (``maild init`` and every start call this)."""
    if schema_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command

    command.upgrade(_alembic_config(engine), "head")


_HAS_VERSION_TABLE = {
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'",
    "postgresql": "SELECT count(*) FROM information_schema.tables "
                  "WHERE table_name = 'alembic_version' AND table_schema = current_schema()",
}


def schema_revision(engine: Engine) -> str | None:
    """The store's Alembic revision; None for a new store (or one Alembic never stamped).

    Read on the DB-API connection: on SQLite a SQLAlchemy transaction would begin with ``BEGIN
    IMMEDIATE`` and wait for the write lock just to read one row. Any error but a missing table is
    raised, not taken for a new store."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(_HAS_VERSION_TABLE[engine.dialect.name])
        row = cursor.fetchone()
        if not row or not row[0]:
            return None
        cursor.execute("SELECT version_num FROM alembic_version")
        versions = [str(r[0]) for r in cursor.fetchall()]
    finally:
        raw.close()  # back to the pool, rolled back
    return versions[0] if len(versions) == 1 else None


def open_store(url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(url)
    migrate(engine)
    return engine, make_sessionmaker(engine)
