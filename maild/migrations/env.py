# SPDX-License-Identifier: MIT
"""Alembic environment: runs against the engine maild hands over (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from maild.models import Base

engine = context.config.attributes.get("engine")
if engine is None:  # `alembic revision --autogenerate` from a shell: MAILD_DATABASE_URL or a scratch file
    import os

    from maild.db import make_engine

    engine = make_engine(os.environ.get("MAILD_DATABASE_URL", "sqlite:////tmp/maild-alembic.db"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE via batch mode on SQLite
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
