# SPDX-License-Identifier: MIT
"""Messages from files for ``maild ingest``: single .eml files, mbox files and Maildirs.

Yields each message's bytes untouched (mbox ``From `` lines removed, ``>From`` quoting undone by the
standard ``mailbox`` module), or a FileProblem for a path that holds no mail, so one bad file never
stops the rest.
"""

from __future__ import annotations

import mailbox
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


@dataclass(frozen=True)
class FileMessage:
    where: str  # path, or path#N inside an mbox, or path/<key> inside a Maildir
    data: bytes


@dataclass(frozen=True)
class FileProblem:
    where: str
    problem: str


def looks_like_mail(data: bytes) -> bool:
    """A header section first: at least one ``Name:`` line before the first empty line."""
    head = data.lstrip(b"\r\n")[:4096]
    first = head.split(b"\n", 1)[0]
    return bool(_HEADER_LINE.match(first)) or first.startswith(b"From ")


def _is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(5) == b"From "


def iter_path(path: Path) -> Iterator[FileMessage | FileProblem]:
    if not path.exists():
        yield FileProblem(str(path), "no such file or directory")
    elif path.is_dir():
        if _is_maildir(path):
            yield from _maildir(path)
        else:
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from iter_path(child)
    else:
        try:
            if _is_mbox(path):
                yield from _mbox(path)
                return
            data = path.read_bytes()
        except OSError as exc:
            yield FileProblem(str(path), f"cannot read: {exc.strerror or exc}")
            return
        if looks_like_mail(data):
            yield FileMessage(str(path), data)
        else:
            yield FileProblem(str(path), "not a mail message (no header section)")


def _mbox(path: Path) -> Iterator[FileMessage | FileProblem]:
    box = mailbox.mbox(str(path), create=False)
    try:
        for i, key in enumerate(box.iterkeys(), start=1):
            data = box.get_bytes(key)
            where = f"{path}#{i}"
            yield FileMessage(where, data) if looks_like_mail(data) else FileProblem(where, "not a mail message")
    finally:
        box.close()


def _maildir(path: Path) -> Iterator[FileMessage | FileProblem]:
    box = mailbox.Maildir(str(path), factory=None, create=False)
    for key in sorted(box.iterkeys()):
        try:
            data = box.get_bytes(key)
        except OSError as exc:
            yield FileProblem(f"{path}/{key}", f"cannot read: {exc}")
            continue
        yield FileMessage(f"{path}/{key}", data)


def iter_paths(paths: list[Path]) -> Iterator[FileMessage | FileProblem]:
    for path in paths:
        yield from iter_path(path)
