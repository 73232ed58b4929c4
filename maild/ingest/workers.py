# SPDX-License-Identifier: MIT
"""Intake worker processes: the pipeline for SMTP messages on several CPU cores.

Intake is Python CPU work (parse, thread, decide, queue the acknowledgement), and one process runs
Python on one core at a time. With ``[smtp] processes = N`` the listener hands each message to one of
N worker processes, which runs ``run_ingest`` (its own transaction and commit) and returns the
result; the listener still answers ``250`` only after that returned, i.e. after the commit
(RELIABILITY rule 1). The event loop, the sender, the scheduler and the IMAP poller stay in the main
process. SQLite writers of all processes queue on one file lock (``maild.db``); PostgreSQL needs
nothing more.

Workers are spawned (never a fork of the threaded daemon) and end themselves when the daemon is gone,
even after a ``kill -9`` of the daemon. A worker that dies (OOM
killer, a crash) breaks the pool: the messages it held are answered ``451``, which an MTA retries
(the envelope key makes a retried, already committed message a duplicate), and the next message
gets a new pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.ingest.raw import RawMail

if TYPE_CHECKING:
    from maild.ingest.pipeline import IngestResult

log = logging.getLogger(__name__)
T = TypeVar("T")

PARENT_CHECK_SECONDS = 1.0
WARM_UP_SECONDS = 60.0
_STATE: tuple[Engine, sessionmaker[Session], Settings] | None = None


def _start_worker(settings: Settings, level: int, daemon_pid: int, started: Any) -> None:
    """Initializer of each worker process: logging like the daemon's, and an engine of its own."""
    global _STATE
    from maild.db import make_engine, make_sessionmaker
    from maild.logs import setup_logging

    setup_logging(level)
    # Ctrl-C or a signal to the whole process group must not kill a worker mid-batch: the daemon
    # drains and then stops its workers itself (close(), or the parent watch below).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_follow_daemon, args=(daemon_pid,), name="maild-worker-watch", daemon=True).start()
    engine = make_engine(settings.database_url)  # the daemon has migrated the store already
    _STATE = (engine, make_sessionmaker(engine), settings)
    started.release()  # warm_up counts the workers that are ready (signals ignored, store open)


def _follow_daemon(daemon_pid: int) -> None:
    # A worker must not outlive the daemon (kill -9, a crash): its parent changes when the daemon is gone.
    while os.getppid() == daemon_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _ingest_batch(raws: Sequence[RawMail]) -> list[IngestResult | Exception]:
    """A batch in the worker: one transaction, returned only after the commit."""
    from maild.ingest.pipeline import run_ingest_batch

    if _STATE is None:
        raise RuntimeError("intake worker not initialised")
    _engine, factory, settings = _STATE
    try:
        results = run_ingest_batch(factory, settings, raws)
    except Exception as exc:
        raise _portable(exc) from None
    return [_portable(r) if isinstance(r, Exception) else r for r in results]


def _process_pending() -> int:
    """The queue's next messages in the worker (``maild.ingest.queue``); how many were taken."""
    from maild.ingest.queue import process_pending
    from maild.ingest.stamp import intake_stamp

    if _STATE is None:
        raise RuntimeError("intake worker not initialised")
    _engine, factory, settings = _STATE
    try:
        return process_pending(factory, settings, stamp=intake_stamp(settings))
    except Exception as exc:
        raise _portable(exc) from None


def _portable(exc: Exception) -> Exception:
    # Driver exceptions do not always survive pickling back to the listener; their text does.
    return RuntimeError(f"{type(exc).__name__}: {exc}"[:2000])


class IntakePool:
    """``processes`` workers running ``run_ingest_batch``; ``await pool.ingest_batch(raws)`` from the loop."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self._lock = threading.Lock()
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        level = logging.getLogger().getEffectiveLevel()
        self._started = context.Semaphore(0)
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=context, initializer=_start_worker,
                                   initargs=(self.settings, level, os.getpid(), self._started))

    def warm_up(self, timeout: float = WARM_UP_SECONDS) -> None:
        """Start every worker now and wait until each is ready, so the first messages do not wait for
        imports (and a signal to the process group cannot catch a worker half started)."""
        executor = self._executor
        futures = [executor.submit(_noop) for _ in range(self.processes)]  # each spawns a worker
        for _ in range(self.processes):
            if not self._started.acquire(timeout=timeout):
                raise RuntimeError(f"intake workers not ready within {timeout:g} s")
        for future in futures:
            future.result(timeout)

    async def ingest_batch(self, raws: Sequence[RawMail]) -> list[IngestResult | Exception]:
        return await self._submit(_ingest_batch, list(raws))

    async def process_pending(self) -> int:
        """The queue's next messages, processed in a worker (a queue runs one such call at a time).

        A call that runs past ``[smtp] process_timeout`` (a message that hangs the parser or a driver) has its
        worker killed: the messages it held stay queued with their attempt counted, so one that hangs
        every time is quarantined after ``MAX_ATTEMPTS``, and the queue goes on.
        """
        return await self._submit(_process_pending, timeout=float(self.settings.smtp.process_timeout))

    async def _submit(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        from maild.outbound.sender import wake

        executor = self._executor
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
            result = await asyncio.wait_for(future, timeout)
            wake()  # the worker may have queued acknowledgements; the sender runs in this process
            return result
        except TimeoutError:
            with self._lock:
                if self._executor is executor:
                    log.error("an intake worker took more than %g s; killing it and starting a new pool", timeout)
                    self._executor = self._new_executor()
            _kill(executor)
            raise
        except BrokenProcessPool:
            with self._lock:
                if self._executor is executor:
                    log.error("an intake worker died; starting a new pool (the messages it held were "
                              "answered 451, or stay queued)")
                    self._executor = self._new_executor()
            raise

    def close(self) -> None:
        """Let running messages finish (the listener has drained), then stop the workers."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _kill(executor: ProcessPoolExecutor) -> None:
    """Kill an executor's workers at once (a hung one cannot be asked to stop); its futures fail."""
    # ProcessPoolExecutor has no public way to do this before Python 3.14 (terminate_workers).
    processes = dict(getattr(executor, "_processes", None) or {})
    for process in processes.values():
        with contextlib.suppress(Exception):
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)


def _noop() -> None:
    return None
