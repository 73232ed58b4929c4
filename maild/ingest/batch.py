# SPDX-License-Identifier: MIT
"""Group commit for SMTP intake: messages that arrive while a commit runs share the next one.

Every DATA still gets its ``250`` only after the commit that holds its message (RELIABILITY rule 1).
What changes under load is how many messages one commit holds: while ``slots`` batches run, new
messages wait in a queue, and the next free slot takes all of them (up to ``max_items`` messages and
``max_bytes`` of mail) into one transaction. One fsync and one turn of SQLite's write lock then serve
the whole batch; with one message at a time nothing waits, so a quiet desk sees no extra latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from maild.ingest.raw import RawMail

log = logging.getLogger(__name__)

T = TypeVar("T")  # what a batch answers for each message: an IngestResult, or a Queued row
MAX_ITEMS = 32
MAX_BYTES = 8 * 1024 * 1024  # a big message is committed on its own, not with 31 others waiting on it


class Batcher(Generic[T]):
    """Queues messages from many SMTP sessions and runs them through ``run`` in batches."""

    def __init__(self, run: Callable[[Sequence[RawMail]], Awaitable[Sequence[T | Exception]]], *, slots: int,
                 max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES) -> None:
        self._run = run
        self._slots = max(1, slots)
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._queue: deque[tuple[RawMail, asyncio.Future[T]]] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def ingest(self, raw: RawMail) -> T:
        """The message's result once its batch is committed; raises what storing it raised."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((raw, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._queue and self._queue[0][1].done():  # the session went away while it waited
            self._queue.popleft()
        while len(self._running) < self._slots and self._queue:
            batch = [self._queue.popleft()]
            size = batch[0][0].size
            while self._queue and len(batch) < self._max_items:
                if self._queue[0][1].done():
                    self._queue.popleft()
                    continue
                size += self._queue[0][0].size
                if size > self._max_bytes:
                    break
                batch.append(self._queue.popleft())
            task = asyncio.get_running_loop().create_task(self._commit(batch))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _commit(self, batch: list[tuple[RawMail, asyncio.Future[T]]]) -> None:
        outcomes: Sequence[T | Exception] = [RuntimeError("intake stopped")] * len(batch)
        try:
            outcomes = await self._run([raw for raw, _ in batch])
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the commit or the worker failed (even KeyboardInterrupt from a
            # worker): every message of the batch is 451, and the event loop goes on serving
            outcomes = [exc if isinstance(exc, Exception) else RuntimeError(repr(exc))] * len(batch)
        finally:  # also when cancelled: no session may wait for ever
            self._settle(batch, outcomes)
        if len(batch) > 1:
            log.debug("group commit of %d messages", len(batch))

    @staticmethod
    def _settle(batch: list[tuple[RawMail, asyncio.Future[T]]],
                outcomes: Sequence[T | Exception]) -> None:
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the session went away meanwhile (client gone, shutdown)
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
