# SPDX-License-Identifier: MIT
"""Intake rules of SPEC §2–§4, each driven by real mail bytes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers import Desk, build_mail, mt

from maild.threading.addresses import reply_address


def ack_of(desk: Desk, case: int, template: str = "ack_new_case") -> str:
    items = [i for i in desk.outbox() if i.case_id == case and i.template == template]
    assert len(items) == 1, [(i.template, i.to_addr) for i in desk.outbox()]
    return f"<{items[0].message_id}>"


def test_mpoc_mail_opens_p4_new_case_whatever_the_subject_says(desk: Desk) -> None:
    # An MPOC's mail becomes a P4/New case even when it shouts "URGENT P1"; the MPOC gets one ack.
    r = desk.ingest(build_mail(subject="URGENT P1: TPS server down"))
    assert (r.outcome.value, r.case) == ("new-case", 1)
    case = desk.case(1)
    assert (case["status"], case["priority"], case["kind"]) == ("new", "P4", "technical")
    assert case["organisation"] == "Initech Inc" and case["requester"] == "peter@initech.example"
    assert case["subject"] == "URGENT P1: TPS server down"
    assert case["assignee"] in ("tom@support.example.com", "tina@support.example.com")
    assert case["messages"][0]["direction"] == "in"
    acks = [i for i in desk.outbox() if i.template == "ack_new_case"]
    assert [a.to_addr for a in acks] == ["peter@initech.example"]
    assert b"[Case #1]" in acks[0].data or "[Case #1]" in acks[0].subject


def test_round_robin_assigns_staff_in_turn(desk: Desk) -> None:
    # Two new cases go to the two technicians in turn.
    desk.ingest(build_mail(message_id="<a@initech.example>"))
    desk.ingest(build_mail(message_id="<b@initech.example>", subject="Other"))
    assert {desk.case(1)["assignee"], desk.case(2)["assignee"]} == {"tom@support.example.com",
                                                                      "tina@support.example.com"}


def test_extra_intake_address_sets_case_kind(desk: Desk) -> None:
    # Mail to macd@ opens a MACD case, to billing@ a billing case.
    desk.ingest(build_mail(to="macd@example.com", message_id="<macd@x>"), rcpt=("macd@example.com",))
    desk.ingest(build_mail(to="billing@example.com", message_id="<bill@x>"), rcpt=("billing@example.com",))
    assert [c["kind"] for c in desk.cases()] == ["macd", "billing"]


def test_non_mpoc_contact_is_held_told_once_and_mpoc_informed(desk: Desk) -> None:
    # A contact who is not an MPOC opens no case: held, one polite reply (rate-limited), MPOC told.
    for n in range(3):
        r = desk.ingest(build_mail(sender="Milton <milton@initech.example>", message_id=f"<s{n}@initech.example>"))
        assert r.outcome.value == "held" and r.case is None
    assert desk.cases() == []
    replies = [i.to_addr for i in desk.outbox() if i.template == "unauthorised_sender"]
    assert replies == ["milton@initech.example"]
    notices = [i.to_addr for i in desk.outbox() if i.template == "mpoc_unauthorised_notice"]
    assert notices[0] == "peter@initech.example"
    held = desk.cli_json("held", "list", "--json")
    assert [h["sender"] for h in held] == ["milton@initech.example"] * 3


def test_stranger_from_unknown_domain_gets_reply_but_no_mpoc_notice(desk: Desk) -> None:
    # Unknown sender: held, polite reply, nobody else told.
    r = desk.ingest(build_mail(sender="eve@nowhere.example", message_id="<e@nowhere>"))
    assert r.outcome.value == "held"
    assert [i.template for i in desk.outbox()] == ["unauthorised_sender"]


def test_accepting_a_held_message_opens_the_case(desk: Desk) -> None:
    # Staff accept a held message: a case is opened for the sender and the held row says so.
    desk.ingest(build_mail(sender="Milton <milton@initech.example>", message_id="<s@initech.example>"))
    held = desk.cli_json("held", "list", "--json")[0]
    out = desk.cli_json("held", "accept", str(held["id"]), "--as", "tom@support.example.com")
    assert out["status"] == "accepted" and out["result_case"] == 1
    assert desk.case(1)["requester"] == "milton@initech.example"
    assert desk.cli_json("held", "list", "--json") == []


def test_reply_threads_by_in_reply_to_our_ack(desk: Desk) -> None:
    # A reply whose In-Reply-To names our acknowledgement is added to the case.
    desk.ingest(build_mail())
    ack = ack_of(desk, 1)
    r = desk.ingest(build_mail(subject="Re: something else", message_id="<r1@initech.example>",
                               in_reply_to=ack, references=f"<m1@initech.example> {ack}"))
    assert (r.outcome.value, r.case) == ("threaded", 1)
    assert len(desk.case(1)["messages"]) == 3  # in, ack out, reply in


@pytest.mark.parametrize("subject", [
    "AW: WG: [Case #1] Printer on fire", "Re: RE: Fwd: [Case #1] x", "SV: VS: [Case #1]", "RES: ENC: [Case #1]",
    "Réf. : TR: [Case #1] Drucker", "Antw: [Case #1]", "[Case #1]",
])
def test_reply_threads_by_subject_tag_under_prefixes(desk: Desk, subject: str) -> None:
    # The case tag under reply/forward prefixes of many languages threads the reply.
    desk.ingest(build_mail())
    r = desk.ingest(build_mail(subject=subject, message_id="<r2@initech.example>"))
    assert (r.outcome.value, r.case) == ("threaded", 1)


def test_reply_threads_by_reply_address_and_tampered_token_does_not(desk: Desk) -> None:
    # support+case-N-<token>@ threads; the same address with a wrong token opens nothing on case 1.
    desk.ingest(build_mail())
    addr = reply_address("support@example.com", 1, b"test-secret")
    r = desk.ingest(build_mail(to=addr, subject="no tag here", message_id="<r3@x>"), rcpt=(addr,))
    assert (r.outcome.value, r.case) == ("threaded", 1)
    bad = addr.replace(addr.split("-")[-1].split("@")[0], "0000000000")
    r2 = desk.ingest(build_mail(to=bad, subject="no tag", message_id="<r4@x>"), rcpt=(bad,))
    assert r2.case != 1


def test_stranger_reply_to_case_is_held_and_case_untouched(desk: Desk) -> None:
    # Ticket-hijack protection: a stranger using the case tag is held; the case is not changed.
    desk.ingest(build_mail())
    before = desk.case(1)
    r = desk.ingest(build_mail(sender="mallory@evil.example", subject="Re: [Case #1] Printer",
                               message_id="<h@evil>"))
    assert r.outcome.value == "held" and r.case is None
    after = desk.case(1)
    assert after["messages"] == before["messages"] and after["status"] == before["status"]
    assert not [i for i in desk.outbox() if i.to_addr == "mallory@evil.example"]


def test_colleague_of_the_requester_may_reply(desk: Desk) -> None:
    # Any contact of the case's organisation may add to it (not a hijack).
    desk.ingest(build_mail())
    r = desk.ingest(build_mail(sender="milton@initech.example", subject="Re: [Case #1]", message_id="<c@i>"))
    assert (r.outcome.value, r.case) == ("threaded", 1)


def test_reply_to_resolved_follow_up_goes_back_in_progress(desk: Desk) -> None:
    # Resolved Follow-up Required + customer reply -> In Progress, no-response clock stopped.
    desk.ingest(build_mail())
    desk.cli_json("cases", "set", "1", "--status", "resolved-follow-up-required", "--now", "2026-11-20T11:00")
    assert desk.case(1)["awaiting_customer_since"] is not None
    desk.ingest(build_mail(subject="Re: [Case #1]", message_id="<r5@i>"), now=mt(2026, 11, 20, 12, 0))
    case = desk.case(1)
    assert case["status"] == "in-progress" and case["awaiting_customer_since"] is None


def _closed_case(desk: Desk, status: str = "closed") -> None:
    desk.ingest(build_mail(), now=mt(2026, 11, 2, 9, 0))
    if status == "closed":
        desk.cli_json("cases", "set", "1", "--status", "closed", "--now", "2026-11-02T10:00")
    else:
        desk.cli_json("cases", "set", "1", "--status", "resolved-follow-up-required", "--now", "2026-11-02T10:00")
        desk.cli_json("cases", "set", "1", "--status", "closed-no-response", "--now", "2026-11-05T10:00")


def test_reply_within_seven_days_of_closing_reopens(desk: Desk) -> None:
    # Closed on the 2nd at 10:00; a reply on the 9th at 09:59 reopens it as Customer Reopened.
    _closed_case(desk)
    r = desk.ingest(build_mail(subject="Re: [Case #1]", message_id="<r6@i>"), now=mt(2026, 11, 9, 9, 59))
    assert (r.outcome.value, r.case) == ("reopened", 1)
    assert desk.case(1)["status"] == "customer-reopened"
    assert [i.template for i in desk.outbox() if i.case_id == 1][-1] == "ack_reopened"


def test_reply_after_seven_days_opens_linked_case(desk: Desk) -> None:
    # More than 7 days after closing: a new case linked to the old one; its ack names the old one.
    _closed_case(desk)
    r = desk.ingest(build_mail(subject="Re: [Case #1]", message_id="<r7@i>"), now=mt(2026, 11, 9, 10, 1))
    assert (r.outcome.value, r.case) == ("new-linked-case", 2)
    assert desk.case(2)["linked_to"] == 1 and desk.case(1)["status"] == "closed"
    assert [i.template for i in desk.outbox() if i.case_id == 2] == ["ack_linked_case"]


def test_reply_to_closed_no_response_always_opens_linked_case(desk: Desk) -> None:
    # Closed No Response: even a reply the next hour opens a new linked case.
    _closed_case(desk, "closed-no-response")
    r = desk.ingest(build_mail(subject="Re: [Case #1]", message_id="<r8@i>"), now=mt(2026, 11, 5, 11, 0))
    assert (r.outcome.value, r.case) == ("new-linked-case", 2)


def test_same_message_twice_is_duplicate_and_changes_nothing(desk: Desk) -> None:
    # The same bytes again, or the same Message-ID via another route, are duplicates.
    data = build_mail()
    desk.ingest(data)
    again = desk.ingest(data)
    assert (again.outcome.value, again.case) == ("duplicate", 1)
    resent = desk.ingest(build_mail(body="slightly different copy\n"))
    assert resent.outcome.value == "duplicate"
    assert len(desk.cases()) == 1 and len(desk.case(1)["messages"]) == 2


def test_message_without_message_id_gets_stable_derived_id(desk: Desk) -> None:
    # No Message-ID: one derived from the bytes, the same for the same bytes.
    data = build_mail(message_id=None)
    first = desk.ingest(data)
    assert first.message_id.endswith("@derived.maild.invalid")
    assert desk.ingest(data).message_id == first.message_id


def test_auto_reply_to_case_is_kept_but_changes_nothing(desk: Desk) -> None:
    # An out-of-office answer to our ack: stored on the case, no status change, no ack, no reopen.
    desk.ingest(build_mail())
    desk.cli_json("cases", "set", "1", "--status", "closed", "--now", "2026-11-20T11:00")
    ack = ack_of(desk, 1)
    n_out = len(desk.outbox())
    r = desk.ingest(build_mail(subject="Automatic reply: [Case #1]", message_id="<ooo@i>", in_reply_to=ack,
                               headers={"Auto-Submitted": "auto-replied"}), now=mt(2026, 11, 20, 12, 0))
    assert r.outcome.value == "ignored" and r.case == 1
    assert desk.case(1)["status"] == "closed" and len(desk.outbox()) == n_out


@pytest.mark.parametrize("headers", [{"Precedence": "bulk"}, {"List-Id": "<news.example.com>"},
                                     {"X-Autoreply": "yes"}, {"Auto-Submitted": "auto-generated"}])
def test_bulk_list_and_automatic_mail_open_no_case(desk: Desk, headers: dict[str, str]) -> None:
    # List, bulk and automatic mail from an MPOC opens no case and gets no reply.
    r = desk.ingest(build_mail(headers=headers))
    assert r.outcome.value == "ignored" and desk.cases() == [] and desk.outbox() == []


def test_mail_from_our_own_address_and_looping_mail_is_ignored(desk: Desk) -> None:
    # Our own address as sender, and mail with 51 Received headers, are never cases.
    assert desk.ingest(build_mail(sender="support@example.com", message_id="<own@x>")).outcome.value == "ignored"
    hops = {"Received": "from a by b; Fri, 20 Nov 2026 10:00:00 -0700"}
    data = build_mail(message_id="<loop@x>", headers=hops)
    head, _, body = data.partition(b"\n\n")
    data = head + b"\n" + b"Received: from x by y; Fri, 20 Nov 2026 10:00:00 -0700\n" * 50 + b"\n" + body
    assert desk.ingest(data).outcome.value == "ignored"
    assert desk.cases() == []


def test_bounce_of_our_ack_is_recorded_on_its_case(desk: Desk) -> None:
    # A DSN for our acknowledgement: outcome bounce, the outbox row is marked bounced, no new case.
    desk.ingest(build_mail())
    ack = ack_of(desk, 1)
    dsn = (
        "From: MAILER-DAEMON@mx.initech.example\r\nTo: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.initech.example\r\n\r\n"
        "Final-Recipient: rfc822; peter@initech.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {ack}\r\nSubject: x\r\n\r\n--B--\r\n"
    ).encode()
    r = desk.ingest(dsn, mail_from="")
    assert (r.outcome.value, r.case) == ("bounce", 1)
    row = next(i for i in desk.outbox() if f"<{i.message_id}>" == ack)
    assert row.status == "bounced"
    assert len(desk.cases()) == 1


def test_unparseable_mail_is_kept_and_reported(desk: Desk) -> None:
    # Bytes that are no mail at all are kept in held intake with the reason, never dropped.
    r = desk.ingest(b"\r\n\r\n")
    assert r.outcome.value == "held" and "unprocessable" in r.reason
    assert desk.held()[0].reason == "unprocessable"


def test_processing_failure_quarantines_and_can_be_reprocessed(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug while threading (injected) keeps the message in quarantine; accepting it later makes the case once.
    import maild.ingest.pipeline as pipeline

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(pipeline, "find_case", broken)
    r = desk.ingest(build_mail())
    assert r.outcome.value == "held" and "injected fault" in r.reason
    assert desk.cases() == []
    monkeypatch.undo()
    held_id = desk.held()[0].id
    desk.cli_json("held", "accept", str(held_id))
    assert len(desk.cases()) == 1 and desk.case(1)["requester"] == "peter@initech.example"


def test_staff_reply_by_mail_is_relayed_to_requester(desk: Desk) -> None:
    # A technician answering by mail: recorded as staff reply and sent on to the customer.
    desk.ingest(build_mail())
    r = desk.ingest(build_mail(sender="Tom Tech <tom@support.example.com>", subject="Re: [Case #1] Printer",
                               body="Please switch it off and on again.\n", message_id="<t1@support>"))
    assert (r.outcome.value, r.case) == ("threaded", 1)
    relayed = [i for i in desk.outbox() if i.template == "staff_reply"]
    assert [i.to_addr for i in relayed] == ["peter@initech.example"]
    assert b"switch it off and on again" in relayed[0].data
    case = desk.case(1)
    assert case["status"] == "in-progress" and case["first_responded_at"] is not None


def test_quoted_history_is_kept_apart_from_new_text(desk: Desk) -> None:
    # A reply's quoted history is stored separately from the new text.
    desk.ingest(build_mail())
    body = ("Still broken after the restart.\n\nOn Fri, Nov 20, 2026 at 10:00 AM Support wrote:\n"
            "> We received your request.\n> Regards\n")
    desk.ingest(build_mail(subject="Re: [Case #1]", body=body, message_id="<q@i>"))
    msg = desk.case(1)["messages"][-1]
    assert msg["text"].strip() == "Still broken after the restart."
    assert "We received your request" in msg["quoted"]


def test_reply_time_window_is_measured_from_closing(desk: Desk) -> None:
    # Exactly 7 days after closing still reopens (inclusive bound).
    _closed_case(desk)
    closed_at = mt(2026, 11, 2, 10, 0)
    r = desk.ingest(build_mail(subject="Re: [Case #1]", message_id="<r9@i>"), now=closed_at + timedelta(days=7))
    assert r.outcome.value == "reopened"


def test_attachments_are_kept_with_the_case_message(desk: Desk) -> None:
    # A screenshot and a log file arrive with the case; `cases show` lists them with their hash and size.
    import hashlib
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "peter@initech.example", "support@example.com", "Screens attached"
    msg["Message-ID"] = "<att@initech.example>"
    msg.set_content("See attached.\n")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    msg.add_attachment(png, maintype="image", subtype="png", filename="screen.png")
    msg.add_attachment(b"line 1\nline 2\n", maintype="text", subtype="plain", filename="../../app.log")
    r = desk.ingest(msg.as_bytes())
    assert r.outcome.value == "new-case"
    atts = desk.case(1)["messages"][0]["attachments"]
    assert [(a["filename"], a["size"]) for a in atts] == [("screen.png", len(png)), ("app.log", 14)]
    assert atts[0]["sha256"] == hashlib.sha256(png).hexdigest()
