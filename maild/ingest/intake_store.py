# SPDX-License-Identifier: MIT
"""The SMTP queue's commit on a plain DB-API connection: what the listener needs of the store, and no more.

The listener's process takes messages of up to ``max_message_size`` (25 MB) and must stay small;
SQLAlchemy alone costs it about 21 MiB. So the one write it makes, a batch of accepted messages into
``raw_messages`` and ``raw_bodies`` (``maild.ingest.queue``), is written here in SQL on the driver's
connection: the standard library's ``sqlite3``, or psycopg 3 for PostgreSQL (imported only for a
PostgreSQL URL). Nothing here imports SQLAlchemy, not even lazily.

The insert exists once. ``IntakeStore`` runs it on a connection of its own (the listener's process);
``queue.enqueue_batch`` runs it on the DB-API connection under a SQLAlchemy transaction (the daemon,
the tests). ``write_pieces``, which puts a large value into a row in pieces, serves ``maild.blobio`` too.

Values are written as SQLAlchemy writes them (``maild.models``), so the ORM reads them back unchanged:
``received_at`` naive UTC (``UTCDateTime``), on SQLite as SQLAlchemy's DATETIME text; ``rcpt_tos`` as
JSON (``json.dumps``, SQLAlchemy's default serialiser); ``tls`` 0/1 on SQLite.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from maild import clock
from maild.faults import fault_point
from maild.locks import WriterLock, lock_path

if TYPE_CHECKING:
    from maild.ingest.raw import RawMail

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 10_000  # as maild.db's
# PostgreSQL's binary COPY format: the file header (signature, flags, no extension), a row's field
# count, and the end of the data (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4).
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_END = struct.pack("!h", -1)
# Rows per INSERT statement: far more than a listener's batch, which is thus one statement; the bound
# keeps any batch under SQLite's 32766 parameters (14 a row) and PostgreSQL's 65535.
_ROWS_PER_STATEMENT = 500
_COLUMNS = ("envelope_key", "sha256", "source", "source_key", "mail_from", "rcpt_tos", "peer", "helo", "tls",
            "received_at", "size", "reason", "duplicates", "attempts")


@dataclass(frozen=True)
class Queued:
    """A message committed to the queue: its row, and whether that row was already there."""

    raw_id: int
    duplicate: bool


class _Db:
    """A DB-API connection and the little that differs between the two drivers.

    Identifiers in the SQL below are this module's constants, never input: only values are parameters.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sqlite = isinstance(conn, sqlite3.Connection)
        self.p = "?" if self.sqlite else "%s"  # psycopg's %s sends bytes in binary format, not hex-escaped
        self.done = 0  # statements completed: none means the connection may have been dead before the batch

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params)
            rows: list[Any] = cursor.fetchall() if cursor.description is not None else []
        finally:
            cursor.close()
        self.done += 1
        return rows

    def dead(self) -> bool:
        """The connection is lost (PostgreSQL: the server restarted, the backend was terminated)."""
        return not self.sqlite and bool(self.conn.closed or self.conn.broken)

    def restart(self) -> None:
        """Roll back and begin a new transaction on the same connection."""
        self.conn.rollback()  # sqlite3: only if one is open (a failed statement may have ended it)
        if self.sqlite:  # PostgreSQL begins implicitly at the next statement
            self.execute("BEGIN IMMEDIATE")

    def json(self, value: object) -> Any:
        if self.sqlite:
            return json.dumps(value)
        from psycopg.types.json import Json  # a json parameter, dumped by the same json.dumps

        return Json(value)

    def boolean(self, value: bool) -> Any:
        return int(value) if self.sqlite else value

    def timestamp(self, value: datetime) -> Any:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC).replace(tzinfo=None)
        if not self.sqlite:
            return value  # timestamp without time zone
        # SQLAlchemy's SQLite DATETIME storage format (sqlalchemy.dialects.sqlite.DATETIME), always with
        # microseconds: the ORM parses it back, and SQL orders and compares the column as text
        return (f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
                f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}")


