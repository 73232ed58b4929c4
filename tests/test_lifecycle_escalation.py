# SPDX-License-Identifier: MIT
"""Customer escalation by mail and staff escalation from the CLI (SPEC §4 escalation path)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Desk, build_mail, mt
from servers import CaptureRelay

from maild.escalation import cmd_cases_escalate, wants_escalation
from maild.outbound.sender import send_due

REPO = Path(__file__).resolve().parents[1]
ESCALATION = """
[escalation]
levels = { "2" = { "cloud" = ["lead-cloud@example.com"], "cisco" = ["lead-cisco@example.com"] }, \
"3" = { "*" = ["head@example.com"] }, "4" = { "*" = ["cto@example.com"] } }
"""


@pytest.fixture
def mail_desk(make_desk: Callable[..., Desk], relay: CaptureRelay) -> Desk:
    """The example desk with a three-level escalation path, delivering to the capture relay."""
    return make_desk(relay=relay, extra=ESCALATION)


@pytest.mark.parametrize("text", [
    "Please escalate this!", "escalate", "ESCALATE NOW.", "Could you please escalate this case?",
    "\n\n  Kindly escalate this ticket asap\nThe outage is hurting us.", "Escalation, please",
    "Bitte eskalieren", "Bitte eskalieren Sie diesen Fall.", "Eskalation", "Bitte den Fall eskalieren!",
    "Können Sie das bitte eskalieren?", "Por favor escalar", "Por favor, escalem este caso.", "Escalar",
    "escalonar", "Favor escalonar este chamado",
])  # fmt: skip
def test_first_line_asking_to_escalate_is_recognised(text: str) -> None:
    # Short imperative requests to escalate, in English, German and Portuguese, on the first non-empty line.
    assert wants_escalation(text)


@pytest.mark.parametrize("text", [
    "Please do not escalate this", "Don't escalate", "The issue escalated overnight.", "Eskalation ist nicht nötig",
    "Bitte nicht eskalieren", "Não escalar", "Hi team,\nplease escalate this", "Thanks, no need to escalate.",
    "We may need to escalate this if it is not fixed by Friday", "", "Printer still broken.\nEscalate!",
])  # fmt: skip
def test_other_text_is_not_an_escalation(text: str) -> None:
    # Negations, narration, a greeting first, or the request on a later line: no escalation.
    assert not wants_escalation(text)


def test_customer_mail_please_escalate_raises_level_and_tells_managers(mail_desk: Desk, relay: CaptureRelay) -> None:
    # "Please escalate this!" as the first line of a reply: level 1 -> 2; Initech's cloud manager and the
    # assignee are told, with Initech's escalation contacts listed (none in the example directory).
    mail_desk.ingest(build_mail(date=mt(2026, 11, 20, 9, 0)), now=mt(2026, 11, 20, 9, 0))
    r = mail_desk.ingest(build_mail(subject="Re: [Case #1] Printer on fire", message_id="<esc@initech.example>",
                                    body="Please escalate this!\n\nIt has been on fire for a day.\n"),
                         now=mt(2026, 11, 20, 15, 0))
    assert (r.outcome.value, r.case) == ("threaded", 1)
    case = mail_desk.case(1)
    assert case["escalation_level"] == 2
    events = [e for e in case["events"] if e["kind"] == "escalation"]
    assert [(e["actor"], e["detail"]["reason"]) for e in events] == [
        ("peter@initech.example", "requested by the customer by mail")]
    send_due(mail_desk.factory, mail_desk.settings, mt(2026, 11, 20, 15, 1))
    told = sorted(m.rcpt_tos[0] for m in relay.messages if "Escalated" in str(m.message["Subject"]))
    assert told == sorted(["lead-cloud@example.com", case["assignee"]])
    first = next(m for m in relay.messages if "Escalated" in str(m.message["Subject"]))
    assert str(first.message["Subject"]) == "Escalated to level 2: case #1"
    assert first.message["Reply-To"] is None  # a manager's answer must not reach the customer


def test_german_customer_escalation_lists_their_escalation_contacts(mail_desk: Desk, relay: CaptureRelay) -> None:
    # Acme (de) asks "Bitte eskalieren": the managers' mail names Acme's escalation contacts (Anna, Carl).
    mail_desk.ingest(build_mail(sender="Anna Admin <anna@acme.example>", message_id="<a1@acme.example>",
                                subject="Telefonie gestört"), now=mt(2026, 11, 20, 9, 0))
    mail_desk.ingest(build_mail(sender="Anna Admin <anna@acme.example>", message_id="<a2@acme.example>",
                                subject="AW: [Case #1] Telefonie gestört", body="Bitte eskalieren.\n"),
                     now=mt(2026, 11, 20, 10, 0))
    assert mail_desk.case(1)["escalation_level"] == 2
    send_due(mail_desk.factory, mail_desk.settings, mt(2026, 11, 20, 10, 1))
    mail = next(m for m in relay.messages if m.rcpt_tos == ("lead-cloud@example.com",))
    body = mail.message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "anna@acme.example" in text and "carl@acme.example" in text


def test_reply_not_asking_for_escalation_keeps_level(mail_desk: Desk) -> None:
    # An ordinary reply that mentions escalation later on changes nothing.
    mail_desk.ingest(build_mail(), now=mt(2026, 11, 20, 9, 0))
    mail_desk.ingest(build_mail(subject="Re: [Case #1] Printer on fire", message_id="<r@initech.example>",
                                body="Thanks, it works now.\nNo need to escalate.\n"), now=mt(2026, 11, 20, 11, 0))
    assert mail_desk.case(1)["escalation_level"] == 1
    assert "escalation" not in [i.template for i in mail_desk.outbox()]


def escalate_cli(desk: Desk, capsys: pytest.CaptureFixture[str], number: int, now: str) -> dict[str, object]:
    """``maild cases escalate N --reason ... --as tina --now T`` (the handler; cli.py wiring is the lead's)."""
    args = argparse.Namespace(config=str(desk.config_path), number=number, reason="VIP customer",
                              as_="tina@support.example.com", now=now)
    assert cmd_cases_escalate(args) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_staff_escalate_command_steps_up_to_level_four(mail_desk: Desk, capsys: pytest.CaptureFixture[str]) -> None:
    # Staff escalate three times: levels 2, 3, 4; a fourth time stays at 4 and tells level 4 again.
    mail_desk.ingest(build_mail(), now=mt(2026, 11, 20, 9, 0))
    levels = [escalate_cli(mail_desk, capsys, 1, f"2026-11-20T1{i}:00")["escalation"] for i in range(4)]
    assert [(e["level"], e["raised"]) for e in levels] == [(2, True), (3, True), (4, True), (4, False)]  # type: ignore[index]
    assert mail_desk.case(1)["escalation_level"] == 4
    to = [i.to_addr for i in mail_desk.outbox() if i.template == "escalation"]
    assert to.count("cto@example.com") == 2 and to.count("head@example.com") == 1


def test_staff_escalate_refuses_closed_case(mail_desk: Desk, capsys: pytest.CaptureFixture[str]) -> None:
    # A closed case cannot be escalated; nothing changes.
    mail_desk.ingest(build_mail(), now=mt(2026, 11, 20, 9, 0))
    mail_desk.cli_json("cases", "set", "1", "--status", "closed", "--now", "2026-11-20T09:30")
    args = argparse.Namespace(config=str(mail_desk.config_path), number=1, reason=None, as_=None,
                              now="2026-11-20T10:00")
    from maild.staff import StaffError

    with pytest.raises(StaffError, match="closed"):
        cmd_cases_escalate(args)
    assert mail_desk.case(1)["escalation_level"] == 1
