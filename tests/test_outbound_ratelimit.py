# SPDX-License-Identifier: MIT
"""Tests for maild.outbound.ratelimit: per-recipient caps on acknowledgements and polite replies."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session, sessionmaker

import maild.db
from maild.config import IntakeSettings, SecuritySettings, Settings
from maild.models import Case, OutboxItem
from maild.outbound import queue_mail
from maild.outbound.ratelimit import ACK_TEMPLATES, MPOC_NOTICE, UNAUTHORISED, allow_automatic

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


def three_counts(s: Session, to: str, template: str, now: datetime, case_id: int | None) -> bool:
    """The caps as separate COUNTs, the way allow_automatic asked them before it used one SELECT."""

    def n(templates: Collection[str], since: datetime | None, case: int | None = None) -> int:
        stmt = select(func.count(OutboxItem.id)).where(OutboxItem.to_addr == to, OutboxItem.template.in_(templates))
        if since is not None:
            stmt = stmt.where(OutboxItem.created_at > since)
        if case is not None:
            stmt = stmt.where(OutboxItem.case_id == case)
        return s.scalar(stmt) or 0

    i, hour, day = SETTINGS.intake, timedelta(hours=1), timedelta(days=1)
    if template in ACK_TEMPLATES:
        if case_id is not None and n({template}, None, case_id) >= 1:
            return False
        return n(ACK_TEMPLATES, now - hour) < i.ack_per_sender_per_hour and n(ACK_TEMPLATES, now - day) < (
            i.ack_per_sender_per_day)
    if template == UNAUTHORISED:
        return n({UNAUTHORISED}, now - day) < i.unauthorised_reply_per_day
    if template == MPOC_NOTICE:
        return n({MPOC_NOTICE}, now - hour) < i.ack_per_sender_per_hour and n({MPOC_NOTICE}, now - day) < (
            i.ack_per_sender_per_day)
    return True


def test_one_select_gives_the_answers_of_the_separate_counts(factory: sessionmaker[Session]) -> None:
    # Over random outboxes around the caps (3 addresses, every capped template, 3 cases, rows on the hour
    # and day edges), the one conditional-aggregate SELECT answers exactly as the separate COUNTs did.
    people, cases = ["a@x.example", "b@x.example", "c@x.example"], [1, 2, 3]
    templates = [*sorted(ACK_TEMPLATES), UNAUTHORISED, MPOC_NOTICE, "staff_reply"]
    answers: list[bool] = []
    with maild.db.transaction(factory) as s:
        s.add_all(Case(id=c, subject="x", requester=people[0], created_at=NOW, updated_at=NOW) for c in cases)
        statements: list[str] = []
        event.listen(s.get_bind(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        for seed in range(12):
            rnd = random.Random(seed)
            s.execute(delete(OutboxItem))
            for n in range(6 + 3 * seed):
                at = NOW - timedelta(minutes=rnd.choice([0, 60, 60, 61, 1439, 1440, 1440, 1441, 3000]))
                s.add(OutboxItem(case_id=rnd.choice([None, *cases]), template=rnd.choice(templates), from_addr="s@x",
                                 to_addr=rnd.choice(people), subject="x", message_id=f"m{n}@x", data=b"x",
                                 created_at=at, next_attempt_at=at, expires_at=at))  # fmt: skip
            s.flush()
            for to, template, case_id, now in itertools.product(
                people, templates, [None, *cases], (NOW, NOW + timedelta(minutes=30), NOW + timedelta(days=1))
            ):
                statements.clear()
                allowed = allow_automatic(s, SETTINGS, to.upper(), template, now, case_id)
                assert len(statements) == (template != "staff_reply")  # one SELECT; none when not capped
                assert allowed == three_counts(s, to, template, now, case_id), (seed, to, template, case_id, now)
                answers.append(allowed)
    assert 0.2 < sum(answers) / len(answers) < 0.9  # both answers, often: the comparison can fail
