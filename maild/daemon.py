# SPDX-License-Identifier: MIT
"""The daemon's event loop and jobs: the queue's case work, the outbox sender, the scheduler and the
IMAP poller, and with ``[smtp] queue = false`` the SMTP listener too, all in one process.

``maild run`` starts in ``maild.listener``. With the queue (the default) this module runs in the
work process beside the listener (``run(settings, parent=...)``, ``maild.workproc``): woken after
each queue commit, stopped by the listener. With ``queue = false`` it is all of maild, and the
event loop serves SMTP (``maild.ingest.smtp``) and pings the systemd watchdog, so a wedged loop stops
the pings and systemd restarts maild.

Each periodic job runs in its own thread: a hung relay delays neither intake nor the scheduler, and
an exception in one job is logged and the job runs again at its next turn. SIGTERM/SIGINT (or
``stop_event``, or the listener's stop): stop accepting, let in-flight DATA finish within ``[smtp]
shutdown_grace``, answer ``421`` to the rest (RELIABILITY D9), let each job finish its current call,
exit 0. A message that hangs processing in this process's own thread (``[smtp] processes = 0``) past
``[smtp] process_timeout``, or past the drain when stopping, makes it exit 70 at once (``os._exit``:
the thread can be neither stopped nor joined); the listener, or systemd, starts it again.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from maild import clock
from maild.config import Settings
from maild.db import open_store
from maild.ingest.queue import busy as queue_busy
from maild.ingest.queue_run import QueueRunner, make_runner
from maild.ingest.smtp import IngestFn
from maild.ingest.smtp_server import start_server
from maild.ingest.workers import IntakePool
from maild.listener import install_signals, release, watchdog
from maild.notify import notify, watchdog_interval
from maild.workproc import Parent

log = logging.getLogger(__name__)

SEND_EVERY = 5.0  # seconds between outbox runs (sooner when intake queued mail)
SEND_BATCH = 100  # send_due's default limit: a run that did this many is followed at once
TICK_EVERY = 60.0  # seconds between scheduler steps
IMAP_RESTART_AFTER = 30.0  # seconds before a crashed IMAP poller is started again

Job = Callable[[sessionmaker[Session], Settings, Any], list[dict[str, Any]]]


def _load(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name``, imported now; None (logged) when it cannot be: intake runs regardless."""
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            log.exception("%s cannot be imported; %s will not run", module, name)
        else:
            log.warning("%s is not available yet; %s will not run", module, name)
    except AttributeError:
        log.warning("%s has no %s; it will not run", module, name)
    except Exception:
        log.exception("%s cannot be imported; %s will not run", module, name)
    return None


def _every(what: str, seconds: float, job: Job, factory: sessionmaker[Session],
           settings: Settings, stop: threading.Event, wake: threading.Event | None = None,
           batch: int | None = None) -> None:
    """Call ``job(factory, settings, now)`` every ``seconds`` until ``stop``; never raise.

    With ``wake``, the job also runs as soon as the event is set (a commit queued mail); when a run
    did a whole ``batch``, the next one starts at once (a backlog drains without waiting).
    """
    while not stop.is_set():
        actions: list[dict[str, Any]] = []
        if wake is not None:
            wake.clear()
        try:
            actions = job(factory, settings, clock.now())
            if actions:
                log.info("%s: %d actions", what, len(actions))
                for action in actions:
                    log.debug("%s: %s", what, action)
        except Exception:
            log.exception("%s failed; trying again in %ss", what, seconds)
        if batch is not None and len(actions) >= batch:
            continue
        if wake is not None:
            _wait_either(stop, wake, seconds)
        else:
            stop.wait(seconds)


