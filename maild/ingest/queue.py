# SPDX-License-Identifier: MIT
"""Accept first, process after: the SMTP listener's queue.

RELIABILITY rule 1 asks that a message's raw bytes and envelope be durable before ``250``; D5 says
the ``250`` is right from then on, whatever processing does. So under ``[smtp] queue = true`` (the
default) the listener commits only that (``enqueue_batch``: one row per message, a group commit for
all the sessions waiting) and answers; the case work runs right after, oldest message first, one
transaction per message (``process_pending``), as an MTA's queue runs behind its ``250``. A burst then
costs the sending MTA one insert and one fsync per batch, not the case work of every message in it.

A queued message is a ``raw_messages`` row whose ``outcome`` is NULL (a partial index finds them).
Processing sets the outcome in the same transaction as the case change, so a crash before the commit
leaves the row queued and the next run takes it again: nothing is lost or done twice. ``attempts``
counts runs begun; a message that has stopped the process ``MAX_ATTEMPTS`` times (the OOM killer, a
crash in a C library) is quarantined unparsed instead of stopping the queue for ever.

``maild.ingest.queue_run`` drives it from the daemon's event loop; the work runs in a thread or, with
``[smtp] processes``, in an intake worker process. One process works the queue at a time
(a lock file beside SQLite's database, a PostgreSQL advisory lock), so several daemons sharing
PostgreSQL, or ``maild queue --process`` beside a daemon, take turns, oldest message first, and each
message once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from maild import blobio, clock
from maild.config import Settings
from maild.db import transaction
from maild.faults import fault_hang, fault_point
from maild.ingest import bigmail
from maild.ingest.intake_store import Queued as Queued  # re-exported: the queue's callers know it from here
from maild.ingest.intake_store import insert_batch
from maild.ingest.raw import RawMail, from_stored
from maild.locks import open_lock_file
from maild.models import RawBody, RawMessage

if TYPE_CHECKING:
    from maild.ingest.stamp import IntakeStamp

log = logging.getLogger(__name__)

CLAIM = 16  # messages claimed per run; each is still processed and committed on its own
CLAIM_BYTES = 8 * 1024 * 1024  # and no more mail than this in memory at once (at least one message)
MAX_ATTEMPTS = 3
YIELD_WINDOW = timedelta(seconds=30)  # processing yields to intake only for mail younger than this
_ADVISORY_KEY = 0x6D61696C64  # "maild": the PostgreSQL lock of the one process working the queue


def enqueue_batch(factory: sessionmaker[Session], raws: Sequence[RawMail]) -> list[Queued | Exception]:
    """Commit each message's bytes and envelope, all in one transaction; returns after the commit.

    The same copy arriving again (same bytes, same envelope) is counted on the first row, not stored
    twice (RELIABILITY rule 2). The batch is written with one insert of its rows (``ON CONFLICT DO
    NOTHING``: a copy already stored is not returned, and only then looked up) and one of their
    bytes. If that fails, the transaction is rolled back and each message is tried on its own, so one
    that cannot be stored gets its exception and leaves the others alone. A failed commit raises for
    all. No savepoint on the common path: on PostgreSQL each costs two round trips per batch.

    The statements are ``maild.ingest.intake_store``'s, run here on the DB-API connection under this
    SQLAlchemy transaction: the SMTP listener's own process runs the same ones without SQLAlchemy
    (``IntakeStore``), so there is one insert, whichever process commits the mail. The fallback's
    rollback and savepoints are issued on that DB-API connection too; SQLAlchemy's transaction only
    begins it (``BEGIN IMMEDIATE`` on SQLite, under the writer lock) and commits it.
    """
    with transaction(factory) as session:
        results = insert_batch(session.connection().connection.driver_connection, raws)
        fault_point("before_commit")
    return results


@dataclass(frozen=True)
class _Claimed:
    raw: RawMail  # without its bytes when large: read in pieces just before processing
    raw_id: int
    attempts: int
    size: int

    @property
    def large(self) -> bool:
        return self.size > bigmail.LARGE


def status(session: Session) -> dict[str, object]:
    """What ``maild queue`` prints: how much accepted mail waits, since when, and how much was retried."""
    waiting = RawMessage.outcome.is_(None)
    row = session.execute(select(func.count(RawMessage.id), func.min(RawMessage.received_at)).where(waiting)).one()
    retried = session.scalar(select(func.count(RawMessage.id)).where(waiting, RawMessage.attempts > 0)) or 0
    oldest = row[1].isoformat() if row[1] is not None else None
    return {"queued": row[0], "oldest_received_at": oldest, "begun_before": retried}


def process_pending(factory: sessionmaker[Session], settings: Settings, *, limit: int = CLAIM,
                    stamp: IntakeStamp | None = None, halt: threading.Event | None = None) -> int:
    """Process up to ``limit`` of the oldest queued messages, each in its own transaction; returns how
    many were taken (0: the queue is empty). With ``stamp``, each message younger than ``YIELD_WINDOW``
    waits for a pause in intake first (the claim itself is one short transaction and does not wait).
    Once ``halt`` is set (the daemon is stopping), the messages not begun yet are given back, their
    attempt uncounted, and it returns how many were done."""
    with _one_processor(factory) as ours:
        if not ours:
            return 0  # another process (a second daemon, `maild queue --process`) is at it
        claimed = _claim(factory, limit)
        for done, item in enumerate(claimed):
            if halt is not None and halt.is_set():
                _give_back(factory, [c.raw_id for c in claimed[done:]])
                claimed = claimed[:done]
                break
            try:
                _process_one(factory, settings, item, stamp)
            except Exception:
                _give_back(factory, [c.raw_id for c in claimed[done:]])
                raise
    if claimed:
        from maild.outbound.sender import wake

        wake()  # acknowledgements may be waiting in the outbox
    return len(claimed)


@contextlib.contextmanager
def _one_processor(factory: sessionmaker[Session]) -> Iterator[bool]:
    """True while this process is the one processing the queue; False (at once) if another is.

    One processor at a time keeps the order (a reply after its original) and makes ``attempts`` mean
    "runs begun and never finished", not "claimed by two processes at once". SQLite: ``flock`` of a
    file beside the database; PostgreSQL: a session advisory lock, released by the server if the
    holder's connection dies.
    """
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine):
        yield True
        return
    if bind.dialect.name == "postgresql":
        with bind.connect() as conn:
            ours = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": _ADVISORY_KEY}))
            conn.commit()  # the lock belongs to the session; no transaction stays open meanwhile
            if not ours:
                yield False
                return
            try:
                yield True
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_KEY})
                conn.commit()
        return
    database = bind.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield True
        return
    path = Path(database).resolve()
    fd = open_lock_file(f"{path}-queue.lock", owner_of=str(path))
    if fd is None:  # cannot be opened (logged): process anyway, as a lone daemon would
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # also releases the lock


def _claim(factory: sessionmaker[Session], limit: int) -> list[_Claimed]:
    """The oldest queued messages, with ``attempts`` raised and committed before any work starts.

    A message that was begun before and never finished may be the one that stops the process: it is
    claimed alone, so the messages behind it are not charged for its attempts.
    """
    with transaction(factory) as session:
        rows = session.execute(
            select(RawMessage.id, RawMessage.attempts, RawMessage.size).where(RawMessage.outcome.is_(None))
            .order_by(RawMessage.id).limit(limit)).all()
        chosen: list[int] = []
        total = 0
        for row in rows:
            if chosen and (row.attempts > 0 or total + row.size > CLAIM_BYTES):
                break
            chosen.append(row.id)
            total += row.size
            if row.attempts > 0:
                break
        if not chosen:
            return []
        session.execute(update(RawMessage).where(RawMessage.id.in_(chosen))
                        .values(attempts=RawMessage.attempts + 1))
        stored = session.scalars(select(RawMessage).where(RawMessage.id.in_(chosen)).order_by(RawMessage.id)).all()
        small = [row.id for row in stored if row.size <= bigmail.LARGE]  # large ones are read in pieces later
        data: dict[int, bytes] = {}
        if small:
            data = {row_id: body for row_id, body in session.execute(
                select(RawBody.id, RawBody.data).where(RawBody.id.in_(small)))}
        return [_Claimed(from_stored(row, data.get(row.id, b"")), row.id, row.attempts, row.size) for row in stored]


def _read_large(factory: sessionmaker[Session], settings: Settings, item: _Claimed) -> RawMail:
    """A large queued message as its skeleton and held-out attachments (``maild.ingest.bigmail``),
    read in pieces outside any transaction; one the scan cannot follow is read whole."""
    engine = cast(Engine, factory.kw["bind"])
    table = cast(Table, RawBody.__table__)
    try:
        data, whole = bigmail.split(blobio.read(engine, table, "data", item.raw_id, item.size),
                                    settings.data_dir / "spool")
    except Exception as exc:  # Unsplittable, or a shape the scan trips on: the parser gets it whole
        level = logging.INFO if isinstance(exc, bigmail.Unsplittable) else logging.WARNING
        log.log(level, "raw-%d is read whole: %s", item.raw_id, exc, exc_info=level == logging.WARNING)
        # "Nothing held out" keeps preparse from scanning it again.
        data = blobio.read_whole(engine, table, "data", item.raw_id, item.size)
        return replace(item.raw, data=data, whole=bigmail.Whole(len(data), 0, ()))
    return replace(item.raw, data=data, whole=whole)


def _give_back(factory: sessionmaker[Session], raw_ids: list[int]) -> None:
    """An error raised here (the store down or locked), not a crash: the attempts were not the
    messages' fault, so they do not count towards quarantine. Best effort: the store may be down."""
    try:
        with transaction(factory) as session:
            session.execute(update(RawMessage).where(RawMessage.id.in_(raw_ids), RawMessage.outcome.is_(None),
                                                     RawMessage.attempts > 0)
                            .values(attempts=RawMessage.attempts - 1))
    except Exception as exc:
        log.warning("could not give back the processing attempts of %d queued messages: %s", len(raw_ids), exc)


