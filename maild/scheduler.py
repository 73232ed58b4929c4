# SPDX-License-Identifier: MIT
"""The scheduler step: every time-driven rule, run once for a given instant (SPEC §8).

``RULES`` is a tuple of uniform functions ``rule(session, settings, now) -> list[action dict]``.
``tick`` runs each rule in its own transaction, so one failing rule never blocks the others (its
error is reported as an action) and a crash mid-tick loses at most the rule in flight. Every rule is
idempotent for a given ``now``: the mail it queues carries a dedupe key or the rule records a Mark in
the same transaction, so ticking twice at one instant, or again after a crash, never sends twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.db import transaction
from maild.models import Mark

log = logging.getLogger(__name__)

Action = dict[str, Any]
Rule = Callable[[Session, Settings, datetime], list[Action]]


def mark_once(session: Session, key: str, now: datetime) -> bool:
    """Record that ``key`` was done; False if it already was (the caller then does nothing)."""
    if session.get(Mark, key) is not None:
        return False
    session.add(Mark(key=key, at=now))
    return True


def rules() -> tuple[Rule, ...]:
    """The rules, imported here so that each subsystem owns its own module."""
    from maild import invoices, maintenance, timers
    from maild.ingest import imap, queue_run

    return (*timers.RULES, *maintenance.RULES, *invoices.RULES, *imap.RULES, *queue_run.RULES)


def tick(factory: sessionmaker[Session], settings: Settings, now: datetime) -> list[Action]:
    actions: list[Action] = []
    for rule in rules():
        name = getattr(rule, "__name__", repr(rule))
        try:
            with transaction(factory) as session:
                done = rule(session, settings, now)
        except IntegrityError:  # another maild process did the same work at the same instant
            log.info("rule %s: already done elsewhere", name)
            continue
        except Exception as exc:
            log.exception("rule %s failed", name)
            actions.append({"rule": name, "action": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        actions.extend({"rule": name, **a} for a in done)
    return actions
