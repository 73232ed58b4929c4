# SPDX-License-Identifier: MIT
"""The no-response clock (SPEC §4): warning after 2 business days, closure after the grace period."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import Desk, build_mail, mt
from servers import CaptureRelay

from maild import timers
from maild.outbound.sender import send_due
from maild.scheduler import tick

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mail_desk(make_desk: Callable[..., Desk], relay: CaptureRelay) -> Desk:
    """The example desk, delivering to the capture relay."""
    return make_desk(relay=relay)


def open_and_ask(desk: Desk, opened: datetime, asked: str) -> None:
    """Peter opens case 1; Tom answers it asking for something (``--await-customer``)."""
    desk.ingest(build_mail(date=opened), now=opened)
    desk.cli_json("cases", "reply", "1", "--body", "Which printer model is it?", "--await-customer",
                  "--as", "tom@support.example.com", "--now", asked)


def clock_actions(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The actions of the case-clock rules (other subsystems' rules run in the same tick)."""
    return [a for a in actions if a["rule"] in {r.__name__ for r in timers.RULES}]


def templates(desk: Desk) -> list[str]:
    return [i.template for i in desk.outbox()]


def test_warning_after_two_business_days_then_closed_after_grace(mail_desk: Desk, relay: CaptureRelay) -> None:
    # Asked Friday 10:00: no warning on Monday or Tuesday 09:59, warning Tuesday 10:00, closed Wednesday 10:00.
    open_and_ask(mail_desk, mt(2026, 11, 20, 9, 0), "2026-11-20T10:00")
    for t in (mt(2026, 11, 23, 10, 0), mt(2026, 11, 24, 9, 59)):
        tick(mail_desk.factory, mail_desk.settings, t)
    assert "no_response_warning" not in templates(mail_desk)
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 24, 10, 0))
    assert templates(mail_desk).count("no_response_warning") == 1
    case = mail_desk.case(1)
    assert (case["status"], case["no_response_warned_at"]) == ("in-progress", "2026-11-24T17:00:00Z")

    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 25, 9, 59))
    assert mail_desk.case(1)["status"] == "in-progress"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 25, 10, 0))
    case = mail_desk.case(1)
    assert (case["status"], case["closed_at"]) == ("closed-no-response", "2026-11-25T17:00:00Z")
    assert [e["detail"].get("reason") for e in case["events"] if e["to_status"] == "closed-no-response"] == [
        "no answer from the customer after the warning"]

    send_due(mail_desk.factory, mail_desk.settings, mt(2026, 11, 25, 10, 1))
    got = [(m.rcpt_tos, str(m.message["Subject"])) for m in relay.messages]
    assert [g for g in got if "reply" in g[1] or "closed" in g[1]] == [
        (("peter@initech.example",), "[Case #1] Waiting for your reply: Printer on fire"),
        (("peter@initech.example",), "[Case #1] Case closed: Printer on fire"),
    ]
    warning = next(m for m in relay.messages if "Waiting for your reply" in str(m.message["Subject"]))
    body = warning.message.get_body(("plain",))
    assert body is not None and "Wed 2026-11-25 10:00 MST" in body.get_content()


def test_thanksgiving_moves_the_warning_to_monday(mail_desk: Desk) -> None:
    # Asked Wednesday 2026-11-25 10:00; Thursday 11-26 is Thanksgiving (a US federal holiday), Friday 11-27 is
    # a business day (not federal), so 2 business days = Friday + Monday: warning Monday 11-30 10:00, and
    # 1 business day of grace closes it Tuesday 12-01 10:00.
    open_and_ask(mail_desk, mt(2026, 11, 25, 9, 0), "2026-11-25T10:00")
    for t in (mt(2026, 11, 27, 10, 0), mt(2026, 11, 29, 12, 0), mt(2026, 11, 30, 9, 59)):
        tick(mail_desk.factory, mail_desk.settings, t)
    assert "no_response_warning" not in templates(mail_desk)
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 30, 10, 0))
    assert mail_desk.case(1)["no_response_warned_at"] == "2026-11-30T17:00:00Z"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 12, 1, 9, 59))
    assert mail_desk.case(1)["status"] == "in-progress"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 12, 1, 10, 0))
    assert mail_desk.case(1)["closed_at"] == "2026-12-01T17:00:00Z"
    assert templates(mail_desk).count("closed_no_response") == 1


