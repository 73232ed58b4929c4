# SPDX-License-Identifier: MIT
"""Large column values written and read in pieces, so a 25 MB message is never one Python object.

SQLite: the row gets ``zeroblob(size)`` and the bytes go in through incremental blob I/O
(``sqlite3.Connection.blobopen``), read back the same way. PostgreSQL has no such handle for
``bytea``; the value is streamed in with binary ``COPY`` (``write_pieces`` says how) and read back
with ``substring``. Writes work on the caller's connection, inside its transaction, so the value
commits (or not) with the rest of the row; reads take their own snapshot.

The writing is ``maild.ingest.intake_store.write_pieces``, on the DB-API connection: the SMTP
listener's process writes a large message's bytes without SQLAlchemy, and the algorithm exists once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.exc import DBAPIError

from maild.ingest import intake_store

CHUNK = 1 << 20  # bytes read at a time
PG_SLICE = 8 << 20  # bytes read at a time on PostgreSQL (see read())


def write(conn: Connection, table: Table, column: str, key_column: str, key: object,
          chunks: Iterable[bytes], size: int) -> None:
    """Set ``table.column`` of the one row whose ``key_column`` is ``key`` to the concatenation of
    ``chunks`` (``size`` bytes in all), in ``conn``'s transaction. The caller has flushed the row."""
    intake_store.write_pieces(conn.connection.driver_connection, table.name, column, key_column, key, chunks, size)


def read(engine: Engine, table: Table, column: str, row_id: int, size: int,
         chunk: int = CHUNK) -> Iterator[bytes]:
    """The value of ``table.column`` in the row whose integer key ``id`` is ``row_id``, ``chunk``
    bytes at a time. Outside any transaction of the caller's: on SQLite the blob handle is a read
    snapshot of its own (WAL), so reading a large message never takes or waits for the write lock."""
    if engine.dialect.name == "sqlite":  # ``id INTEGER PRIMARY KEY`` is the rowid
        raw = engine.raw_connection()
        try:
            with raw.driver_connection.blobopen(table.name, column, row_id, readonly=True) as blob:  # type: ignore[union-attr]
                while piece := blob.read(chunk):
                    yield piece
        finally:
            raw.close()
        return
    col = table.c[column]
    # ``chunk``-byte slices cost PostgreSQL nothing extra on a value stored uncompressed, as raw bodies
    # are since migration 0006: ``substring`` reads only the TOAST chunks it needs. An older,
    # compressed value is decompressed from its start for every slice, so it is read in larger ones.
    step = chunk if _uncompressed(engine, table, column, row_id) else max(chunk, PG_SLICE)
    with engine.connect() as conn:
        for pos in range(0, size, step):
            piece = conn.scalar(select(func.substring(col, pos + 1, step)).where(table.c.id == row_id))
            if not piece:
                return
            yield bytes(piece)


def _uncompressed(engine: Engine, table: Table, column: str, row_id: int) -> bool:
    """PostgreSQL: whether the value is stored uncompressed (``pg_column_compression``, PostgreSQL 14+;
    an older server answers False, and the value is read in large slices, as before)."""
    try:
        with engine.connect() as conn:
            method = conn.scalar(select(func.pg_column_compression(table.c[column])).where(table.c.id == row_id))
    except DBAPIError:
        return False
    return method is None


def read_whole(engine: Engine, table: Table, column: str, row_id: int, size: int) -> bytes:
    """The whole value, read as ``read`` does but in one piece: a single copy, no list of pieces to join."""
    return b"".join(read(engine, table, column, row_id, size, chunk=max(size, 1)))