def _wait_either(stop: threading.Event, wake: threading.Event, seconds: float) -> None:
    """Until ``wake`` or ``stop`` is set, or ``seconds`` pass (stop is checked every 0.5 s)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and not wake.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return


def _every_sender(send_due: Job, wake: threading.Event, factory: sessionmaker[Session], settings: Settings,
                  stop: threading.Event) -> None:
    _every("outbox sender", SEND_EVERY, send_due, factory, settings, stop, wake=wake, batch=SEND_BATCH)


def _imap(poll: Callable[..., Any], factory: sessionmaker[Session], settings: Settings,
          stop: threading.Event) -> None:
    """Run the poller (it returns when ``stop`` is set); restart it after a crash."""
    while not stop.is_set():
        try:
            poll(factory, settings, stop)
        except Exception:
            log.exception("IMAP poller failed; restarting in %ss", IMAP_RESTART_AFTER)
            stop.wait(IMAP_RESTART_AFTER)


def start_workers(factory: sessionmaker[Session], settings: Settings,
                  stop: threading.Event) -> list[threading.Thread]:
    """Threads for the outbox sender, the scheduler and (if ``[imap] url``) the IMAP poller."""
    plan: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = []
    send_due = _load("maild.outbound.sender", "send_due")
    if send_due is not None:
        from maild.outbound.sender import WAKE

        plan.append(("outbox", _every_sender, (send_due, WAKE)))
    tick = _load("maild.scheduler", "tick")
    if tick is not None:
        plan.append(("scheduler", _every, ("scheduler", TICK_EVERY, tick)))
    if settings.imap.url:
        # Interface expected of maild.ingest.imap: poll_forever(factory, settings, stop_event),
        # returning once stop_event is set after finishing its current commit and flag (D9).
        poll = _load("maild.ingest.imap", "poll_forever")
        if poll is not None:
            plan.append(("imap", _imap, (poll,)))
    threads = []
    for name, target, args in plan:
        thread = threading.Thread(target=target, args=(*args, factory, settings, stop),
                                  name=f"maild-{name}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def _intake_pool(settings: Settings) -> IntakePool | None:
    """The intake worker processes of ``[smtp] processes``, started before READY; None for 0."""
    if settings.smtp.processes == 0:
        return None
    pool = IntakePool(settings, settings.smtp.processes)
    pool.warm_up()
    log.info("intake runs in %d worker processes", settings.smtp.processes)
    return pool


EXIT_STUCK = 70  # EX_SOFTWARE: a message hung processing in the daemon's own thread
STOP_MARGIN = 10.0  # seconds past shutdown_grace for the queue's run under way to end


def _stuck(settings: Settings) -> str | None:
    """Why the daemon must restart: a message processed in its own thread (``[smtp] processes = 0``)
    for longer than ``[smtp] process_timeout``. A thread cannot be stopped, and it may hold SQLite's
    write lock; the restart counts the message's attempt, and after 3 it is quarantined unparsed."""
    busy = queue_busy()
    if busy is None:
        return None
    raw_id, since = busy
    waited = time.monotonic() - since
    if waited <= settings.smtp.process_timeout:
        return None
    return (f"processing raw-{raw_id} has not finished in {waited:.0f} s ([smtp] process_timeout = "
            f"{settings.smtp.process_timeout}); draining SMTP and exiting {EXIT_STUCK} for the supervisor to "
            "restart maild (the message is quarantined after 3 such runs)")


async def _stop_queue(queue: QueueRunner, grace: float, in_thread: bool) -> str | None:
    """Stop the queue's runner; why the daemon must exit at once instead, if a message in its own
    thread outlasts the grace (plus a margin for the run under way): it would never be joined."""
    if not in_thread:
        await queue.stop(grace)  # a worker past [smtp] process_timeout is killed
        return None
    try:
        await asyncio.wait_for(queue.stop(grace), grace + STOP_MARGIN)
    except TimeoutError:
        busy = queue_busy()
        why = (f"processing raw-{busy[0]} did not finish while stopping" if busy is not None
               else "the queue's run did not finish while stopping")
        log.error("%s; exiting %d without it (the message is processed again at the next start)", why, EXIT_STUCK)
        return why
    return None


