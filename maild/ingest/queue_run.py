# SPDX-License-Identifier: MIT
"""Running the SMTP queue (``maild.ingest.queue``) inside the daemon, and watching it.

``QueueRunner`` calls ``process_pending`` from the event loop whenever the listener has queued mail,
until the queue is empty; it also looks every ``POLL_SECONDS`` (a row left by an earlier run,
another process). ``stuck_queue_rule`` tells staff when accepted mail waits unprocessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.ingest.queue import process_pending
from maild.ingest.stamp import intake_stamp
from maild.models import RawMessage

if TYPE_CHECKING:
    from maild.ingest.workers import IntakePool

log = logging.getLogger(__name__)

STUCK_AFTER = timedelta(minutes=15)  # a queued message this old means processing has stalled: alert
POLL_SECONDS = 2.0
BACKOFF_MAX = 30.0


def stuck_queue_rule(session: Session, settings: Settings, now: datetime) -> list[dict[str, object]]:
    """Scheduler rule: tell staff when accepted SMTP mail has waited ``STUCK_AFTER`` unprocessed (the
    runner is stalled, a message hangs, processing fails again and again), once per oldest message."""
    from maild.mail import alert_staff

    oldest = session.execute(select(RawMessage.id, RawMessage.received_at).where(RawMessage.outcome.is_(None))
                             .order_by(RawMessage.id).limit(1)).first()
    if oldest is None or now - oldest.received_at < STUCK_AFTER:
        return []
    waiting = session.scalar(select(func.count(RawMessage.id)).where(RawMessage.outcome.is_(None))) or 0
    minutes = int((now - oldest.received_at).total_seconds() // 60)
    items = alert_staff(session, settings, now=now, dedupe_key=f"queue-stuck:{oldest.id}",
                        title=f"Accepted mail not processed for {minutes} minutes ({waiting} waiting)",
                        detail=f"SMTP mail was accepted (250) but its case work has not run: raw #{oldest.id} "
                               f"arrived {oldest.received_at.isoformat()}. Check the daemon's log for processing "
                               "errors; `maild queue` shows the queue, `maild queue --process` works it off.")
    return [{"action": "queue-stuck-alert", "raw": oldest.id, "queued": waiting}] if items else []


RULES = (stuck_queue_rule,)


ProcessFn = Callable[[], Awaitable[int]]


class QueueRunner:
    """Runs ``process_pending`` whenever the listener has queued mail, until the queue is empty."""

    def __init__(self, run: ProcessFn, *, poll_seconds: float = POLL_SECONDS,
                 halt: threading.Event | None = None) -> None:
        self._run = run
        self._halt = halt  # set when the grace of stop() ends: a run in a thread stops between messages
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._deadline: float | None = None  # set by stop()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop (at once: it also takes what an earlier run left queued)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="maild-queue")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float = 0.0) -> None:
        """Go on processing for up to ``grace`` seconds while mail is queued (the listener has stopped
        taking more), then stop after the current run: a message is never cut off mid-transaction,
        and what is still queued waits for the next start."""
        self._deadline = time.monotonic() + grace
        self._wake.set()
        if self._halt is not None:
            asyncio.get_running_loop().call_later(grace, self._halt.set)
        if self._task is not None:
            await self._task

    @property
    def _stopping(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    async def _loop(self) -> None:
        pause = 0.0
        while not self._stopping:
            self._wake.clear()
            try:
                taken = await self._run()
                pause = 0.0
            except Exception:  # the store is down, a worker died ...: back off, new mail does not hurry it
                pause = min(BACKOFF_MAX, max(1.0, pause * 2))
                log.exception("processing queued mail failed; trying again in %.0f s", pause)
                until = time.monotonic() + pause
                while not self._stopping and time.monotonic() < until:
                    await asyncio.sleep(min(0.25, until - time.monotonic()))
                continue
            if taken:
                continue  # there may be more
            if self._deadline is not None:
                return  # stopping, and nothing is left
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)


def make_runner(factory: sessionmaker[Session], settings: Settings, pool: IntakePool | None = None) -> QueueRunner:
    """The runner for ``[smtp] queue``: its work in an intake worker process, or in a thread of the daemon."""
    if pool is not None:
        return QueueRunner(pool.process_pending)
    stamp = intake_stamp(settings)
    halt = threading.Event()

    async def in_thread() -> int:
        return await asyncio.to_thread(process_pending, factory, settings, stamp=stamp, halt=halt)

    return QueueRunner(in_thread, halt=halt)
