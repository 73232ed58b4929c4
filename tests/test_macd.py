# SPDX-License-Identifier: MIT
"""MACD requests (SPEC §5): MPOC approval by mail, expedited clocks, and billing in started quarter hours."""

from __future__ import annotations

import pytest
from helpers import Desk, build_mail, mt

from maild.macd import approves


def _approval_request(desk: Desk) -> str:
    (item,) = [i for i in desk.outbox() if i.template == "macd_approval_request"]
    assert item.to_addr == "peter@initech.example"
    return f"<{item.message_id}>"


def test_non_mpoc_macd_request_waits_for_mpoc_approval(desk: Desk) -> None:
    # Milton (technical contact) asks macd@ for a change: no case yet; Peter (MPOC) is asked; Milton is told.
    r = desk.ingest(build_mail(sender="Milton <milton@initech.example>", to="macd@example.com",
                               subject="Add a phone for the new hire", message_id="<macd1@initech.example>"),
                    rcpt=("macd@example.com",))
    assert r.outcome.value == "held" and "macd-awaiting-approval" in r.reason
    assert desk.cases() == []
    _approval_request(desk)
    assert [i.to_addr for i in desk.outbox() if i.template == "macd_awaiting_approval"] == ["milton@initech.example"]
    assert not [i for i in desk.outbox() if i.template == "unauthorised_sender"]


def test_mpoc_reply_approve_opens_the_macd_case_for_the_requester(desk: Desk) -> None:
    # Peter answers "Approved." to the approval request: a MACD case for Milton, with the approval recorded.
    desk.ingest(build_mail(sender="Milton <milton@initech.example>", to="macd@example.com",
                           subject="Add a phone", message_id="<macd2@initech.example>"), rcpt=("macd@example.com",))
    mid = _approval_request(desk)
    r = desk.ingest(build_mail(subject="Re: Approval needed: Add a phone", body="Approved.\n\nPeter\n",
                               message_id="<ok@initech.example>", in_reply_to=mid, references=mid))
    assert (r.outcome.value, r.case) == ("new-case", 1)
    case = desk.case(1)
    assert (case["kind"], case["requester"], case["priority"]) == ("macd", "milton@initech.example", "P4")
    assert any(e["kind"] == "macd-approved" and e["actor"] == "peter@initech.example" for e in case["events"])
    assert [i.to_addr for i in desk.outbox() if i.template == "ack_new_case"] == ["milton@initech.example"]
    assert desk.cli_json("held", "list", "--json") == []


def test_reply_without_approval_or_from_non_mpoc_opens_nothing(desk: Desk) -> None:
    # A question back from the MPOC does not approve; Milton cannot approve his own request.
    desk.ingest(build_mail(sender="milton@initech.example", to="macd@example.com", subject="Add a phone",
                           message_id="<macd3@initech.example>"), rcpt=("macd@example.com",))
    mid = _approval_request(desk)
    r = desk.ingest(build_mail(body="Which floor is this for?\n", message_id="<q@i>", in_reply_to=mid))
    assert r.outcome.value == "ignored" and desk.cases() == []
    r2 = desk.ingest(build_mail(sender="milton@initech.example", body="approve\n", message_id="<self@i>",
                                in_reply_to=mid))
    assert r2.outcome.value != "new-case" or r2.case is None or desk.case(r2.case)["kind"] != "macd"
    assert len(desk.cli_json("held", "list", "--json")) >= 1


@pytest.mark.parametrize("text,expected", [
    ("Approved.", True), ("approve", True), ("Yes, approved!", True), ("I approve", True), ("Genehmigt", True),
    ("Aprovado.", True), ("Not approved", False), ("Can you approve later?", False), ("", False),
    ("\n\nAPPROVED\n> quoted", True),
])
def test_approval_words(text: str, expected: bool) -> None:
    # Only a first line that says approve (en/de/pt) approves.
    assert approves(text) is expected


def test_time_logging_bills_started_quarter_hours(sqlite_desk: Desk) -> None:
    # 50 + 11 minutes = 61 minutes -> 5 started quarter hours -> 125.00 USD, shown on the case.
    sqlite_desk.ingest(build_mail(to="macd@example.com", message_id="<m@i>"), rcpt=("macd@example.com",))
    sqlite_desk.cli_json("cases", "log-time", "1", "--minutes", "50", "--as", "tom@support.example.com")
    out = sqlite_desk.cli_json("cases", "log-time", "1", "--minutes", "11")
    assert out == {"case": 1, "minutes": 61, "quarter_hours": 5, "amount_usd": "125.00"}
    assert sqlite_desk.case(1)["billing"]["amount_usd"] == "125.00"
    code, _, err = sqlite_desk.cli("cases", "log-time", "1", "--minutes", "0")
    assert code == 1 and "--minutes" in err


def test_expedited_macd_first_response_is_four_hours(sqlite_desk: Desk) -> None:
    # A standard MACD request on Saturday counts from Monday 07:00; expedited, 4 hours from receipt.
    sqlite_desk.ingest(build_mail(to="macd@example.com", message_id="<e@i>"), rcpt=("macd@example.com",),
                       now=mt(2026, 11, 21, 10, 0))
    assert sqlite_desk.case(1)["first_response_due"] == "2026-11-24T14:00:00Z"  # Tue 07:00 MST
    out = sqlite_desk.cli_json("cases", "set", "1", "--expedited", "yes", "--now", "2026-11-21T10:05")
    assert out["first_response_due"] == "2026-11-21T21:00:00Z"  # Sat 14:00 MST
    sqlite_desk.ingest(build_mail(message_id="<t@i>", subject="tech"))
    code, _, err = sqlite_desk.cli("cases", "set", "2", "--expedited", "yes")
    assert code == 1 and "not a MACD request" in err


def test_staff_escalate_command(sqlite_desk: Desk) -> None:
    # `maild cases escalate` raises the level and says who was told.
    sqlite_desk.ingest(build_mail())
    out = sqlite_desk.cli_json("cases", "escalate", "1", "--reason", "customer called", "--now", "2026-11-20T12:00")
    assert out["escalation_level"] == 2 and out["escalation"]["level"] == 2