# The message this process is working on, and since when (time.monotonic()); None between messages.
# The daemon reads it to notice a message that hangs processing in its own thread (processes = 0).
_BUSY: tuple[int, float] | None = None


def busy() -> tuple[int, float] | None:
    """The raw id of the message this process is processing and when it began; None if none."""
    return _BUSY


def _process_one(factory: sessionmaker[Session], settings: Settings, item: _Claimed,
                 stamp: IntakeStamp | None) -> None:
    global _BUSY
    _BUSY = (item.raw_id, time.monotonic())
    try:
        _process_claimed(factory, settings, item, stamp)
    finally:
        _BUSY = None


def _process_claimed(factory: sessionmaker[Session], settings: Settings, item: _Claimed,
                     stamp: IntakeStamp | None) -> None:
    from maild.ingest.pipeline import preparse, settle

    give_up = None
    if item.attempts > MAX_ATTEMPTS:
        give_up = (f"processing was begun {item.attempts - 1} times and never finished (the process stopped); "
                   "quarantined unparsed so the queue goes on")
    now = clock.now()
    arrived = item.raw.received_at or now
    if stamp is not None and now - arrived < YIELD_WINDOW:
        # Parsing waits too: on a busy machine it would take CPU from the listener. A message that
        # has waited YIELD_WINDOW already goes ahead, so a load that never pauses cannot starve it.
        stamp.wait_quiet()
    raw = item.raw
    if give_up is None and item.large:  # claimed without its bytes
        raw = _read_large(factory, settings, item)
    parsed = None if give_up else preparse(raw, settings)  # CPU only, before the write lock
    started = time.monotonic()
    with transaction(factory) as session:
        # FOR UPDATE (PostgreSQL): should a second processor ever hold the same row, it waits here and
        # then finds the outcome set, instead of processing the message twice.
        stored = session.scalars(select(RawMessage).with_for_update()
                                 .where(RawMessage.id == item.raw_id, RawMessage.outcome.is_(None))).first()
        if stored is None:
            return  # another processor finished it meanwhile
        if give_up is None:
            fault_hang("processing_hangs")  # tests only (MAILD_FAULT): the message hangs processing
        # The reopen rule counts to the message's arrival: a reply that arrived on the last day of the
        # window reopens its case even if it waited in the queue past midnight. Everything else (events,
        # the acknowledgement and its rate limits) happens now.
        result = settle(session, raw, stored, now=clock.now(), settings=settings, parsed=parsed,
                        give_up=give_up, arrived=arrived)
    log.info("message %s: %s case=%s (%s) in %.0f ms", result.message_id, result.outcome.value, result.case,
             result.reason, (time.monotonic() - started) * 1000)
