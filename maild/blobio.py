# SPDX-License-Identifier: MIT
"""Large column values written and read in pieces, so a 25 MB message is never one Python object.

SQLite: the row gets ``zeroblob(size)`` and the bytes go in through incremental blob I/O
(``sqlite3.Connection.blobopen``), read back the same way. PostgreSQL has no such handle for
``bytea``; the value is built by appending pieces (``col || :piece``) in the same transaction, and
read back with ``substring``. Writes work on the caller's connection, inside its transaction, so the
value commits (or not) with the rest of the row; reads take their own snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, literal_column, select, update
from sqlalchemy.sql import ColumnElement

CHUNK = 1 << 20  # bytes read at a time
PG_PIECE = 8 << 20  # bytes appended at a time on PostgreSQL (each append rewrites the value so far)


def write(conn: Connection, table: Table, column: str, where: ColumnElement[bool],
          chunks: Iterable[bytes], size: int) -> None:
    """Set ``table.column`` of the one row matching ``where`` to the concatenation of ``chunks``
    (``size`` bytes in all)."""
    col = table.c[column]
    if conn.dialect.name == "sqlite":
        conn.execute(update(table).where(where).values({column: func.zeroblob(size)}))
        rowid = conn.scalar(select(literal_column("rowid")).select_from(table).where(where))
        written = 0
        with _sqlite(conn).blobopen(table.name, column, rowid) as blob:
            for chunk in chunks:
                blob.write(chunk)
                written += len(chunk)
        if written != size:
            raise ValueError(f"wrote {written} bytes into a value of {size}")
        return
    conn.execute(update(table).where(where).values({column: b""}))
    piece: list[bytes] = []
    held = written = 0
    for chunk in chunks:
        piece.append(chunk)
        held += len(chunk)
        written += len(chunk)
        if held >= PG_PIECE:
            conn.execute(update(table).where(where).values({column: col.op("||")(b"".join(piece))}))
            piece, held = [], 0
    if piece:
        conn.execute(update(table).where(where).values({column: col.op("||")(b"".join(piece))}))
    if written != size:
        raise ValueError(f"wrote {written} bytes into a value of {size}")


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
    # Larger slices on PostgreSQL: a compressed value is decompressed from its start for every slice
    # (raw bodies are stored uncompressed since migration 0006; older ones and blobs may not be).
    step = max(chunk, PG_PIECE)
    with engine.connect() as conn:
        for pos in range(0, size, step):
            piece = conn.scalar(select(func.substring(col, pos + 1, step)).where(table.c.id == row_id))
            if not piece:
                return
            yield bytes(piece)


def read_whole(engine: Engine, table: Table, column: str, row_id: int, size: int) -> bytes:
    """The whole value, read as ``read`` does but in one piece: a single copy, no list of pieces to join."""
    return b"".join(read(engine, table, column, row_id, size, chunk=max(size, 1)))


def _sqlite(conn: Connection) -> Any:
    return conn.connection.driver_connection
