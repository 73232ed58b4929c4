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

from sqlalchemy import Connection, Table, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import ColumnElement

from maild import blobio, clock
from maild.config import Settings
from maild.db import transaction
from maild.faults import fault_hang, fault_point
from maild.ingest import bigmail
from maild.ingest.raw import RawMail, from_stored
from maild.locks import open_lock_file
from maild.models import RawBody, RawMessage

if TYPE_CHECKING:
    from maild.ingest.queue_run import IntakeStamp

log = logging.getLogger(__name__)

CLAIM = 16  # messages claimed per run; each is still processed and committed on its own
CLAIM_BYTES = 8 * 1024 * 1024  # and no more mail than this in memory at once (at least one message)
MAX_ATTEMPTS = 3
YIELD_WINDOW = timedelta(seconds=30)  # processing yields to intake only for mail younger than this
_ADVISORY_KEY = 0x6D61696C64  # "maild": the PostgreSQL lock of the one process working the queue


@dataclass(frozen=True)
class Queued:
    """A message committed to the queue: its row, and whether that row was already there."""

    raw_id: int
    duplicate: bool


def enqueue_batch(factory: sessionmaker[Session], raws: Sequence[RawMail]) -> list[Queued | Exception]:
    """Commit each message's bytes and envelope, all in one transaction; returns after the commit.

    The same copy arriving again (same bytes, same envelope) is counted on the first row, not stored
    twice (RELIABILITY rule 2). The batch is written with one insert of its rows (``ON CONFLICT DO
    NOTHING``: a copy already stored is not returned, and only then looked up) and one of their
    bytes. If that fails, the transaction is rolled back and each message is tried on its own, so one
    that cannot be stored gets its exception and leaves the others alone. A failed commit raises for
    all. No savepoint on the common path: on PostgreSQL each costs two round trips per batch.
    """
    with transaction(factory) as session:
        try:
            results: list[Queued | Exception] = list(_insert_all(session, raws))
        except Exception:
            if len(raws) == 1:
                raise
            log.warning("a batch of %d messages could not be queued at once; trying each", len(raws), exc_info=True)
            session.rollback()  # the same transaction() goes on: the next statement begins anew
            results = [_insert_one(session, raw) for raw in raws]
        fault_point("before_commit")
    return results


def _insert_one(session: Session, raw: RawMail) -> Queued | Exception:
    try:
        with session.begin_nested():
            return _insert_all(session, [raw])[0]
    except Exception as exc:
        log.exception("message %s could not be queued; it will be answered 451", raw.sha256[:12])
        return exc


def _keys(raw: RawMail) -> list[str]:
    return [raw.envelope_key] + ([raw.source_key] if raw.source_key else [])


def _insert_all(session: Session, raws: Sequence[RawMail]) -> list[Queued]:
    fresh: list[RawMail] = []
    in_batch: dict[str, int] = {}  # envelope or source key -> index in fresh, for copies in this very batch
    plan: list[tuple[bool, int]] = []  # (a copy of an earlier one in the batch, its index in fresh)
    for raw in raws:
        index = next((in_batch[k] for k in _keys(raw) if k in in_batch), None)
        if index is None:
            index = len(fresh)
            in_batch.update(dict.fromkeys(_keys(raw), index))
            fresh.append(raw)
            plan.append((False, index))
        else:
            plan.append((True, index))
    conn = session.connection()
    new = _insert_rows(conn, fresh)  # envelope key -> id of each row inserted now
    stored = _stored_copies(conn, [raw for raw in fresh if raw.envelope_key not in new])
    bodies = cast(Table, RawBody.__table__)
    written = [(raw, new[raw.envelope_key]) for raw in fresh if raw.envelope_key in new]
    if written:
        conn.execute(insert(bodies), [{"id": row_id, "data": raw.data} for raw, row_id in written])
    for raw, row_id in written:
        if raw.spool is not None:  # a large message: its bytes go in from the spool file, in pieces
            blobio.write(conn, bodies, "data", bodies.c.id == row_id, raw.spool.chunks(), raw.spool.size)
    results = []
    for copy, index in plan:
        raw = fresh[index]
        row_id = new.get(raw.envelope_key) or stored[raw.envelope_key]
        duplicate = copy or raw.envelope_key not in new
        if duplicate:
            conn.execute(update(RawMessage).where(RawMessage.id == row_id).values(duplicates=RawMessage.duplicates + 1))
        results.append(Queued(row_id, duplicate))
    return results


def _insert_rows(conn: Connection, fresh: Sequence[RawMail]) -> dict[str, int]:
    """Insert a row for each message, skipping any whose envelope or source key is stored already
    (a resend after a lost ``250``, RELIABILITY D2); the envelope keys of those inserted, with ids."""
    if not fresh:
        return {}
    now = clock.now()
    table = cast(Table, RawMessage.__table__)  # Core, not the ORM's bulk path: runs for every SMTP message
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = dialect_insert(table).on_conflict_do_nothing().returning(table.c.id, table.c.envelope_key)
    rows = conn.execute(statement, [
        {"envelope_key": raw.envelope_key, "sha256": raw.sha256, "source": raw.source,
         "source_key": raw.source_key, "mail_from": raw.mail_from, "rcpt_tos": list(raw.rcpt_tos),
         "peer": raw.peer, "helo": raw.helo, "tls": raw.tls, "received_at": raw.received_at or now,
         "size": raw.size, "reason": "", "duplicates": 0, "attempts": 0} for raw in fresh])
    return {row.envelope_key: row.id for row in rows}


def _stored_copies(conn: Connection, copies: Sequence[RawMail]) -> dict[str, int]:
    """For messages a stored row already holds (by envelope or source key): envelope key -> that row."""
    if not copies:
        return {}
    where: ColumnElement[bool] = RawMessage.envelope_key.in_([raw.envelope_key for raw in copies])
    sources = [raw.source_key for raw in copies if raw.source_key]
    if sources:
        where = where | RawMessage.source_key.in_(sources)
    by_key: dict[str, int] = {}
    for row in conn.execute(select(RawMessage.id, RawMessage.envelope_key, RawMessage.source_key).where(where)):
        by_key[row.envelope_key] = row.id
        if row.source_key:
            by_key[row.source_key] = row.id
    found = {}
    for raw in copies:
        row_id = next((by_key[k] for k in _keys(raw) if k in by_key), None)
        if row_id is None:  # neither key stored, yet the insert skipped it: nothing sensible to answer
            raise LookupError(f"message {raw.sha256[:12]} was neither inserted nor found")
        found[raw.envelope_key] = row_id
    return found


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
