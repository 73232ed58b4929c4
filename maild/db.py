# SPDX-License-Identifier: MIT
"""Engine, sessions and the one transaction boundary.

SQLite runs in WAL mode with ``synchronous=FULL`` (a 250 promises the message survives power loss,
RELIABILITY rule 1) and takes the write lock at BEGIN (``BEGIN IMMEDIATE``), so two writers queue on
``busy_timeout`` instead of deadlocking on a lock upgrade. PostgreSQL runs with
``synchronous_commit=on``. Nothing else in maild knows which one it talks to.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

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


# SQLite has one writer. Left to SQLite, waiting writers poll in its busy handler with growing sleeps,
# and one can lose the race again and again past busy_timeout (a 451 under load, a 2.5 s p99 in the
# benchmark). So writers queue instead: the threads of one process on an RLock, and processes (intake
# workers, the CLI, a second daemon) on flock(2) of a file beside the database, which the kernel hands
# on as soon as it is released. BEGIN IMMEDIATE still guards against writers that take neither.
class _WriterLock:
    """Re-entrant within a thread (a nested transaction is safe); the flock is held at depth 1 only.

    Waiting is bounded by the engine's busy timeout, as SQLite's own wait was: past it, TimeoutError
    (an SMTP 451, an IMAP message left unflagged for the next poll, a one-line CLI error), never an
    endless wait behind a stuck writer (a CLI paused in a pager, a hung process).
    """

    def __init__(self, lock_path: str | None, timeout: float) -> None:
        self._rlock = threading.RLock()
        self._depth = 0  # changed only by the thread holding _rlock
        self._path = lock_path
        self._fd: int | None = None
        self._timeout = timeout

    def __enter__(self) -> None:
        deadline = time.monotonic() + self._timeout
        if not self._rlock.acquire(timeout=self._timeout):
            raise TimeoutError(f"database is locked: another writer held it for more than {self._timeout:g} s")
        self._depth += 1
        if self._depth == 1 and self._path is not None:
            try:
                if self._fd is None:
                    self._fd = open_lock_file(self._path)
                if self._fd is None:  # cannot be opened: SQLite's own busy wait still keeps writers apart
                    self._path = None
                    return
                _flock_until(self._fd, deadline, self._timeout)
            except BaseException:
                self._depth -= 1
                self._rlock.release()
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._depth == 1 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._rlock.release()


def _flock_until(fd: int, deadline: float, timeout: float) -> None:
    pause = 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"database is locked: another process held it for more than {timeout:g} s") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.004)  # short polls: the next writer starts within a few ms


def open_lock_file(path: str, owner_of: str | None = None) -> int | None:
    """The lock file, made with the database file's owner and group when root makes it (an operator's
    ``maild`` command as root must not lock the daemon's user out); None, logged, if it cannot be
    opened (a read-only directory, another user's file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    except OSError as exc:
        log.warning("SQLite writers of several processes will not queue in order: %s", exc)
        return None
    database = owner_of or path.removesuffix("-writer.lock")
    if os.geteuid() == 0 and os.path.exists(database):
        with contextlib.suppress(OSError):
            owner = os.stat(database)
            os.fchown(fd, owner.st_uid, owner.st_gid)
    return fd


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, _WriterLock] = weakref.WeakKeyDictionary()
_BUSY_TIMEOUT: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_NEW_LOCK = threading.Lock()
_NO_LOCK = contextlib.nullcontext()


def _lock_path(engine: Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{Path(database).resolve()}-writer.lock"


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
                lock = _SQLITE_WRITERS[bind] = _WriterLock(_lock_path(bind), timeout)
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
