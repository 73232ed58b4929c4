# SPDX-License-Identifier: MIT
"""A simulated week of ticks: every mail the case clocks promise reaches the relay exactly once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers import Desk, build_mail, mt
from servers import CaptureRelay

from maild.outbound.sender import send_due
from maild.scheduler import tick

REPO = Path(__file__).resolve().parents[1]
ESCALATION = """
[escalation]
levels = { "2" = { "cloud" = ["lead-cloud@example.com"], "cisco" = ["lead-cisco@example.com"] }, \
"3" = { "*" = ["head@example.com"] } }
"""
PETER, ANNA, PAULA = "Peter <peter@initech.example>", "Anna <anna@acme.example>", "Paula <paula@globex.example>"


@pytest.fixture
def mail_desk(make_desk: Callable[..., Desk], relay: CaptureRelay) -> Desk:
    """The example desk with an escalation path, delivering to the capture relay."""
    return make_desk(relay=relay, extra=ESCALATION)


def script(desk: Desk) -> list[tuple[datetime, Callable[[], object]]]:
    """What customers and staff do during the week of Monday 2026-11-16, in time order."""
    def mail(at: datetime, sender: str, subject: str, mid: str, body: str = "Broken.\n") -> Callable[[], object]:
        return lambda: desk.ingest(build_mail(sender=sender, subject=subject, message_id=mid, body=body, date=at),
                                   now=at)

    def cli(*args: str) -> Callable[[], object]:
        return lambda: desk.cli_json(*args)

    return [
        # Case 1 (Peter, P4): asked something Monday 10:00, silent: warned Wednesday 10:00, closed Thursday 10:00.
        (mt(2026, 11, 16, 9, 0), mail(mt(2026, 11, 16, 9, 0), PETER, "Printer on fire", "<a@initech.example>")),
        # Case 2 (Anna, P1): first response 09:45 missed (told, level 2), then updates on time, closed at 11:30.
        (mt(2026, 11, 16, 9, 30), mail(mt(2026, 11, 16, 9, 30), ANNA, "Telefonie gestört", "<b@acme.example>")),
        (mt(2026, 11, 16, 9, 31), cli("cases", "set", "2", "--priority", "P1", "--now", "2026-11-16T09:31")),
        (mt(2026, 11, 16, 10, 0), cli("cases", "reply", "1", "--body", "Which model?", "--await-customer",
                                      "--now", "2026-11-16T10:00")),
        (mt(2026, 11, 16, 10, 0), cli("cases", "reply", "2", "--body", "Wir prüfen.", "--now", "2026-11-16T10:00")),
        (mt(2026, 11, 16, 10, 50), cli("cases", "reply", "2", "--body", "Behoben?", "--now", "2026-11-16T10:50")),
        (mt(2026, 11, 16, 11, 30), cli("cases", "set", "2", "--status", "closed", "--now", "2026-11-16T11:30")),
        # Case 3 (Paula): put on hold before any answer until Thursday 09:00; the first response is due one
        # business day after the hold ends (Friday 09:00) and is missed.
        (mt(2026, 11, 17, 14, 0), mail(mt(2026, 11, 17, 14, 0), PAULA, "Telefone mudo", "<c@globex.example>")),
        (mt(2026, 11, 17, 14, 10), cli("cases", "set", "3", "--status", "on-hold", "--until", "2026-11-19T09:00",
                                       "--now", "2026-11-17T14:10")),
        # Case 4 (Peter): escalated by mail on Wednesday (level 2), first response missed Thursday 09:00 (level 3).
        (mt(2026, 11, 18, 9, 0), mail(mt(2026, 11, 18, 9, 0), PETER, "Teams down", "<d@initech.example>")),
        (mt(2026, 11, 18, 11, 0), mail(mt(2026, 11, 18, 11, 0), PETER, "Re: [Case #4] Teams down",
                                       "<d2@initech.example>", "Please escalate this!\n")),
    ]


def test_a_week_of_ticks_sends_each_promised_mail_once(mail_desk: Desk, relay: CaptureRelay) -> None:
    # Ticks every 10 minutes (twice on the hour) from Monday to Monday, delivering hourly to the relay.
    steps = script(mail_desk)
    t, end = mt(2026, 11, 16, 0, 0), mt(2026, 11, 23, 0, 0)
    while t <= end:
        while steps and steps[0][0] <= t:
            steps.pop(0)[1]()
        tick(mail_desk.factory, mail_desk.settings, t)
        if t.minute == 0:
            tick(mail_desk.factory, mail_desk.settings, t)
            send_due(mail_desk.factory, mail_desk.settings, t)
        t += timedelta(minutes=10)

    template_of = {i.message_id.strip("<>"): i.template for i in mail_desk.outbox()}
    ids = [str(m.message["Message-ID"]).strip("<>") for m in relay.messages]
    assert len(ids) == len(set(ids)) == len(template_of)  # every row delivered, none twice
    got = Counter((m.rcpt_tos[0], template_of[mid]) for m, mid in zip(relay.messages, ids, strict=True))
    a2, a3, a4 = (mail_desk.case(n)["assignee"] for n in (2, 3, 4))
    expected = Counter([
        ("peter@initech.example", "ack_new_case"), ("peter@initech.example", "staff_reply"),
        ("peter@initech.example", "no_response_warning"), ("peter@initech.example", "closed_no_response"),
        ("anna@acme.example", "ack_new_case"), *[("anna@acme.example", "staff_reply")] * 2,
        (a2, "sla_missed"), ("lead-cloud@example.com", "escalation"),
        ("paula@globex.example", "ack_new_case"), (a3, "sla_missed"), ("lead-cisco@example.com", "escalation"),
        ("peter@initech.example", "ack_new_case"), ("lead-cloud@example.com", "escalation"), (a4, "escalation"),
        (a4, "sla_missed"), ("head@example.com", "escalation"),
    ])  # fmt: skip
    assert got == expected
    cases = {c["number"]: c for c in mail_desk.cases()}
    assert [(cases[n]["status"], cases[n]["escalation_level"]) for n in (1, 2, 3, 4)] == [
        ("closed-no-response", 1), ("closed", 2), ("in-progress", 2), ("new", 3)]
    assert cases[1]["closed_at"] == "2026-11-19T17:00:00Z"  # Thursday 10:00 MST
    assert cases[3]["first_response_due"] == "2026-11-20T16:00:00Z"  # Friday 09:00 MST, one day after the hold


def test_tick_command_prints_one_json_line_per_action(mail_desk: Desk) -> None:
    # `maild tick --now T` runs the case clocks once as of T; a second run at T does nothing more.
    mail_desk.ingest(build_mail(date=mt(2026, 11, 20, 9, 0)), now=mt(2026, 11, 20, 9, 0))
    mail_desk.cli_json("cases", "reply", "1", "--body", "Which model?", "--await-customer", "--now", "2026-11-20T10:00")
    code, out, err = mail_desk.cli("tick", "--now", "2026-11-24T10:00")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert {"rule": "no_response", "action": "no-response-warning", "case": 1, "at": "2026-11-24T17:00:00+00:00",
            "close_at": "2026-11-25T17:00:00+00:00"} in lines
    code, out, err = mail_desk.cli("tick", "--now", "2026-11-24T10:00")
    assert code == 0 and not [line for line in out.splitlines() if '"rule": "no_response"' in line]