def insert_batch(conn: Any, raws: Sequence[RawMail]) -> list[Queued | Exception]:
    """Write each message's row and bytes in the transaction open on DB-API connection ``conn``;
    the caller commits. The semantics are ``maild.ingest.queue.enqueue_batch``'s (see there)."""
    return _insert_batch(_Db(conn), raws)


def _insert_batch(db: _Db, raws: Sequence[RawMail]) -> list[Queued | Exception]:
    try:
        return list(_insert_all(db, raws))
    except Exception:
        if len(raws) == 1 or db.dead():  # a lost connection fails every message alike
            raise
        log.warning("a batch of %d messages could not be queued at once; trying each", len(raws), exc_info=True)
        db.restart()
        return [_insert_one(db, raw) for raw in raws]


def _insert_one(db: _Db, raw: RawMail) -> Queued | Exception:
    db.execute("SAVEPOINT maild_one")
    try:
        result = _insert_all(db, [raw])[0]
    except Exception as exc:
        if db.dead():
            raise
        db.execute("ROLLBACK TO SAVEPOINT maild_one")  # and on PostgreSQL, out of the aborted state
        db.execute("RELEASE SAVEPOINT maild_one")
        log.exception("message %s could not be queued; it will be answered 451", raw.sha256[:12])
        return exc
    db.execute("RELEASE SAVEPOINT maild_one")
    return result


def _keys(raw: RawMail) -> list[str]:
    return [raw.envelope_key] + ([raw.source_key] if raw.source_key else [])


def _insert_all(db: _Db, raws: Sequence[RawMail]) -> list[Queued]:
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
    new = _insert_rows(db, fresh)  # envelope key -> id of each row inserted now
    stored = _stored_copies(db, [raw for raw in fresh if raw.envelope_key not in new])
    written = [(raw, new[raw.envelope_key]) for raw in fresh if raw.envelope_key in new]
    for start in range(0, len(written), _ROWS_PER_STATEMENT):
        part = written[start:start + _ROWS_PER_STATEMENT]
        values = ", ".join([f"({db.p}, {db.p})"] * len(part))
        db.execute(f"INSERT INTO raw_bodies (id, data) VALUES {values}",
                   [value for raw, row_id in part for value in (row_id, raw.data)])
    for raw, row_id in written:
        if raw.spool is not None:  # a large message: its bytes go in from the spool file, in pieces
            _write_pieces(db, "raw_bodies", "data", "id", row_id, raw.spool.chunks(), raw.spool.size)
    results = []
    for copy, index in plan:
        raw = fresh[index]
        row_id = new.get(raw.envelope_key) or stored[raw.envelope_key]
        duplicate = copy or raw.envelope_key not in new
        if duplicate:
            db.execute(f"UPDATE raw_messages SET duplicates = duplicates + 1 WHERE id = {db.p}", (row_id,))
        results.append(Queued(row_id, duplicate))
    return results


def _insert_rows(db: _Db, fresh: Sequence[RawMail]) -> dict[str, int]:
    """Insert a row for each message, skipping any whose envelope or source key is stored already
    (a resend after a lost ``250``, RELIABILITY D2); the envelope keys of those inserted, with ids.
    One statement (``ON CONFLICT DO NOTHING``: a skipped row is not returned)."""
    if not fresh:
        return {}
    arrived = _received(fresh)
    inserted: dict[str, int] = {}
    for start in range(0, len(fresh), _ROWS_PER_STATEMENT):
        part = range(start, min(start + _ROWS_PER_STATEMENT, len(fresh)))
        params: list[Any] = []
        for i in part:
            raw = fresh[i]
            params += [raw.envelope_key, raw.sha256, raw.source, raw.source_key, raw.mail_from,
                       db.json(list(raw.rcpt_tos)), raw.peer, raw.helo, db.boolean(raw.tls),
                       db.timestamp(arrived[i]), raw.size, "", 0, 0]
        values = ", ".join(["(" + ", ".join([db.p] * len(_COLUMNS)) + ")"] * len(part))
        rows = db.execute(f"INSERT INTO raw_messages ({', '.join(_COLUMNS)}) VALUES {values} "
                          "ON CONFLICT DO NOTHING RETURNING id, envelope_key", params)
        inserted.update((envelope_key, row_id) for row_id, envelope_key in rows)
    return inserted


