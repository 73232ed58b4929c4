# SPDX-License-Identifier: MIT
"""``db.reading()``: the CLI's lists and views read one snapshot, never take SQLite's write lock, and
change nothing; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from maild.db import open_store, reading, transaction
from maild.models import Staff


def test_a_view_reads_one_snapshot_while_others_commit(store_url: str) -> None:
    # `cases show` must not combine messages and events from different moments.
    engine, factory = open_store(store_url)
    with transaction(factory) as s:
        s.add(Staff(email="tom@support.example.com", name="Tom"))
    with reading(factory) as view:
        assert view.scalar(select(func.count(Staff.id))) == 1
        with transaction(factory) as s:  # a writer commits meanwhile (the daemon)
            s.add(Staff(email="uma@support.example.com", name="Uma"))
        assert view.scalar(select(func.count(Staff.id))) == 1
    with transaction(factory) as s:  # the pooled connection is read-write again afterwards
        s.add(Staff(email="vic@support.example.com", name="Vic"))
    with reading(factory) as view:
        assert view.scalar(select(func.count(Staff.id))) == 3
    engine.dispose()


def test_a_view_that_would_change_something_fails_and_changes_nothing(store_url: str) -> None:
    engine, factory = open_store(store_url)
    with pytest.raises(RuntimeError, match="read-only"), reading(factory) as view:
        view.add(Staff(email="tom@support.example.com", name="Tom"))
    with reading(factory) as view:
        assert view.scalar(select(func.count(Staff.id))) == 0
    engine.dispose()
