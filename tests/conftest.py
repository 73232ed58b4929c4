# SPDX-License-Identifier: MIT
"""Shared fixtures: a desk (settings + store + directory) on SQLite and on PostgreSQL, and mail builders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Desk, write_config
from servers import CaptureRelay

pytest_plugins = ["plugin_servers"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs twice: SQLite in a temporary directory, and a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/maild.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def make_desk(tmp_path: Path, store_url: str) -> Iterator[Callable[..., Desk]]:
    """Build a desk on this test's store with the example directory, optionally sending to a relay."""
    made: list[Desk] = []

    def make(*, relay: CaptureRelay | None = None, extra: str = "") -> Desk:
        port = relay.port if relay is not None else 2525
        d = Desk(write_config(tmp_path, database_url=store_url, relay_port=port, extra=extra))
        d.import_directory(REPO / "examples" / "directory.toml")
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def desk(make_desk: Callable[..., Desk]) -> Desk:
    """A configured desk with the example directory imported, no relay."""
    return make_desk()


@pytest.fixture
def sqlite_desk(tmp_path: Path) -> Iterator[Desk]:
    """The same desk on SQLite only (for CLI and file tests that need no second store)."""
    cfg = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db")
    d = Desk(cfg)
    d.import_directory(REPO / "examples" / "directory.toml")
    yield d
    d.close()
