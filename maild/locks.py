# SPDX-License-Identifier: MIT
"""The writer lock of a SQLite store: SQLite writers of every maild process take turns in order.

SQLite has one writer. Left to SQLite, waiting writers poll in its busy handler with growing sleeps,
and one can lose the race again and again past busy_timeout (a 451 under load, a 2.5 s p99 in the
benchmark). So writers queue instead: the threads of one process on an RLock, and processes (intake
workers, the CLI, a second daemon, the SMTP listener) on flock(2) of a file beside the database,
which the kernel hands on as soon as it is released. BEGIN IMMEDIATE still guards against writers
that take neither.

Standard library only: the SMTP listener's process (``maild.ingest.intake_store``) takes the same
lock as the SQLAlchemy side (``maild.db``) without loading SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


def lock_path(database: str | None) -> str | None:
    """The writer lock file of the SQLite database file ``database`` (as in its URL); None for an
    in-memory or URI database, which no other process can open by the same name."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{Path(database).resolve()}-writer.lock"


class WriterLock:
    """Re-entrant within a thread (a nested transaction is safe); the flock is held at depth 1 only.

    Waiting is bounded by the store's busy timeout, as SQLite's own wait was: past it, TimeoutError
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
                flock_until(self._fd, deadline, self._timeout)
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

    def close(self) -> None:
        """Close the lock file (a store being closed); taking the lock again reopens it."""
        with self._rlock:
            if self._depth == 0 and self._fd is not None:
                os.close(self._fd)
                self._fd = None


def flock_until(fd: int, deadline: float, timeout: float) -> None:
    """An exclusive flock of ``fd``, waited for until ``deadline`` (time.monotonic); TimeoutError past it."""
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
