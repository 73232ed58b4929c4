# SPDX-License-Identifier: MIT
"""The intake sequence (being written by the lead; interface is stable)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.enums import Outcome
from maild.ingest.raw import RawMail


@dataclass(frozen=True)
class IngestResult:
    message_id: str
    outcome: Outcome
    case: int | None
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"message_id": self.message_id, "outcome": self.outcome.value, "case": self.case,
                "reason": self.reason}


def ingest(session: Session, raw: RawMail, *, now: datetime, settings: Settings) -> IngestResult:
    raise NotImplementedError


def run_ingest(factory: sessionmaker[Session], settings: Settings, raw: RawMail,
               now: datetime | None = None) -> IngestResult:
    """One message in its own transaction; returns only after the commit (or raises)."""
    raise NotImplementedError
