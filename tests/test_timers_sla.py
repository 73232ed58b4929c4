# SPDX-License-Identifier: MIT
"""SLA targets (SPEC §4 table): due times, missed-target mail, escalation on a miss, holds and DST."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from helpers import Desk, build_mail, mt
from servers import CaptureRelay

from maild.outbound.sender import send_due
from maild.scheduler import tick

REPO = Path(__file__).resolve().parents[1]
ESCALATION = """
[escalation]
levels = { "2" = { "cloud" = ["lead-cloud@example.com"] }, "3" = { "*" = ["head@example.com"] } }
"""


@pytest.fixture
def mail_desk(make_desk: Callable[..., Desk], relay: CaptureRelay) -> Desk:
    """The example desk with a two-level escalation path, delivering to the capture relay."""
    return make_desk(relay=relay, extra=ESCALATION)


def open_case(desk: Desk, opened: datetime, priority: str | None = None, mid: str = "<m1@initech.example>") -> int:
    """Peter opens a case by mail at ``opened``; staff set ``priority`` a minute later."""
    r = desk.ingest(build_mail(date=opened, message_id=mid), now=opened)
    assert r.case is not None
    if priority:
        later = opened.replace(minute=opened.minute + 1).isoformat()
        desk.cli_json("cases", "set", str(r.case), "--priority", priority, "--now", later)
    return r.case


def sent(desk: Desk, relay: CaptureRelay, now: datetime) -> list[tuple[str, str]]:
    """Deliver what is due; every (recipient, subject) the relay has accepted so far."""
    send_due(desk.factory, desk.settings, now)
    return [(m.rcpt_tos[0], str(m.message["Subject"])) for m in relay.messages]


def test_p1_first_response_missed_once_and_escalated(mail_desk: Desk, relay: CaptureRelay) -> None:
    # P1 opened Sunday 03:00 MT (round the clock): due 03:15; 03:14 and 03:15:00 are on time, 03:15:01 is late;
    # the assignee is told once and the level-2 manager for Initech's "cloud" product once.
    n = open_case(mail_desk, mt(2026, 11, 22, 3, 0), "P1")
    assert mail_desk.case(n)["first_response_due"] == "2026-11-22T10:15:00Z"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 22, 3, 14))
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 22, 3, 15))
    assert sent(mail_desk, relay, mt(2026, 11, 22, 3, 15)) == [
        ("peter@initech.example", "[Case #1] We have received your request: Printer on fire")]
    late = mt(2026, 11, 22, 3, 15).replace(second=1)
    for t in (late, late, mt(2026, 11, 22, 3, 30), mt(2026, 11, 22, 9, 0)):
        tick(mail_desk.factory, mail_desk.settings, t)
    assignee = mail_desk.case(n)["assignee"]
    assert sent(mail_desk, relay, mt(2026, 11, 22, 9, 0))[1:] == [
        (assignee, "Target missed: first response on case #1"),
        ("lead-cloud@example.com", "Escalated to level 2: case #1"),
    ]
    case = mail_desk.case(n)
    assert case["escalation_level"] == 2
    assert [e["detail"]["target"] for e in case["events"] if e["kind"] == "sla-missed"] == ["first response"]


def test_update_target_missed_after_staff_reply_escalates_to_next_level(mail_desk: Desk, relay: CaptureRelay) -> None:
    # P2: first response on time, then no update within 2 hours: "update" missed, level 2 -> 3 ("*" managers).
    n = open_case(mail_desk, mt(2026, 11, 23, 9, 0), "P2")
    mail_desk.cli_json("cases", "reply", str(n), "--body", "Looking into it.", "--now", "2026-11-23T09:20")
    assert mail_desk.case(n)["next_update_due"] == "2026-11-23T18:20:00Z"
    mail_desk.cli_json("cases", "set", str(n), "--etr", "2026-11-23T13:00", "--now", "2026-11-23T09:30")
    # The ETR (13:00) replaces the 11:20 update target until it passes.
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 12, 0))
    assert [i.template for i in mail_desk.outbox() if i.template == "sla_missed"] == []
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 13, 5))
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 13, 10))
    assert [i.template for i in mail_desk.outbox()].count("sla_missed") == 1
    assert mail_desk.case(n)["escalation_level"] == 2
    # Staff update; the next one (due 15:15) is missed as well: level 3, told to the "*" managers.
    mail_desk.cli_json("cases", "reply", str(n), "--body", "Still on it.", "--now", "2026-11-23T13:15")
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 15, 16))
    got = sent(mail_desk, relay, mt(2026, 11, 23, 15, 16))
    assert [s for _, s in got if s.startswith(("Target", "Escalated"))] == [
        "Target missed: update on case #1", "Escalated to level 2: case #1",
        "Target missed: update on case #1", "Escalated to level 3: case #1",
    ]
    assert ("head@example.com", "Escalated to level 3: case #1") in got
    assert mail_desk.case(n)["escalation_level"] == 3


def test_p4_opened_friday_evening_is_due_monday_evening(mail_desk: Desk) -> None:
    # P4 (business days): opened Friday 18:00 MT, one business day later is Monday 18:00 MT.
    n = open_case(mail_desk, mt(2026, 11, 20, 18, 0))
    assert mail_desk.case(n)["first_response_due"] == "2026-11-24T01:00:00Z"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 18, 0))
    assert "sla_missed" not in [i.template for i in mail_desk.outbox()]
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 18, 1))
    assert [i.template for i in mail_desk.outbox()].count("sla_missed") == 1


@pytest.mark.parametrize(("opened", "priority", "due"), [
    # Spring forward (2027-03-14): Friday 10:00 MST + 1 business day = Monday 10:00 MDT (16:00Z, not 17:00Z).
    (mt(2027, 3, 12, 10, 0), None, "2027-03-15T16:00:00Z"),
    # P3, 4 business hours from Friday 15:00 MST: 2 h on Friday, 2 h on Monday -> Monday 10:00 MDT.
    (mt(2027, 3, 12, 15, 0), "P3", "2027-03-15T16:00:00Z"),
    # P1 is elapsed time: Sunday 01:50 MST + 15 min = 02:05 MST, shown as 03:05 MDT (09:05Z).
    (mt(2027, 3, 14, 1, 50), "P1", "2027-03-14T09:05:00Z"),
    # Fall back (2026-11-01): Friday 10:00 MDT + 1 business day = Monday 10:00 MST (17:00Z, not 16:00Z).
    (mt(2026, 10, 30, 10, 0), None, "2026-11-02T17:00:00Z"),
    # P2 across the repeated hour: Sunday 01:45 MDT + 30 min = 01:15 MST (08:15Z).
    (mt(2026, 11, 1, 1, 45), "P2", "2026-11-01T08:15:00Z"),
])  # fmt: skip
def test_due_times_across_dst_keep_wall_clock(mail_desk: Desk, opened: datetime, priority: str | None,
                                              due: str) -> None:
    # Due times across both DST changes are the right wall-clock (business) or elapsed (P1/P2) times.
    n = open_case(mail_desk, opened, priority)
    assert mail_desk.case(n)["first_response_due"] == due


def test_on_hold_returns_to_in_progress_at_its_time(mail_desk: Desk) -> None:
    # On Hold until Monday 09:00: still on hold at 08:59, In Progress at 09:00 ("hold ended"), update clock restarted.
    n = open_case(mail_desk, mt(2026, 11, 20, 9, 0))
    mail_desk.cli_json("cases", "reply", str(n), "--body", "We will check on Monday.", "--now", "2026-11-20T10:00")
    mail_desk.cli_json("cases", "set", str(n), "--status", "on-hold", "--until", "2026-11-23T09:00",
                       "--now", "2026-11-20T11:00")
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 8, 59))
    assert mail_desk.case(n)["status"] == "on-hold"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 23, 9, 0))
    case = mail_desk.case(n)
    assert (case["status"], case["hold_until"]) == ("in-progress", None)
    ended = [e for e in case["events"] if e["from_status"] == "on-hold"]
    assert [(e["to_status"], e["actor"], e["at"], e["detail"]["reason"]) for e in ended] == [
        ("in-progress", "maild", "2026-11-23T16:00:00Z", "hold ended")]
    # 2 business days from the end of the hold (the update due Tuesday 10:00 was paused by it).
    assert case["next_update_due"] == "2026-11-25T16:00:00Z"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 24, 12, 0))
    assert "sla_missed" not in [i.template for i in mail_desk.outbox()]


def test_closed_and_on_hold_cases_have_no_targets(mail_desk: Desk) -> None:
    # A closed case and a case on hold get no missed-target mail, however late.
    a = open_case(mail_desk, mt(2026, 11, 23, 9, 0), "P1")
    b = open_case(mail_desk, mt(2026, 11, 23, 9, 0), "P1", mid="<m2@initech.example>")
    mail_desk.cli_json("cases", "set", str(a), "--status", "closed", "--now", "2026-11-23T09:05")
    mail_desk.cli_json("cases", "set", str(b), "--status", "on-hold", "--until", "2026-12-01T09:00",
                       "--now", "2026-11-23T09:05")
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 24, 9, 0))
    assert "sla_missed" not in [i.template for i in mail_desk.outbox()]
