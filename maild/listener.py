# SPDX-License-Identifier: MIT
"""``maild run``: the listener process, and the work process beside it.

With ``[smtp] queue = true`` (the default) maild runs as two processes, as an MTA does:

- this one, the *listener*, is what the organisation's MTA talks to. It runs the SMTP sessions and
  commits each message's bytes and envelope to the queue (``maild.ingest.intake_store``, plain
  DB-API) before answering ``250``. It loads neither SQLAlchemy nor the pipeline, so it stays small
  (about 30 MiB, and under 2x the size limit while it takes a message of the limit's size), and it
  talks to systemd (READY, the watchdog, STOPPING).
- the *work* process (``maild.workproc``, running ``maild.daemon``) does everything else: the
  queue's case work, the outbox sender, the scheduler, the IMAP poller.

Why two: intake stays up whatever processing does. A message that hangs processing (exit 70), a
crash in a C library, the OOM killer taking the process that parses a hostile message: the listener
starts the work process again and the MTA never sees a refused connection, while everything that
arrives meanwhile waits, committed, in the queue. The cost is a second interpreter, about 30 MiB.

With ``[smtp] queue = false`` every ``250`` waits for the case work, so the listener needs the
pipeline: maild then runs as one process (``maild.daemon.run``).

Start: the work process opens (and migrates) the store first; the listener listens once it is ready.
Stop (SIGTERM, SIGINT): the listener drains SMTP within ``[smtp] shutdown_grace``, then gives the
work process what is left of it to finish the queue's run under way and its jobs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

from maild.ingest.smtp_server import start_server
from maild.notify import notify, watchdog_interval
from maild.workproc import EXIT_STUCK, WorkProcess

if TYPE_CHECKING:
    from maild.config import Settings
    from maild.ingest.smtp import IngestFn

log = logging.getLogger(__name__)


def run(settings: Settings, *, stop_event: threading.Event | None = None,
        ingest_fn: IngestFn | None = None) -> int:
    """Run maild until SIGTERM/SIGINT or ``stop_event``: 0 after a clean stop, 1 if it could not
    start. ``ingest_fn`` (tests) or ``[smtp] queue = false`` run it as one process."""
    if ingest_fn is not None or not settings.smtp.queue:
        from maild.daemon import run as run_one

        return run_one(settings, stop_event=stop_event, ingest_fn=ingest_fn)
    stop = stop_event if stop_event is not None else threading.Event()
    code = asyncio.run(_serve(settings, stop))
    log.info("maild stopped (exit %d)", code)
    return code


def install_signals(loop: asyncio.AbstractEventLoop, stop: threading.Event,
                    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> list[signal.Signals]:
    """``stop`` set on these signals; none when not the main thread (only it may handle signals:
    the caller then stops us with ``stop``). Also the work process's (``maild.daemon``)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    return list(signals)


async def watchdog(interval: float) -> None:
    """``WATCHDOG=1`` every ``interval`` seconds from the event loop: a wedged loop stops the pings."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def release(loop: asyncio.AbstractEventLoop, stop: threading.Event, dog: asyncio.Task[None] | None,
            signals: list[signal.Signals]) -> None:
    """The end of an event loop's run: ``stop`` set for every job, the watchdog and signals let go."""
    stop.set()
    if dog is not None:
        dog.cancel()
    for sig in signals:
        loop.remove_signal_handler(sig)


async def _serve(settings: Settings, stop: threading.Event) -> int:
    from maild.ingest.intake_store import IntakeStore

    loop = asyncio.get_running_loop()
    signals = install_signals(loop, stop)
    work = WorkProcess(settings, logging.getLogger().getEffectiveLevel())
    dog: asyncio.Task[None] | None = None
    store: IntakeStore | None = None
    try:
        try:
            store = IntakeStore(settings.database_url)
        except ValueError as exc:  # an in-memory SQLite store, an unknown kind of database
            log.error("the store cannot be used: %s", exc)
            return 1
        try:  # bound first, so a second `maild run` stops here before it starts any job; accepting
            # waits until the work process has opened (and migrated) the store
            server = await start_server(None, settings, queue=work, enqueue=store.enqueue_batch,
                                        start_serving=False)
        except Exception as exc:  # port taken, unreadable TLS certificate ...
            log.error("cannot listen on %s: %s", settings.smtp.listen, exc)
            return 1
        try:
            work.start()
        except OSError as exc:
            log.error("cannot start the work process: %s", exc)
            return 1
        if not await work.wait_ready(stop):
            if stop.is_set():
                await work.stop(0.0)
                return 0
            log.error("the work process could not start (exit %s; its messages are above)", work.returncode)
            await work.stop(0.0)
            return 1
        await server.serve()
        log.info("SMTP intake accepting on %s", settings.smtp.listen)
        notify(f"READY=1\nSTATUS=accepting mail on {settings.smtp.listen}; work process {work.pid}")
        interval = watchdog_interval()
        dog = asyncio.create_task(watchdog(interval)) if interval else None
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if not stop.is_set():  # no new work process for a maild that is stopping
                work.check()
        log.info("stopping: draining SMTP sessions for up to %ss", settings.smtp.shutdown_grace)
        notify("STOPPING=1\nSTATUS=draining")
        deadline = time.monotonic() + settings.smtp.shutdown_grace  # one budget for DATA and the queue
        await server.shutdown(settings.smtp.shutdown_grace)
        code = await work.stop(max(0.0, deadline - time.monotonic()))
        return EXIT_STUCK if code == EXIT_STUCK else 0
    finally:
        release(loop, stop, dog, signals)
        if store is not None:
            store.close()
