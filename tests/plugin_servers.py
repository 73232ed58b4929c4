# SPDX-License-Identifier: MIT
"""Pytest fixtures for the real servers in ``servers``: PostgreSQL, Dovecot and the SMTP relay.

Loaded from tests/conftest.py with ``pytest_plugins = ["plugin_servers"]``. The servers are
session-scoped (one PostgreSQL and one Dovecot per run); each test gets a fresh database, IMAP user
and relay. A missing server skips the test, or fails it when CI=true. Tests that use the PostgreSQL
or Dovecot fixtures get the ``postgres`` or ``dovecot`` marker automatically, so
``pytest -m "not postgres and not dovecot"`` runs without them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from servers import CaptureRelay, DovecotServer, PostgresServer, ServerUnavailable, require

POSTGRES_FIXTURES = frozenset({"postgres_server", "pg_url"})
DOVECOT_FIXTURES = frozenset({"dovecot_server", "imap_user"})


@dataclass(frozen=True)
class ImapUser:
    """A fresh Dovecot user: credentials plus its ``imap://user:pass@127.0.0.1:PORT/INBOX`` URL."""

    name: str
    password: str
    host: str
    port: int
    url: str


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & POSTGRES_FIXTURES:
            item.add_marker(pytest.mark.postgres)
        if names & DOVECOT_FIXTURES:
            item.add_marker(pytest.mark.dovecot)


Server = TypeVar("Server", PostgresServer, DovecotServer)


def _run_server(server: Server, directory: Path) -> Iterator[Server]:
    """Start ``server`` for a session fixture; skip (or fail under CI=true) when it is not installed."""
    try:
        server.start(directory)
    except ServerUnavailable as missing:
        require(missing.what, missing.reason)
    except BaseException:
        server.close()
        raise
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run (stopped at the end)."""
    yield from _run_server(PostgresServer(), tmp_path_factory.mktemp("postgres"))


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database, dropped after the test."""
    postgres_server.ensure_running()
    name = f"t_{secrets.token_hex(6)}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.ensure_running()  # a fault test may have stopped the shared server
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def dovecot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    """One Dovecot IMAP server (plain IMAP, no TLS) for the whole run."""
    yield from _run_server(DovecotServer(), tmp_path_factory.mktemp("dovecot"))


@pytest.fixture
def imap_user(dovecot_server: DovecotServer) -> Iterator[ImapUser]:
    """A fresh IMAP user with an empty INBOX on the session's Dovecot."""
    dovecot_server.ensure_running()
    name, password = dovecot_server.new_user()
    yield ImapUser(name, password, dovecot_server.host, dovecot_server.port,
                   dovecot_server.imap_url(name, password))  # fmt: skip
    dovecot_server.ensure_running()  # a fault test may have stopped the shared server


@pytest.fixture
def relay() -> Iterator[CaptureRelay]:
    """A running CaptureRelay on 127.0.0.1:<free port>, stopped after the test."""
    capture = CaptureRelay()
    capture.start()
    yield capture
    capture.stop()