def _received(fresh: Sequence[RawMail]) -> list[datetime]:
    """When each message arrived; now for one without a time (the listener stamps every message)."""
    now = clock.now()
    return [raw.received_at or now for raw in fresh]


def _stored_copies(db: _Db, copies: Sequence[RawMail]) -> dict[str, int]:
    """For messages a stored row already holds (by envelope or source key): envelope key -> that row."""
    if not copies:
        return {}
    envelopes = [raw.envelope_key for raw in copies]
    sources = [raw.source_key for raw in copies if raw.source_key]
    where = f"envelope_key IN ({', '.join([db.p] * len(envelopes))})"
    if sources:
        where += f" OR source_key IN ({', '.join([db.p] * len(sources))})"
    by_key: dict[str, int] = {}
    for row_id, envelope_key, source_key in db.execute(
            f"SELECT id, envelope_key, source_key FROM raw_messages WHERE {where}", envelopes + sources):
        by_key[envelope_key] = row_id
        if source_key:
            by_key[source_key] = row_id
    found = {}
    for raw in copies:
        row_id = next((by_key[k] for k in _keys(raw) if k in by_key), None)
        if row_id is None:  # neither key stored, yet the insert skipped it: nothing sensible to answer
            raise LookupError(f"message {raw.sha256[:12]} was neither inserted nor found")
        found[raw.envelope_key] = row_id
    return found


def write_pieces(conn: Any, table: str, column: str, key_column: str, key: object,
                 chunks: Iterable[bytes], size: int) -> None:
    """Set ``table.column`` of the one row whose ``key_column`` is ``key`` to the concatenation of
    ``chunks`` (``size`` bytes in all), in the transaction open on DB-API connection ``conn``, so the
    value commits (or not) with the rest of the row. A large message is never one Python object.

    SQLite: the row gets ``zeroblob(size)`` and the bytes go in through incremental blob I/O
    (``sqlite3.Connection.blobopen``). PostgreSQL has no such handle for ``bytea``; the bytes are
    streamed with ``COPY ... FROM STDIN (FORMAT BINARY)``, whose field length is given up front,
    into a one-row temporary table, and the row takes the value from there. Appending pieces
    (``col || piece``) would rewrite the whole value so far at every piece (WAL-logged each time),
    or hold big pieces in memory: 8 MiB pieces cost the listener 35 MiB for a 25 MB message. A role
    that may not create temporary tables (``TEMP`` revoked) still gets its mail stored: by appending
    the spool's 1 MiB pieces, the slow way. ``table``, ``column`` and ``key_column`` are names from
    the code, never input."""
    _write_pieces(_Db(conn), table, column, key_column, key, chunks, size)


def _pieces_table(db: _Db) -> bool:
    """PostgreSQL: the session's temporary table for a value streamed in by ``COPY``; False when the
    role may not create temporary tables (``TEMP`` revoked), checked before anything can fail.

    Rows go at commit (``ON COMMIT DELETE ROWS``); ``_write_pieces`` empties it after each value.
    STORAGE EXTERNAL: copied on as it is, a value would keep pglz's compression in ``raw_bodies``,
    whose column is EXTERNAL (migration 0006) so that it is read in slices without decompressing."""
    if db.execute("SELECT to_regclass('pg_temp.maild_pieces')") != [(None,)]:
        return True
    if db.execute("SELECT has_database_privilege(current_database(), 'TEMP')") != [(True,)]:
        return False
    db.execute("CREATE TEMPORARY TABLE maild_pieces (data bytea) ON COMMIT DELETE ROWS")
    db.execute("ALTER TABLE maild_pieces ALTER COLUMN data SET STORAGE EXTERNAL")
    return True


