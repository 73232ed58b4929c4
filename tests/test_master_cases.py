# SPDX-License-Identifier: MIT
"""P1G master cases: opened by staff, organisations' cases linked, updates to subscribers and requesters once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Desk, build_mail, mt
from servers import CaptureRelay

from maild.outbound.sender import run_until_empty
from maild.scheduler import tick

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def relay_desk(make_desk: Callable[..., Desk], relay: CaptureRelay) -> Desk:
    """The example directory on SQLite and on PostgreSQL, sending through the test relay."""
    return make_desk(relay=relay)


def updates_at(relay: CaptureRelay) -> Counter[str]:
    """How many master updates each address received (maild's Message-IDs name the mail kind)."""
    return Counter(m.rcpt_tos[0] for m in relay.messages if ".master-update." in str(m.message["Message-ID"]))


def open_outage(desk: Desk) -> tuple[int, int, int]:
    """Acme and Initech report the outage; staff open a master case and link both cases to it."""
    acme = desk.ingest(build_mail(sender="Anna Admin <anna@acme.example>", subject="Telefonie ausgefallen",
                                  message_id="<a1@acme.example>"), now=mt(2027, 2, 1, 9, 0))
    initech = desk.ingest(build_mail(subject="Phones down", message_id="<i1@initech.example>"),
                          now=mt(2027, 2, 1, 9, 5))
    assert acme.case is not None and initech.case is not None
    master = desk.cli_json("master", "open", "--title", "Cloud voice outage", "--platform", "Cloud",
                           "--as", "tom@support.example.com", "--now", "2027-02-01T09:10")
    for number in (acme.case, initech.case):
        linked = desk.cli_json("master", "link", str(number), "--to", str(master["number"]), "--now",
                               "2027-02-01T09:11")
        assert linked["master"] == master["number"]
    return acme.case, initech.case, master["number"]


def test_update_reaches_subscribers_and_linked_requesters_once_each(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Anna is both a linked requester and a subscriber: one mail, threaded on her own case. Paula
    # subscribed to the platform, Bernd to the case: one mail each. Everyone again on the next update.
    acme_case, initech_case, number = open_outage(relay_desk)
    master = relay_desk.case(number)
    assert (master["priority"], master["status"], master["kind"]) == ("P1G", "in-progress", "master")
    assert (master["platform"], master["requester"]) == ("cloud", "tom@support.example.com")
    for args in (["--email", "paula@globex.example", "--platform", "cloud"],
                 ["--email", "anna@acme.example", "--master", str(number)],
                 ["--email", "Bernd@acme.example", "--master", str(number)]):
        assert relay_desk.cli_json("master", "subscribe", *args)["changed"] is True
    assert relay_desk.cli_json("master", "subscribe", "--email", "paula@globex.example",
                               "--platform", "cloud")["changed"] is False
    out = relay_desk.cli_json("master", "update", str(number), "--body", "Carrier fault found; rerouting calls.",
                              "--now", "2027-02-01T09:30")
    assert sorted(out["sent_to"]) == ["anna@acme.example", "bernd@acme.example", "paula@globex.example",
                                      "peter@initech.example"]
    run_until_empty(relay_desk.factory, relay_desk.settings, mt(2027, 2, 1, 9, 30))
    relay.wait_for(6)  # two acknowledgements, four updates
    assert updates_at(relay) == Counter({"anna@acme.example": 1, "bernd@acme.example": 1,
                                         "paula@globex.example": 1, "peter@initech.example": 1})
    anna = next(m.message for m in relay.messages if m.rcpt_tos == ("anna@acme.example",)
                and ".master-update." in str(m.message["Message-ID"]))
    assert f"[Case #{acme_case}]" in str(anna["Subject"]) and "Cloud voice outage" in str(anna["Subject"])
    body = anna.get_body(("plain",))
    assert body is not None and "Carrier fault found; rerouting calls." in body.get_content()
    shown = relay_desk.case(initech_case)
    assert any("rerouting calls" in m["text"] for m in shown["messages"] if m["direction"] == "out")
    relay_desk.cli_json("master", "update", str(number), "--body", "Calls restored.", "--close",
                        "--now", "2027-02-01T10:15")
    run_until_empty(relay_desk.factory, relay_desk.settings, mt(2027, 2, 1, 10, 15))
    relay.wait_for(10)
    assert set(updates_at(relay).values()) == {2}
    assert relay_desk.case(number)["status"] == "closed"
    code, _, err = relay_desk.cli("master", "update", str(number), "--body", "late", "--now", "2027-02-01T10:20")
    assert code == 1 and "closed" in err


def test_overdue_master_update_reminds_staff_once_per_hour(relay_desk: Desk, relay: CaptureRelay) -> None:
    # Updates are due at least hourly: staff are reminded once when an hour passes without one, once
    # more in the next hour, and not after an update restarts the clock.
    _, _, number = open_outage(relay_desk)
    relay_desk.cli_json("master", "update", str(number), "--body", "Investigating.", "--now", "2027-02-01T09:15")

    def overdue(now_: tuple[int, ...]) -> list[dict[str, object]]:
        return [a for a in tick(relay_desk.factory, relay_desk.settings, mt(*now_))
                if a.get("action") == "master-update-overdue"]

    assert overdue((2027, 2, 1, 10, 14)) == []
    assert [a["case"] for a in overdue((2027, 2, 1, 10, 15))] == [number]
    assert overdue((2027, 2, 1, 10, 45)) == []
    assert len(overdue((2027, 2, 1, 11, 16))) == 1
    relay_desk.cli_json("master", "update", str(number), "--body", "Still on it.", "--now", "2027-02-01T11:20")
    assert overdue((2027, 2, 1, 12, 0)) == []
    run_until_empty(relay_desk.factory, relay_desk.settings, mt(2027, 2, 1, 12, 0))
    alerts = [m for m in relay.messages if str(m.message["Subject"]).startswith("[maild] Master case")]
    assert Counter(m.rcpt_tos[0] for m in alerts) == {"tom@support.example.com": 2, "tina@support.example.com": 2}


def test_status_page_shows_the_open_master_case_and_its_updates(relay_desk: Desk) -> None:
    # The status page publishes the incident and its updates (newest first), never who was told.
    _, _, number = open_outage(relay_desk)
    relay_desk.cli_json("master", "update", str(number), "--body", "Investigating.", "--now", "2027-02-01T09:15")
    relay_desk.cli_json("master", "update", str(number), "--body", "Fix deployed.", "--now", "2027-02-01T09:45")
    page = json.loads((relay_desk.settings.data_dir / "status.json").read_text(encoding="utf-8"))
    (incident,) = page["incidents"]
    assert (incident["number"], incident["title"], incident["platform"]) == (number, "Cloud voice outage", "cloud")
    assert [u["body"] for u in incident["updates"]] == ["Fix deployed.", "Investigating."]
    assert "@" not in json.dumps(page)


def test_master_commands_refuse_bad_input(relay_desk: Desk) -> None:
    # Linking to a case that is no master, updating an ordinary case, subscribing a stranger: one-line errors.
    acme_case, _, number = open_outage(relay_desk)
    for args, message in (
        (["master", "link", str(number), "--to", str(acme_case)], f"no master case {acme_case}"),
        (["master", "update", str(acme_case), "--body", "x"], f"no master case {acme_case}"),
        (["master", "link", "999", "--to", str(number)], "no case 999"),
        (["master", "subscribe", "--email", "eve@evil.example", "--platform", "cloud"], "neither a contact"),
        (["master", "subscribe", "--email", "anna@acme.example", "--master", str(acme_case)], "no master case"),
    ):
        code, out, err = relay_desk.cli(*args)
        assert code == 1 and out == "" and message in err and err.count("\n") == 1, (args, err)
    listed = relay_desk.cli_json("master", "list", "--json")
    assert [(m["number"], m["linked"]) for m in listed] == [(number, [acme_case, acme_case + 1])]
