# SPDX-License-Identifier: MIT
"""Maintenance notices end to end: planned windows, scheduler ticks, mail counted at a real SMTP relay."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers import Desk, mt, write_config
from servers import CaptureRelay

from maild.outbound.sender import run_until_empty
from maild.scheduler import tick

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def relay_desk(tmp_path: Path, relay: CaptureRelay) -> Iterator[Desk]:
    """The example directory on SQLite, sending through the test relay."""
    cfg = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db", relay_port=relay.port)
    d = Desk(cfg)
    d.import_directory(REPO / "examples" / "directory.toml")
    yield d
    d.close()


def step(desk: Desk, now: datetime) -> list[dict[str, object]]:
    """What the daemon does at ``now``: one scheduler step, then deliver what is due."""
    actions = tick(desk.factory, desk.settings, now)
    run_until_empty(desk.factory, desk.settings, now)
    return actions


def kind_of(message_id: str) -> str:
    """The mail kind maild writes into its Message-IDs (maild.<kind>.<key>.<token>@domain)."""
    return message_id.strip("<>").split(".")[1]


def notices(relay: CaptureRelay) -> Counter[tuple[str, str]]:
    return Counter((m.rcpt_tos[0], kind_of(str(m.message["Message-ID"]))) for m in relay.messages)


def test_a_month_of_ticks_sends_every_notice_exactly_once(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Hourly ticks through March 2027 (a DST change inside): each planned notice reaches each recipient once,
    # at its due time, and no organisation is told about a product it does not use.
    relay_desk.cli_json("maintenance", "plan", "--until", "2027-03-31", "--now", "2027-03-01T00:00")
    sent_at: dict[str, list[datetime]] = {}
    now = mt(2027, 3, 1, 0, 0)
    while now < mt(2027, 3, 25, 0, 0):
        for action in step(relay_desk, now):
            if action.get("action") == "maintenance-notice":
                sent_at.setdefault(str(action["type"]), []).append(now)
        now += timedelta(hours=1)
    everyone = ("anna@acme.example", "paula@globex.example", "peter@initech.example")
    expected = Counter({("anna@acme.example", "maintenance-connect"): 2})
    for kind in ("maintenance-reminder", "maintenance-start", "maintenance-end"):
        expected.update({(who, kind): 1 for who in everyone})
    assert notices(relay) == expected
    assert sent_at == {
        "maintenance_connect": [mt(2027, 3, 1, 21, 0), mt(2027, 3, 22, 21, 0)],
        "maintenance_reminder": [mt(2027, 3, 12, 22, 0)],
        "maintenance_start": [mt(2027, 3, 19, 22, 0)],
        "maintenance_end": [mt(2027, 3, 20, 4, 0)],
    }
    windows = relay_desk.cli_json("maintenance", "list", "--json")
    monthly = next(w for w in windows if w["kind"] == "monthly")
    assert [n["type"] for n in monthly["notices"]] == ["maintenance_reminder", "maintenance_start", "maintenance_end"]
    assert monthly["notices"][0]["recipients"] == sorted(everyone)


def test_reminder_is_at_22_00_mst_one_week_before_a_window_after_the_dst_change(
    relay_desk: Desk, relay: CaptureRelay
) -> None:
    # The 2027-03-19 window starts 22:00 MDT; its reminder is 22:00 MST on 2027-03-12, not an hour off.
    relay_desk.cli_json("maintenance", "plan", "--until", "2027-03-20", "--now", "2027-03-10T12:00")
    early = step(relay_desk, mt(2027, 3, 12, 21, 59))
    assert [a for a in early if a.get("action") == "maintenance-notice"] == []
    assert relay.messages == []
    actions = step(relay_desk, mt(2027, 3, 12, 22, 0))
    assert [a["type"] for a in actions if a.get("action") == "maintenance-notice"] == ["maintenance_reminder"]
    assert len(relay.wait_for(3)) == 3
    step(relay_desk, mt(2027, 3, 12, 22, 15))
    assert len(relay.messages) == 3


def test_recipients_language_and_time_zones(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Acme (German, Berlin) is told at its maintenance contact in German with Berlin times too; Globex has
    # no maintenance contact, so its primary MPOC is told; Initech does not use "cisco" and hears nothing.
    relay_desk.cli_json("maintenance", "add", "--kind", "unscheduled", "--start", "2027-05-04T23:30",
                        "--end", "2027-05-05T01:00", "--products", "Connect,cisco", "--description",
                        "Replacing a failed storage controller", "--reason", "Hardware fault",
                        "--now", "2027-05-04T15:00")
    run_until_empty(relay_desk.factory, relay_desk.settings, mt(2027, 5, 4, 15, 0))
    by_rcpt = {m.rcpt_tos[0]: m.message for m in relay.wait_for(2)}
    assert sorted(by_rcpt) == ["anna@acme.example", "paula@globex.example"]
    german = by_rcpt["anna@acme.example"].get_body(("plain",))
    assert german is not None
    text = german.get_content()
    assert "außerplanmäßige Wartung" in text
    assert "Di 2027-05-04 23:30 MDT" in text  # Mountain Time ...
    assert "In Ihrer Zeitzone: Mi 2027-05-05 07:30 CEST" in text  # ... and Berlin
    assert "Replacing a failed storage controller" in text and "Hardware fault" in text
    assert str(by_rcpt["anna@acme.example"]["Auto-Submitted"]) == "auto-generated"
    portuguese = by_rcpt["paula@globex.example"].get_body(("plain",))
    assert portuguese is not None and "manutenção não planeada" in portuguese.get_content()
    # The window ends: the promised end notice, once.
    step(relay_desk, mt(2027, 5, 5, 1, 0))
    step(relay_desk, mt(2027, 5, 5, 2, 0))
    assert notices(relay)[("anna@acme.example", "maintenance-end")] == 1
    assert len(relay.messages) == 4


def test_unscheduled_work_already_under_way_says_so(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Notice "possibly after the fact": a window added after it started says the work is under way.
    out = relay_desk.cli_json("maintenance", "add", "--kind", "unscheduled", "--start", "2027-05-04T02:00",
                              "--end", "2027-05-04T04:00", "--products", "microsoft-teams", "--description",
                              "Emergency patch", "--reason", "Vendor security advisory", "--now", "2027-05-04T02:30")
    assert [n["recipients"] for n in out["notices"]] == [["peter@initech.example"]]
    run_until_empty(relay_desk.factory, relay_desk.settings, mt(2027, 5, 4, 2, 30))
    (msg,) = relay.wait_for(1)
    body = msg.message.get_body(("plain",))
    assert body is not None and "already under way" in body.get_content()


def test_cancel_after_the_reminder_tells_those_reminded(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Cancelling a window whose reminder went out sends a cancellation to exactly those reminded, and
    # nothing else follows (no start or end notice).
    relay_desk.cli_json("maintenance", "plan", "--until", "2027-03-20", "--now", "2027-03-10T12:00")
    windows = relay_desk.cli_json("maintenance", "list", "--json")
    monthly = next(w for w in windows if w["kind"] == "monthly")
    step(relay_desk, mt(2027, 3, 12, 22, 0))
    reminded = sorted(m.rcpt_tos[0] for m in relay.wait_for(3))
    out = relay_desk.cli_json("maintenance", "cancel", str(monthly["id"]), "--now", "2027-03-15T09:00")
    assert out["status"] == "cancelled"
    assert out["sent"][0]["type"] == "maintenance_cancelled"
    run_until_empty(relay_desk.factory, relay_desk.settings, mt(2027, 3, 15, 9, 0))
    for when in (mt(2027, 3, 19, 22, 0), mt(2027, 3, 20, 4, 0)):
        step(relay_desk, when)
    cancelled = sorted(m.rcpt_tos[0] for m in relay.messages if kind_of(str(m.message["Message-ID"]))
                       == "maintenance-cancelled")
    assert cancelled == reminded
    assert len(relay.messages) == 6
    code, _, err = relay_desk.cli("maintenance", "cancel", str(monthly["id"]), "--now", "2027-03-15T09:05")
    assert code == 1 and err.startswith("maild: error: ") and "cancelled" in err and err.count("\n") == 1


def test_edit_after_the_reminder_sends_a_correction(relay_desk: Desk, relay: CaptureRelay) -> None:
    # A changed reason after the reminder: those reminded get a correction showing the new details; a
    # second edit is a second correction; the start notice still comes once, at the (new) start.
    relay_desk.cli_json("maintenance", "plan", "--until", "2027-03-20", "--now", "2027-03-10T12:00")
    monthly = next(w for w in relay_desk.cli_json("maintenance", "list", "--json") if w["kind"] == "monthly")
    step(relay_desk, mt(2027, 3, 12, 22, 0))
    relay.wait_for(3)
    out = relay_desk.cli_json("maintenance", "edit", str(monthly["id"]), "--reason", "Database upgrade",
                              "--start", "2027-03-19T23:00", "--now", "2027-03-13T10:00")
    assert out["revision"] == 2 and out["start"] == "2027-03-20T05:00:00Z"
    run_until_empty(relay_desk.factory, relay_desk.settings, mt(2027, 3, 13, 10, 0))
    corrections = [m for m in relay.wait_for(6) if kind_of(str(m.message["Message-ID"])) == "maintenance-correction"]
    assert sorted(m.rcpt_tos[0] for m in corrections) == ["anna@acme.example", "paula@globex.example",
                                                          "peter@initech.example"]
    peter = next(m for m in corrections if m.rcpt_tos[0] == "peter@initech.example").message.get_body(("plain",))
    assert peter is not None and "Database upgrade" in peter.get_content()
    assert "Fri 2027-03-19 23:00 MDT" in peter.get_content()
    step(relay_desk, mt(2027, 3, 19, 22, 0))
    assert len(relay.messages) == 6  # not yet: the window now starts at 23:00
    step(relay_desk, mt(2027, 3, 19, 23, 0))
    assert notices(relay)[("peter@initech.example", "maintenance-start")] == 1
    assert notices(relay)[("peter@initech.example", "maintenance-reminder")] == 1


def test_status_page_lists_published_windows(relay_desk: Desk, relay: CaptureRelay) -> None:
    # status.json shows current and upcoming windows with the notices published, and no recipient addresses.
    relay_desk.cli_json("maintenance", "plan", "--until", "2027-03-20", "--now", "2027-03-10T12:00")
    step(relay_desk, mt(2027, 3, 12, 22, 0))
    page = json.loads((relay_desk.settings.data_dir / "status.json").read_text(encoding="utf-8"))
    monthly = next(w for w in page["maintenance"] if w["kind"] == "monthly")
    assert monthly["state"] == "upcoming" and monthly["start"] == "2027-03-20T04:00:00Z"
    assert [n["type"] for n in monthly["notices"]] == ["maintenance_reminder"]
    assert "@" not in json.dumps(page)
    step(relay_desk, mt(2027, 3, 19, 22, 30))
    page = json.loads((relay_desk.settings.data_dir / "status.json").read_text(encoding="utf-8"))
    assert next(w for w in page["maintenance"] if w["kind"] == "monthly")["state"] == "in-progress"
    step(relay_desk, mt(2027, 3, 20, 5, 0))
    page = json.loads((relay_desk.settings.data_dir / "status.json").read_text(encoding="utf-8"))
    assert all(w["kind"] != "monthly" for w in page["maintenance"])


def test_notices_missed_while_down_are_skipped_not_sent_late(relay_desk: Desk, relay: CaptureRelay) -> None:
    # maild was down from before the reminder until the window had started: no late reminder (reported once
    # as skipped), but the start notice still goes out inside the window, and the end notice at the end.
    relay_desk.cli_json("maintenance", "plan", "--until", "2027-03-20", "--now", "2027-03-10T12:00")
    actions = step(relay_desk, mt(2027, 3, 19, 23, 0))
    assert [(a["action"], a["type"]) for a in actions if str(a.get("action")).startswith("maintenance")] == [
        ("maintenance-notice-skipped", "maintenance_reminder"), ("maintenance-notice", "maintenance_start")]
    assert not [a for a in step(relay_desk, mt(2027, 3, 19, 23, 30)) if str(a.get("action")).startswith("maint")]
    step(relay_desk, mt(2027, 3, 20, 4, 0))
    assert Counter(kind for _, kind in notices(relay).elements()) == {"maintenance-start": 3, "maintenance-end": 3}