def _write_pieces(db: _Db, table: str, column: str, key_column: str, key: object,
                  chunks: Iterable[bytes], size: int) -> None:
    where = f"WHERE {key_column} = {db.p}"
    written = 0
    if db.sqlite:
        db.execute(f"UPDATE {table} SET {column} = zeroblob({db.p}) {where}", (size, key))
        ((rowid,),) = db.execute(f"SELECT rowid FROM {table} {where}", (key,))
        with db.conn.blobopen(table, column, rowid) as blob:
            for chunk in chunks:
                blob.write(chunk)
                written += len(chunk)
    elif not _pieces_table(db):  # no TEMP privilege (a hardened database): appended, 1 MiB at a time
        db.execute(f"UPDATE {table} SET {column} = {db.p} {where}", (b"", key))
        for chunk in chunks:
            written += len(chunk)
            db.execute(f"UPDATE {table} SET {column} = {column} || {db.p} {where}", (chunk, key))
    else:
        with db.conn.cursor() as cursor, cursor.copy("COPY maild_pieces (data) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_COPY_HEADER + struct.pack("!hi", 1, size))
            for chunk in chunks:
                written += len(chunk)
                if written > size:  # raised inside the COPY, which then fails instead of storing it
                    break
                copy.write(chunk)
            if written != size:
                raise ValueError(f"wrote {written} bytes into a value of {size}")
            copy.write(_COPY_END)
        db.done += 1
        db.execute(f"UPDATE {table} SET {column} = (SELECT data FROM maild_pieces) {where}", (key,))
        db.execute("DELETE FROM maild_pieces")
    if written != size:
        raise ValueError(f"wrote {written} bytes into a value of {size}")


# -- the listener's own connection --------------------------------------------------------------------

# SQLAlchemy's URL syntax (sqlalchemy.engine.url._parse_url), so one database_url serves both sides.
_URL = re.compile(r"""
    (?P<scheme>[\w+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    """, re.X)


@dataclass(frozen=True)
class SqliteTarget:
    database: str  # a file's path, relative to the working directory as SQLAlchemy takes it ("file:x" too)


@dataclass(frozen=True)
class PostgresTarget:
    params: dict[str, str]  # libpq connection keywords, as SQLAlchemy's psycopg dialect passes them

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.params)


def parse_url(url: str) -> SqliteTarget | PostgresTarget:
    """maild's ``database_url`` (SQLAlchemy's syntax) as what a DB-API driver connects to:
    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (not in memory: the work process could not
    share it);
    ``postgresql[+driver]://user:password@host:port/database?key=value`` (query keys are libpq's,
    ``host=/run/postgresql`` for a socket directory; a key given twice is joined with commas, as
    SQLAlchemy does for several hosts)."""
    match = _URL.fullmatch(url.strip())
    if match is None:
        raise ValueError(f"cannot parse database URL {url!r}")
    scheme = match["scheme"].split("+", 1)[0]
    database = unquote(match["database"]) if match["database"] is not None else None
    if scheme == "sqlite":
        if match["query"]:
            raise ValueError("query parameters in a SQLite database URL are not supported by the intake store")
        if not database or database == ":memory:":
            raise ValueError("an in-memory SQLite store cannot be shared by maild's listener and work process: "
                             "give the database a file")
        return SqliteTarget(database)
    if scheme != "postgresql":
        raise ValueError(f"unsupported database URL scheme {match['scheme']!r}")
    params: dict[str, str] = {}
    if match["username"]:
        params["user"] = unquote(match["username"])
    if match["password"] is not None:
        params["password"] = unquote(match["password"])
    host = match["ipv4host"] or match["ipv6host"]
    if host:
        params["host"] = host
    if match["port"]:
        params["port"] = str(int(match["port"]))
    if database:
        params["dbname"] = database
    query: dict[str, list[str]] = {}
    for name, value in parse_qsl(match["query"] or ""):
        query.setdefault(name, []).append(value)
    params.update((name, ",".join(values)) for name, values in query.items())
    return PostgresTarget(params)


