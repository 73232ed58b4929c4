# SPDX-License-Identifier: MIT
"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from maild.db import make_engine, migrate
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