async def _serve(settings: Settings, factory: sessionmaker[Session], stop: threading.Event,
                 ingest_fn: IngestFn | None, parent: Parent | None = None) -> int:
    """The daemon's event loop; with ``parent``, the work process's: everything but SMTP, which the
    listener process runs (``maild.listener``), woken by it after each commit."""
    loop = asyncio.get_running_loop()
    # The work process leaves SIGINT (Ctrl-C, sent to the whole group) to the listener (maild.workproc).
    signals = install_signals(loop, stop, (signal.SIGTERM,) if parent is not None else (signal.SIGTERM, signal.SIGINT))
    try:
        pool = _intake_pool(settings) if ingest_fn is None else None
    except Exception as exc:  # a worker could not start (imports, the store): say so, exit 1
        log.error("intake worker processes could not start: %s: %s", type(exc).__name__, exc)
        return 1
    # The runner also runs with `queue = false`: it finishes what an earlier run with a queue left.
    queue = make_runner(factory, settings, pool) if ingest_fn is None else None
    server = None
    if parent is None:
        try:
            server = await start_server(factory, settings, ingest_fn=ingest_fn, pool=pool,
                                        queue=queue if settings.smtp.queue else None)
        except Exception as exc:  # port taken, unreadable TLS certificate ...
            log.error("cannot listen on %s: %s", settings.smtp.listen, exc)
            if pool is not None:
                pool.close()
            return 1
    elif queue is not None:
        parent.serve(loop, queue, stop)
    if queue is not None:
        queue.start()  # also takes what a previous run left queued
    workers = start_workers(factory, settings, stop)
    if parent is None:
        notify(f"READY=1\nSTATUS=accepting mail on {settings.smtp.listen}")
    else:
        parent.ready()
    interval = watchdog_interval()
    dog = asyncio.create_task(watchdog(interval)) if interval else None
    stuck: str | None = None
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if queue is not None and pool is None and (stuck := _stuck(settings)) is not None:
                log.critical("%s", stuck)
                break
        deadline = time.monotonic() + settings.smtp.shutdown_grace  # one budget for DATA and the queue
        if server is not None:
            log.info("stopping: draining SMTP sessions for up to %ss", settings.smtp.shutdown_grace)
            notify("STOPPING=1\nSTATUS=draining")
            await server.shutdown(settings.smtp.shutdown_grace)
        elif parent is not None:  # the listener drained SMTP already and gave what is left of the grace
            deadline = time.monotonic() + parent.grace(settings.smtp.shutdown_grace)
        if queue is not None and stuck is None:  # what is still queued then waits for the next start
            stuck = await _stop_queue(queue, max(0.0, deadline - time.monotonic()), pool is None)
        if pool is not None:
            await asyncio.to_thread(pool.close)
        # After a hang the stuck thread may hold SQLite's write lock, which the jobs' next steps need.
        if stuck is not None:
            join = 1.0
        elif parent is not None:  # within what is left of the listener's grace: it kills us later
            join = max(1.0, deadline - time.monotonic())
        else:
            join = settings.smtp.shutdown_grace
        until = time.monotonic() + join  # one budget for all the jobs, not one each
        for thread in workers:
            await asyncio.to_thread(thread.join, max(0.1, until - time.monotonic()))
            if thread.is_alive():
                log.warning("%s still busy at exit", thread.name)
    finally:
        release(loop, stop, dog, signals)
        if parent is not None:
            parent.close(loop)
    if stuck is not None:
        # The hung thread can be neither stopped nor joined (asyncio.run would wait for it for ever):
        # leave now. Its transaction dies with the process; the 250s given were all committed.
        log.info("maild stopped (exit %d)", EXIT_STUCK)
        logging.shutdown()
        os._exit(EXIT_STUCK)
    return 0


def run(settings: Settings, *, stop_event: threading.Event | None = None,
        ingest_fn: IngestFn | None = None, parent: Parent | None = None) -> int:
    """Run the daemon in this one process until SIGTERM/SIGINT or ``stop_event``; 0 after a clean
    drain, 1 if it could not start. ``ingest_fn`` replaces ``run_ingest`` (tests). ``maild run``
    itself starts with ``maild.listener.run``, which calls this for ``[smtp] queue = false`` and runs
    it, with ``parent``, as its work process otherwise."""
    stop = stop_event if stop_event is not None else threading.Event()
    try:
        engine, factory = open_store(settings.database_url)
    except Exception as exc:
        log.error("cannot open the store: %s: %s", type(exc).__name__, exc)
        return 1
    try:
        code = asyncio.run(_serve(settings, factory, stop, ingest_fn, parent))
    finally:
        engine.dispose()
    log.info("%s stopped (exit %d)", "maild's work process" if parent is not None else "maild", code)
    return code