class IntakeStore:
    """The queue's commit for the SMTP listener's process, on one DB-API connection of its own.

    ``enqueue_batch`` is ``queue.enqueue_batch`` without SQLAlchemy: one transaction per batch, the
    same rows, the same answers. The connection is made at the first batch and made again after it
    is lost, so a store that is down at start, or restarts, costs 451s and not the listener.

    SQLite: WAL, ``synchronous=FULL``, ``busy_timeout``, foreign keys on (``maild.db``'s settings);
    each batch takes the writer lock every maild process takes (``maild.locks``), then ``BEGIN
    IMMEDIATE``, so the listener's commits queue in order with the daemon's. Past the busy timeout,
    TimeoutError (a 451).

    PostgreSQL: ``synchronous_commit = on``. A batch whose first statement finds the connection dead
    (the server restarted, the backend was terminated while the listener was idle) is run again, once,
    on a new connection: nothing of it reached the database. A connection lost later in the batch
    fails the batch (its messages are answered 451; the client sends them again).

    One batch at a time; calls may come from different threads (``asyncio.to_thread``).
    """

    def __init__(self, url: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        self.target = parse_url(url)
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: Any = None
        self._one_batch = threading.Lock()
        self._writer: WriterLock | None = None
        if isinstance(self.target, SqliteTarget):
            self._writer = WriterLock(lock_path(self.target.database), busy_timeout_ms / 1000)

    def __enter__(self) -> IntakeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue_batch(self, raws: Sequence[RawMail]) -> list[Queued | Exception]:
        """Commit each message's bytes and envelope, all in one transaction; returns after the commit.
        One result per message, in order: its row, or the exception that kept it out (the rest of
        the batch is stored). An exception raised here (the store locked or down, a failed commit)
        means no message of the batch is stored."""
        if not raws:
            return []
        with self._one_batch:
            if self._writer is not None:
                return self._enqueue_sqlite(raws, self._writer)
            return self._enqueue_postgres(raws)

    def close(self) -> None:
        with self._one_batch:
            self._drop()
            if self._writer is not None:
                self._writer.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # a lost connection may complain on the way out
                log.debug("closing the intake store's connection: %s", exc)

    def _enqueue_sqlite(self, raws: Sequence[RawMail], writer: WriterLock) -> list[Queued | Exception]:
        if self._conn is None:
            self._conn = self._connect_sqlite()
        db = _Db(self._conn)
        with writer:
            db.execute("BEGIN IMMEDIATE")
            try:
                results = _insert_batch(db, raws)
                fault_point("before_commit")
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise
        return results

    def _connect_sqlite(self) -> sqlite3.Connection:
        assert isinstance(self.target, SqliteTarget)
        database = self.target.database
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the module begins nothing itself, BEGIN IMMEDIATE is ours.
        # check_same_thread=False: batches come from asyncio.to_thread's threads, one at a time.
        conn = sqlite3.connect(database, timeout=self._busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _enqueue_postgres(self, raws: Sequence[RawMail]) -> list[Queued | Exception]:
        for attempt in (1, 2):
            if self._conn is not None and self._conn.closed:
                self._drop()
            if self._conn is None:
                self._conn = self._connect_postgres()
            db = _Db(self._conn)
            try:
                results = _insert_batch(db, raws)
                fault_point("before_commit")
                self._conn.commit()
                return results
            except BaseException as exc:
                if not db.dead():
                    _roll_back(db)
                    raise
                self._drop()
                if attempt == 2 or db.done or not isinstance(exc, Exception):
                    raise
                log.warning("the connection to PostgreSQL was lost (%s); queueing the batch on a new one", exc)
        raise AssertionError("unreachable")

    def _connect_postgres(self) -> Any:
        assert isinstance(self.target, PostgresTarget)
        import psycopg  # only here: a SQLite listener never loads it

        conn = psycopg.connect(self.target.conninfo())
        try:
            conn.execute("SET synchronous_commit = on")
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn


def _roll_back(db: _Db) -> None:
    """Roll back after a failure, which is raised in any case: a rollback that fails too is logged."""
    try:
        db.conn.rollback()
    except Exception as exc:
        log.warning("rolling back the intake store's transaction failed: %s", exc)
