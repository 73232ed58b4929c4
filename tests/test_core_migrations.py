# SPDX-License-Identifier: MIT
"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from maild.db import MIGRATIONS, SCHEMA_HEAD, _alembic_config, make_engine, migrate, schema_revision
from maild.models import Base


def test_migrations_match_models(store_url: str) -> None:
    # After `alembic upgrade head` the database has every table and column of the models, and no others.
    engine = make_engine(store_url)
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrate_twice_is_a_no_op(store_url: str) -> None:
    # Every start runs the migrations; a second run changes nothing and does not fail.
    engine = make_engine(store_url)
    migrate(engine)
    migrate(engine)
    engine.dispose()


def test_schema_head_names_the_newest_revision() -> None:
    # migrate() skips Alembic when the store is at SCHEMA_HEAD: a new revision must move it too.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]


def test_a_store_at_head_starts_without_loading_alembic(store_url: str) -> None:
    engine = make_engine(store_url)
    migrate(engine)
    engine.dispose()
    code = ("import sys; from maild.db import open_store; engine, _ = open_store(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", code, store_url], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_store_behind_is_brought_to_head(store_url: str) -> None:
    engine = make_engine(store_url)
    assert schema_revision(engine) is None  # a new store
    migrate(engine)
    command.downgrade(_alembic_config(engine), "0004")
    assert schema_revision(engine) == "0004"
    assert "raw_bodies" not in inspect(engine).get_table_names()
    migrate(engine)
    assert schema_revision(engine) == SCHEMA_HEAD
    assert "raw_bodies" in inspect(engine).get_table_names()
    engine.dispose()


def test_a_store_at_head_opens_while_another_writer_holds_sqlite_s_lock(tmp_path: Path) -> None:
    # Checking the revision only reads: a CLI command or a start while the daemon is writing neither
    # waits for the write lock nor mistakes "database is locked" for a new store.
    url = f"sqlite:///{tmp_path}/maild.db"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    writer = sqlite3.connect(tmp_path / "maild.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        engine = make_engine(url, busy_timeout_ms=500)
        assert schema_revision(engine) == SCHEMA_HEAD
        migrate(engine)  # a no-op: it raised "database is locked" when the check took the lock
        engine.dispose()
    finally:
        writer.rollback()
        writer.close()
