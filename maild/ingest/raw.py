# SPDX-License-Identifier: MIT
"""RawMail: one message exactly as it reached maild, before anything reads it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime


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

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def envelope_key(self) -> str:
        """Content hash plus envelope: the idempotency key of an SMTP or file receipt."""
        h = hashlib.sha256(self.data)
        h.update(b"\0" + (self.mail_from or "").lower().encode("utf-8", "replace"))
        for rcpt in sorted(r.lower() for r in self.rcpt_tos):
            h.update(b"\0" + rcpt.encode("utf-8", "replace"))
        return h.hexdigest()
