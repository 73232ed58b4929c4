# SPDX-License-Identifier: MIT
"""The work process beside ``maild run``'s listener (``maild.workproc``), driven here without SMTP.

A real ``WorkProcess``: a fresh interpreter running the daemon's jobs on a SQLite store, watched from
this test's event loop as the listener watches it. SIGSTOP stands in for a work process that is
wedged (alive, silent); SIGKILL for the OOM killer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from maild import workproc
from maild.config import DatabaseSettings, PathSettings, Settings, SmtpSettings
from maild.workproc import WorkProcess


def settings_for(tmp_path: Path) -> Settings:
    return Settings(smtp=SmtpSettings(listen="127.0.0.1:0", shutdown_grace=2),
                    paths=PathSettings(data=str(tmp_path)), base_dir=str(tmp_path))


async def until(what: str, check: object, work: WorkProcess, timeout: float = 30) -> None:
    """Run the listener's supervision (``check()`` every 0.1 s) until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        work.check()
        await asyncio.sleep(0.1)


def test_a_wedged_work_process_is_killed_and_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # Heartbeats every 0.5 s (the interval goes to the work process with its settings) keep a healthy
    # work process for longer than the 3 s timeout; alive but silent (SIGSTOP), it is killed after the
    # timeout, and a new one opens the same store and is ready.
    monkeypatch.setattr(workproc, "HEARTBEAT", 0.5)
    monkeypatch.setattr(workproc, "HEARTBEAT_TIMEOUT", 3.0)
    caplog.set_level(logging.INFO, logger="maild.workproc")

    async def scenario() -> tuple[int | None, int | None, int | None]:
        work = WorkProcess(settings_for(tmp_path), logging.INFO)
        work.start()
        assert await work.wait_ready(threading.Event())
        first = work.pid
        assert first is not None
        healthy_until = time.monotonic() + 5
        await until("5 s of a healthy work process", lambda: time.monotonic() > healthy_until, work)
        assert (work.restarts, work.pid) == (0, first)
        os.kill(first, signal.SIGSTOP)
        try:
            await until("a second work process", lambda: work.restarts == 1, work, timeout=30)
            assert await work.wait_ready(threading.Event())
        finally:
            code = await work.stop(2.0)
        return first, work.pid, code

    first, second, code = asyncio.run(scenario())
    assert second not in (None, first)
    assert code == 0  # the second one stopped in order
    assert "has not answered for" in caplog.text
    assert f"work process {first} stopped after" in caplog.text and "killed by signal 9" in caplog.text


def test_a_pause_of_both_processes_is_not_held_against_the_work_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGSTOP of the whole service (Ctrl-Z, a frozen cgroup, a paused VM): the listener ran no check
    # either, so when both go on, the silence is not the work process's fault and it is kept.
    monkeypatch.setattr(workproc, "HEARTBEAT", 0.5)
    monkeypatch.setattr(workproc, "HEARTBEAT_TIMEOUT", 3.0)

    async def scenario() -> tuple[int | None, int | None, int]:
        work = WorkProcess(settings_for(tmp_path), logging.INFO)
        work.start()
        assert await work.wait_ready(threading.Event())
        first = work.pid
        assert first is not None
        work.check()
        os.kill(first, signal.SIGSTOP)
        time.sleep(4)  # the "listener" (this loop) is paused too: no check runs
        os.kill(first, signal.SIGCONT)
        later = time.monotonic() + 3
        await until("3 s after the pause", lambda: time.monotonic() > later, work)
        pid, restarts = work.pid, work.restarts
        await work.stop(2.0)
        return first, pid, restarts

    first, pid, restarts = asyncio.run(scenario())
    assert (pid, restarts) == (first, 0)


def test_quick_failures_back_off_and_a_store_it_cannot_open_never_becomes_ready(tmp_path: Path) -> None:
    # A work process that cannot open the store (nothing listens there) exits 1 before it is ready:
    # the listener sees it (maild run then exits 1), and restarts after quick failures wait longer
    # each time.
    bad = Settings(smtp=SmtpSettings(listen="127.0.0.1:0"), paths=PathSettings(data=str(tmp_path)),
                   base_dir=str(tmp_path),
                   database=DatabaseSettings(url="postgresql+psycopg://maild@127.0.0.1:1/nowhere"))

    async def scenario() -> tuple[bool, int | None, list[float]]:
        work = WorkProcess(bad, logging.INFO)
        work.start()
        ready = await work.wait_ready(threading.Event())
        first_exit = work.returncode
        delays = []
        for restarts in (1, 2):
            await until(f"restart {restarts}", lambda n=restarts: work.restarts == n, work)
            delays.append(work._delay)
        await work.stop(0.0)
        return ready, first_exit, delays

    ready, first_exit, delays = asyncio.run(scenario())
    assert not ready and first_exit == 1
    assert delays[1] > delays[0] > workproc.RESTART_FIRST
