# SPDX-License-Identifier: MIT
"""Monthly invoices: PDFs from the drop directory mailed on the 27th, once, with the bytes intact."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from helpers import Desk, mt
from servers import CaptureRelay

from maild.outbound.sender import run_until_empty
from maild.scheduler import tick

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def relay_desk(make_desk: Callable[..., Desk], relay: CaptureRelay) -> Desk:
    """The example directory on SQLite and on PostgreSQL, sending through the test relay."""
    return make_desk(relay=relay)


def drop(desk: Desk, period: str, name: str) -> bytes:
    """The billing system drops a PDF (with bytes that would suffer from any re-encoding)."""
    folder = desk.settings.invoice_dir / period
    folder.mkdir(parents=True, exist_ok=True)
    data = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + name.encode() + bytes(range(256)) * 40 + b"\r\n.\r\n..\n%%EOF\n"
    (folder / name).write_bytes(data)
    return data


def step(desk: Desk, now: datetime) -> list[dict[str, object]]:
    actions = [a for a in tick(desk.factory, desk.settings, now) if str(a.get("action", "")).startswith("invoice")]
    run_until_empty(desk.factory, desk.settings, now)
    return actions


def test_invoices_go_out_on_saturday_the_27th_once_with_intact_pdfs(relay_desk: Desk, relay: CaptureRelay) -> None:
    # 2027-03-27 is a Saturday: nothing on the 26th, every organisation's PDF at 00:00 on the 27th to its
    # finance contact, byte for byte; later ticks send nothing more.
    pdfs = {"carl@acme.example": drop(relay_desk, "2027-03", "Acme GmbH.pdf"),
            "paula@globex.example": drop(relay_desk, "2027-03", "globex-ltda.pdf"),
            "peter@initech.example": drop(relay_desk, "2027-03", "Initech Inc.pdf")}
    assert step(relay_desk, mt(2027, 3, 26, 23, 59)) == []
    actions = step(relay_desk, mt(2027, 3, 27, 0, 0))
    assert sorted(a["organisation"] for a in actions) == ["Acme GmbH", "Globex Ltda", "Initech Inc"]
    got = relay.wait_for(3)
    for captured in got:
        (rcpt,) = captured.rcpt_tos
        (attachment,) = list(captured.message.iter_attachments())
        assert attachment.get_content_type() == "application/pdf"
        assert attachment.get_content() == pdfs[rcpt]
    acme = next(m.message for m in got if m.rcpt_tos == ("carl@acme.example",))
    assert acme.get_filename() is None and "2027-03" in str(acme["Subject"])
    assert next(acme.iter_attachments()).get_filename() == "Acme GmbH.pdf"
    for when in (mt(2027, 3, 27, 0, 15), mt(2027, 3, 28, 9, 0), mt(2027, 3, 31, 23, 59)):
        assert step(relay_desk, when) == []
    assert len(relay.messages) == 3
    listed = relay_desk.cli_json("invoices", "list", "--period", "2027-03", "--json")
    assert [(r["organisation"], r["recipients"], r["filename"]) for r in listed] == [
        ("Acme GmbH", ["carl@acme.example"], "Acme GmbH.pdf"),
        ("Globex Ltda", ["paula@globex.example"], "globex-ltda.pdf"),
        ("Initech Inc", ["peter@initech.example"], "Initech Inc.pdf"),
    ]
    assert listed[0]["sha256"] == hashlib.sha256(pdfs["carl@acme.example"]).hexdigest()
    assert listed[0]["sent_at"] == "2027-03-27T06:00:00Z"
    assert relay_desk.cli_json("invoices", "list", "--period", "2027-02", "--json") == []


def test_maild_down_on_the_27th_sends_on_the_28th(relay_desk: Desk, relay: CaptureRelay) -> None:
    # No tick at all on the 27th: the first tick on the 28th sends the month's invoices.
    drop(relay_desk, "2027-04", "Acme GmbH.pdf")
    assert step(relay_desk, mt(2027, 4, 26, 12, 0)) == []
    actions = step(relay_desk, mt(2027, 4, 28, 8, 30))
    assert [a["action"] for a in actions if a["organisation"] == "Acme GmbH"] == ["invoice-sent"]
    assert [m.rcpt_tos for m in relay.messages if m.rcpt_tos == ("carl@acme.example",)] == [("carl@acme.example",)]
    assert relay_desk.cli_json("invoices", "list", "--json")[0]["period"] == "2027-04"


def test_missing_pdf_alerts_staff_once_and_the_others_are_served(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Globex's PDF is missing and Initech's is not a PDF: staff hear about each once; Acme gets its invoice;
    # once the file appears, Globex's invoice goes out on the next tick.
    drop(relay_desk, "2027-03", "Acme GmbH.pdf")
    (relay_desk.settings.invoice_dir / "2027-03" / "Initech Inc.pdf").write_text("oops", encoding="utf-8")
    actions = step(relay_desk, mt(2027, 3, 27, 6, 0))
    assert {(a["organisation"], a["action"]) for a in actions} == {
        ("Acme GmbH", "invoice-sent"), ("Globex Ltda", "invoice-alert"), ("Initech Inc", "invoice-alert")}
    messages = relay.wait_for(5)  # Carl's invoice, and two alerts to each of the two staff members
    alerts = [m for m in messages if m.rcpt_tos[0].endswith("@support.example.com")]
    assert sorted(m.rcpt_tos[0] for m in alerts) == ["tina@support.example.com"] * 2 + ["tom@support.example.com"] * 2
    subjects = sorted(str(m.message["Subject"]) for m in alerts if m.rcpt_tos == ("tom@support.example.com",))
    assert subjects == ["[maild] Invoice 2027-03 for Globex Ltda not sent",
                        "[maild] Invoice 2027-03 for Initech Inc not sent"]
    assert step(relay_desk, mt(2027, 3, 27, 7, 0)) == []
    assert len(relay.messages) == 5
    globex = drop(relay_desk, "2027-03", "Globex Ltda.pdf")
    actions = step(relay_desk, mt(2027, 3, 27, 8, 0))
    assert [(a["organisation"], a["action"]) for a in actions] == [("Globex Ltda", "invoice-sent")]
    paula = relay.wait_for(6)[-1]
    assert paula.rcpt_tos == ("paula@globex.example",)
    assert next(paula.message.iter_attachments()).get_content() == globex


def test_organisation_with_nobody_to_bill_alerts_staff(relay_desk: Desk, relay: CaptureRelay, tmp_path: Path) -> None:
    # An organisation without finance contact or MPOC: staff are told (once), nothing is mailed to it.
    extra = tmp_path / "more.toml"
    extra.write_text('[[organisation]]\nname = "Hooli"\ndomains = ["hooli.example"]\n', encoding="utf-8")
    relay_desk.import_directory(extra)
    drop(relay_desk, "2027-03", "hooli.pdf")
    actions = step(relay_desk, mt(2027, 3, 27, 6, 0))
    (hooli,) = [a for a in actions if a["organisation"] == "Hooli"]
    assert hooli["action"] == "invoice-alert" and "no finance contact" in str(hooli["problem"])
    assert not [a for a in step(relay_desk, mt(2027, 3, 28, 6, 0)) if a["organisation"] == "Hooli"]
    assert relay_desk.cli_json("invoices", "list", "--json") == []


def test_invoices_list_rejects_a_bad_period(relay_desk: Desk) -> None:
    # A period must be YYYY-MM: a one-line error, exit 1.
    code, _, err = relay_desk.cli("invoices", "list", "--period", "2027-13")
    assert code == 1 and err.startswith("maild: error: bad period '2027-13'") and err.count("\n") == 1


def test_no_invoice_directory_for_the_month_is_one_alert(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Nothing dropped for May: staff get one alert for the period (not one per organisation), then the
    # invoices go out on the first tick after the files arrive.
    actions = step(relay_desk, mt(2027, 5, 27, 0, 0))
    assert [(a["action"], a["organisation"]) for a in actions] == [("invoice-alert", None)]
    assert step(relay_desk, mt(2027, 5, 27, 1, 0)) == []
    assert sorted(m.rcpt_tos[0] for m in relay.wait_for(2)) == ["tina@support.example.com", "tom@support.example.com"]
    assert str(relay.messages[0].message["Subject"]) == "[maild] No invoices for 2027-05"
    drop(relay_desk, "2027-05", "initech-inc.pdf")
    actions = step(relay_desk, mt(2027, 5, 27, 2, 0))
    assert ("invoice-sent", "Initech Inc") in {(a["action"], a["organisation"]) for a in actions}