def test_customer_reply_on_monday_stops_the_clock(mail_desk: Desk) -> None:
    # Peter answers on Monday: no warning on Tuesday, no closure later; the case stays open.
    open_and_ask(mail_desk, mt(2026, 11, 20, 9, 0), "2026-11-20T10:00")
    r = mail_desk.ingest(build_mail(subject="Re: [Case #1] Printer on fire", body="It is an HP 4050.\n",
                                    message_id="<answer@initech.example>", date=mt(2026, 11, 23, 12, 0)),
                         now=mt(2026, 11, 23, 12, 0))
    assert (r.outcome.value, r.case) == ("threaded", 1)
    assert mail_desk.case(1)["awaiting_customer_since"] is None
    for t in (mt(2026, 11, 24, 10, 0), mt(2026, 11, 25, 10, 0), mt(2026, 12, 2, 10, 0)):
        tick(mail_desk.factory, mail_desk.settings, t)
    assert "no_response_warning" not in templates(mail_desk)
    assert mail_desk.case(1)["status"] == "in-progress"


def test_resolved_follow_up_required_runs_the_same_clock(mail_desk: Desk) -> None:
    # Staff mark the case resolved (follow-up required) on Friday: the same warning and closure follow.
    mail_desk.ingest(build_mail(date=mt(2026, 11, 20, 9, 0)), now=mt(2026, 11, 20, 9, 0))
    mail_desk.cli_json("cases", "set", "1", "--status", "resolved-follow-up-required", "--now", "2026-11-20T10:00")
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 24, 10, 0))
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 25, 10, 0))
    assert mail_desk.case(1)["status"] == "closed-no-response"
    assert templates(mail_desk).count("no_response_warning") == 1
    assert templates(mail_desk).count("closed_no_response") == 1


def test_late_tick_after_both_due_times_warns_now_and_restarts_the_grace(mail_desk: Desk) -> None:
    # maild was down from Monday to Friday 11-27 12:00: the first tick warns (never warns and closes at once),
    # and the grace period of 1 business day runs from that tick: closed Monday 11-30 12:00.
    open_and_ask(mail_desk, mt(2026, 11, 20, 9, 0), "2026-11-20T10:00")
    late = mt(2026, 11, 27, 12, 0)
    actions = clock_actions(tick(mail_desk.factory, mail_desk.settings, late))
    assert [a["action"] for a in actions] == ["no-response-warning"]
    assert actions[0]["close_at"] == "2026-11-30T19:00:00+00:00"
    assert mail_desk.case(1)["status"] == "in-progress"
    assert clock_actions(tick(mail_desk.factory, mail_desk.settings, late)) == []
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 30, 11, 59))
    assert mail_desk.case(1)["status"] == "in-progress"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 30, 12, 0))
    assert mail_desk.case(1)["status"] == "closed-no-response"


def test_late_tick_inside_the_grace_keeps_the_due_times(mail_desk: Desk) -> None:
    # A tick late by hours, still inside the grace period, dates the warning at its due time (Tuesday 10:00):
    # the case closes Wednesday 10:00 as if every tick had been on time.
    open_and_ask(mail_desk, mt(2026, 11, 20, 9, 0), "2026-11-20T10:00")
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 24, 15, 0))
    assert mail_desk.case(1)["no_response_warned_at"] == "2026-11-24T17:00:00Z"
    tick(mail_desk.factory, mail_desk.settings, mt(2026, 11, 25, 10, 0))
    assert mail_desk.case(1)["closed_at"] == "2026-11-25T17:00:00Z"


def test_ticking_twice_at_one_instant_sends_nothing_twice(mail_desk: Desk, relay: CaptureRelay) -> None:
    # The same instant ticked twice (or by two processes) queues each mail once.
    open_and_ask(mail_desk, mt(2026, 11, 20, 9, 0), "2026-11-20T10:00")
    for t in (mt(2026, 11, 24, 10, 0), mt(2026, 11, 24, 10, 0), mt(2026, 11, 25, 10, 0), mt(2026, 11, 25, 10, 0)):
        tick(mail_desk.factory, mail_desk.settings, t)
    send_due(mail_desk.factory, mail_desk.settings, mt(2026, 11, 25, 10, 1))
    subjects = [str(m.message["Subject"]) for m in relay.messages]
    assert sum("Waiting for your reply" in s for s in subjects) == 1
    assert sum("Case closed" in s for s in subjects) == 1
