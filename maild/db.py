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
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, busy_timeout_ms: int = 10_000) -> Engine:
    """An engine for ``url`` with maild's durability settings applied to every connection."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

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
            conn.exec_driver_sql("BEGIN IMMEDIATE")

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
# benchmark). Within one process the writers queue on this lock instead (BEGIN IMMEDIATE still
# guards against other processes). Re-entrant, so a nested transaction in the same thread is safe.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_NO_LOCK = contextlib.nullcontext()


def _writer_lock(factory: sessionmaker[Session]) -> contextlib.AbstractContextManager[object]:
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite":
        return _NO_LOCK
    lock = _SQLITE_WRITERS.get(bind)
    if lock is None:
        lock = _SQLITE_WRITERS.setdefault(bind, threading.RLock())
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


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (``maild init`` and every start call this)."""
    from alembic import command

    command.upgrade(_alembic_config(engine), "head")


def open_store(url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(url)
    migrate(engine)
    return engine, make_sessionmaker(engine)
