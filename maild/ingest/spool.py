# SPDX-License-Identifier: MIT
"""Spool: one message's bytes as SMTP DATA delivers them, in memory while small, in a file beyond.

aiosmtpd collects DATA as one ``bytearray`` per line and joins them at the end: a 25 MB message
costs about three times its size before maild sees it. The listener (``smtp_server.IntakeSMTP``)
writes each line here instead. Up to ``MEMORY`` bytes stay in one buffer, so ordinary mail is as
cheap as before; past that the bytes go to an unnamed file in the spool directory (gone when closed,
or when the process dies). The content hash is taken as the lines arrive, so nothing reads the file
twice to name the message, and the first ``HEAD`` bytes stay in memory for the header checks.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

MEMORY = 1 << 20  # messages up to this size never touch the spool directory
HEAD = (1 << 20) + 4  # the header checks read this much (smtp.MAX_HEADER_BYTES and its blank line)
CHUNK = 1 << 20  # bytes read back at a time


def temp_file(directory: Path | None) -> IO[bytes]:
    """An unnamed file in ``directory`` (made private if missing): nothing to clean up after a crash."""
    if directory is not None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=directory)


def pieces(data: bytes | bytearray, size: int = CHUNK) -> Iterator[bytes]:
    """``data`` in ``size``-byte copies, for writers that take pieces (``maild.blobio``)."""
    view = memoryview(data)
    for pos in range(0, len(view), size):
        yield bytes(view[pos:pos + size])


class Spool:
    """The bytes of one message, written in order and read back in chunks."""

    def __init__(self, directory: Path | None = None, memory: int = MEMORY) -> None:
        self._directory = directory
        self._memory = memory
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self._head = b""
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.hash.update(data)
        self.size += len(data)
        if self._file is None:
            self._buffer += data
            if len(self._buffer) <= self._memory:
                return
            self._head = bytes(self._buffer[:HEAD])
            self._file = temp_file(self._directory)
            self._file.write(self._buffer)
            self._buffer = bytearray()
            return
        if len(self._head) < HEAD:
            self._head += bytes(data[:HEAD - len(self._head)])
        self._file.write(data)

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def head(self) -> bytes:
        """The first ``HEAD`` bytes (all of them for a message kept in memory)."""
        return bytes(self._buffer) if self._file is None else self._head

    def getvalue(self) -> bytes:
        """All the bytes at once: for a message kept in memory, or a path that needs them whole."""
        if self._file is None:
            return bytes(self._buffer)
        self._file.flush()
        data = os.pread(self._file.fileno(), self.size, 0)  # one allocation, where joining chunks needs two
        return data if len(data) == self.size else b"".join(self.chunks())

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        if self._file is None:
            yield from pieces(self._buffer, size)
            return
        self._file.flush()
        fd = self._file.fileno()
        pos = 0
        while pos < self.size:
            chunk = os.pread(fd, min(size, self.size - pos), pos)
            if not chunk:
                raise OSError(f"spool file ended at {pos} of {self.size} bytes")
            pos += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._buffer = bytearray()
