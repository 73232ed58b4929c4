# SPDX-License-Identifier: MIT
"""Tests for maild.outbound.ratelimit: per-recipient caps on acknowledgements and polite replies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import maild.db
from maild.config import IntakeSettings, SecuritySettings, Settings
from maild.models import Case, OutboxItem
from maild.outbound import queue_mail
from maild.outbound.ratelimit import allow_automatic

NOW = datetime(2026, 11, 20, 17, 0, tzinfo=UTC)
SETTINGS = Settings(
    security=SecuritySettings(secret="test-secret"),
    intake=IntakeSettings(ack_per_sender_per_hour=3, ack_per_sender_per_day=5, unauthorised_reply_per_day=1),
)
BOT = "vacation-bot@acme.example"


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, factory = maild.db.open_store(f"sqlite:///{tmp_path}/t.db")
    yield factory
    engine.dispose()


def new_case(s: Session, at: datetime) -> Case:
    case = Case(subject="Out of office", requester=BOT, created_at=at, updated_at=at)
    s.add(case)
    s.flush()
    return case


def ack(s: Session, at: datetime) -> int:
    """Open a case for the bot and try to acknowledge it; returns the rows queued."""
    case = new_case(s, at)
    return len(queue_mail(s, SETTINGS, template="ack_new_case", locale="en", to=[("", BOT)], context={},
                          now=at, case=case))  # fmt: skip


def count(s: Session, template: str) -> int:
    return s.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.template == template)) or 0


def test_acks_to_one_sender_stop_at_the_hourly_and_daily_caps(factory: sessionmaker[Session]) -> None:
    # L3: a bot opening a case every minute gets 3 acks an hour and 5 a day, however long it goes on.
    with maild.db.transaction(factory) as s:
        sent = [ack(s, NOW + timedelta(minutes=m)) for m in range(60)]
        assert sum(sent) == 3
        sent_later = [ack(s, NOW + timedelta(hours=h, minutes=1)) for h in range(1, 24)]
        assert sum(sent_later) == 2  # 5 a day in all
        assert count(s, "ack_new_case") == 5
        assert ack(s, NOW + timedelta(days=1, minutes=2)) == 1  # a new day, a new allowance


def test_one_ack_of_a_kind_per_case_and_sender(factory: sessionmaker[Session]) -> None:
    # The same case never acknowledges the same sender twice with the same kind of ack.
    with maild.db.transaction(factory) as s:
        case = new_case(s, NOW)
        assert allow_automatic(s, SETTINGS, BOT, "ack_reopened", NOW, case.id)
        queue_mail(s, SETTINGS, template="ack_reopened", locale="en", to=[("", BOT)], context={}, now=NOW, case=case)
        assert not allow_automatic(s, SETTINGS, BOT.upper(), "ack_reopened", NOW + timedelta(days=3), case.id)
        assert allow_automatic(s, SETTINGS, "other@acme.example", "ack_reopened", NOW, case.id)


def test_unauthorised_sender_gets_one_polite_reply_a_day(factory: sessionmaker[Session]) -> None:
    # SPEC §2: the "go through your MPOC" reply is rate-limited (1 a day by default).
    ctx = {"held_subject": "hello"}
    with maild.db.transaction(factory) as s:
        for minute in range(5):
            queue_mail(s, SETTINGS, template="unauthorised_sender", locale="en", to=[("", "eve@x.example")],
                       context=ctx, now=NOW + timedelta(minutes=minute))  # fmt: skip
        assert count(s, "unauthorised_sender") == 1
        queue_mail(s, SETTINGS, template="unauthorised_sender", locale="en", to=[("", "eve@x.example")],
                   context=ctx, now=NOW + timedelta(days=1, minutes=1))  # fmt: skip
        assert count(s, "unauthorised_sender") == 2


def test_other_mail_is_not_capped(factory: sessionmaker[Session]) -> None:
    # Notices and staff replies are not acknowledgements: no cap applies to them.
    with maild.db.transaction(factory) as s:
        assert all(allow_automatic(s, SETTINGS, BOT, "no_response_warning", NOW, None) for _ in range(10))
