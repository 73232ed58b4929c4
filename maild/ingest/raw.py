# SPDX-License-Identifier: MIT
"""RawMail: one message exactly as it reached maild, before anything reads it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maild.ingest.bigmail import Whole
    from maild.ingest.spool import Spool
    from maild.models import RawMessage


@dataclass(frozen=True)
class RawMail:
    """The bytes of a message and how they arrived.

    ``source`` is ``smtp``, ``imap`` or ``file``; ``source_key`` identifies the copy at its source
    (for IMAP ``account/mailbox/UIDVALIDITY/UID``, for files the path and index) so that the same
    copy fetched twice is recognised (RELIABILITY rule 2).
    """

    data: bytes
    source: str = "file"
    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    peer: str | None = None
    helo: str | None = None
    tls: bool = False
    source_key: str | None = None
    received_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # A large message the listener spooled to a file: ``data`` is empty and only the SMTP queue's
    # insert reads the bytes, in chunks (``maild.ingest.queue``). Anything else calls ``loaded()``.
    spool: Spool | None = None
    # A large stored message read as a skeleton (``maild.ingest.bigmail``): ``data`` is the message
    # without its big attachments, ``whole`` says what was left out, and ``digests`` are the stored
    # message's (sha256, envelope key), which the skeleton's bytes would not give.
    whole: Whole | None = None
    digests: tuple[str, str] | None = None

    @property
    def size(self) -> int:
        """The size of the message as received."""
        if self.whole is not None:
            return self.whole.size
        return self.spool.size if self.spool is not None else len(self.data)

    def loaded(self) -> RawMail:
        """This message with its bytes in ``data`` (a copy read from the spool, when spooled)."""
        if self.spool is None:
            return self
        return replace(self, data=self.spool.getvalue(), spool=None)

    @property
    def sha256(self) -> str:
        return self._digests[0]

    @property
    def envelope_key(self) -> str:
        """Content hash plus envelope: the idempotency key of an SMTP or file receipt."""
        return self._digests[1]

    @cached_property
    def _digests(self) -> tuple[str, str]:
        if self.digests is not None:
            return self.digests
        # One pass over the bytes for both, once per message (a 25 MB message costs ~40 ms a pass);
        # a spooled message was hashed as it arrived.
        h = self.spool.hash.copy() if self.spool is not None else hashlib.sha256(self.data)
        content = h.hexdigest()
        h.update(b"\0" + (self.mail_from or "").lower().encode("utf-8", "replace"))
        for rcpt in sorted(r.lower() for r in self.rcpt_tos):
            h.update(b"\0" + rcpt.encode("utf-8", "replace"))
        return content, h.hexdigest()


def from_stored(row: RawMessage, data: bytes | None = None) -> RawMail:
    """The message as it was received, read back from its ``raw_messages`` row (``data``: its bytes,
    when the row was loaded without them). Its digests are the row's: nothing hashes it again."""
    return RawMail(data=row.data if data is None else data, source=row.source, mail_from=row.mail_from,
                   rcpt_tos=tuple(row.rcpt_tos), peer=row.peer, helo=row.helo, tls=row.tls,
                   source_key=row.source_key, received_at=row.received_at,
                   digests=(row.sha256, row.envelope_key))
