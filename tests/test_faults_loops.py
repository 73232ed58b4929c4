# SPDX-License-Identifier: MIT
"""Mail loops (RELIABILITY L1-L4, L6): automatic mail is stored but never answered, our own mail
coming back is a loop, a responder that ignores RFC 3834 meets the per-recipient caps.

Mail goes in through ``run_ingest`` (SQLite desk) or the real SMTP listener; acks go out through the
real sender to the CaptureRelay, which is what "the bot" reads and answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from faultlib import Ledger, check_no_loss, check_outbound, smtp_send
from helpers import Desk, build_mail, mt
from servers import CaptureRelay
from sqlalchemy import select

from maild.db import transaction
from maild.ingest.smtp_server import make_controller
from maild.models import CaseEvent, RawMessage
from maild.outbound.relay import Relay
from maild.outbound.sender import run_until_empty

NOW = mt(2026, 11, 20, 10, 5)
ANNA = "anna@acme.example"  # an MPOC of Acme

AUTOMATIC = [
    {"Auto-Submitted": "auto-replied"}, {"Auto-Submitted": "auto-generated"}, {"Auto-Submitted": "auto-notified"},
    {"Precedence": "bulk"}, {"Precedence": "list"}, {"Precedence": "junk"}, {"List-Id": "<news.acme.example>"},
    {"X-Auto-Response-Suppress": "All"}, {"X-Autoreply": "yes"},
]  # fmt: skip


@pytest.fixture
def relayed(sqlite_desk: Desk, relay: CaptureRelay) -> Iterator[Desk]:
    """The SQLite desk with [relay] pointing at the CaptureRelay."""
    from dataclasses import replace

    sqlite_desk.settings = replace(sqlite_desk.settings,
                                   relay=replace(sqlite_desk.settings.relay, port=relay.port))  # fmt: skip
    yield sqlite_desk


def deliver(desk: Desk, now: object) -> None:
    run_until_empty(desk.factory, desk.settings, now, relay=Relay(desk.settings, connect_wait=0))  # type: ignore[arg-type]


def events(desk: Desk, kind: str) -> list[CaseEvent]:
    with transaction(desk.factory) as s:
        return list(s.scalars(select(CaseEvent).where(CaseEvent.kind == kind)))


def acks_to(desk: Desk, address: str) -> list[str]:
    return [i.template for i in desk.outbox() if i.to_addr == address and i.template.startswith("ack_")]


@pytest.mark.parametrize("header", AUTOMATIC, ids=lambda h: "-".join(f"{k}:{v}" for k, v in h.items()))
def test_automatic_mail_is_stored_and_never_acknowledged(sqlite_desk: Desk, header: dict[str, str]) -> None:
    # L1: a new mail and a reply to a closed case, each carrying the header: both stored, no ack ever;
    # the reply sits on the case with a suppressed-ack event.
    desk, ledger = sqlite_desk, Ledger()
    desk.ingest(build_mail(sender=f"Anna <{ANNA}>", message_id="<first@acme.example>"), now=NOW)
    desk.cli_json("cases", "set", "1", "--status", "closed", "--now", "2026-11-20T11:00")
    (ack,) = [f"<{i.message_id}>" for i in desk.outbox() if i.template == "ack_new_case"]
    fresh = ledger.mail(1, sender=f"Anna <{ANNA}>", subject="Another thing", headers=header)
    reply = ledger.mail(2, sender=f"Anna <{ANNA}>", subject="Re: [Case #1] Printer", in_reply_to=ack,
                        headers=header)  # fmt: skip
    for entry in (fresh, reply):
        desk.ingest(entry.data, now=mt(2026, 11, 20, 12, 0))
        ledger.record(entry, 250)
    check_no_loss(desk.settings.database_url, ledger)
    assert acks_to(desk, ANNA) == ["ack_new_case"]  # only the first, ordinary mail's
    suppressed = events(desk, "suppressed-ack")
    assert [e.case_id for e in suppressed] == [1] or {e.case_id for e in suppressed} == {1, 2}
    assert desk.case(1)["status"] in ("closed", "customer-reopened")
    assert len(desk.case(1)["messages"]) == 3  # first, its ack, and the automatic reply


def test_bounce_of_our_ack_blocks_further_acks_to_that_address(relayed: Desk, relay: CaptureRelay) -> None:
    # L2: a DSN (MAIL FROM:<>) for an ack we sent marks that row bounced and the address bouncing;
    # the next mail from it opens its case without an ack; nothing is ever sent to <>.
    desk = relayed
    desk.ingest(build_mail(sender=f"Anna <{ANNA}>", message_id="<a1@acme.example>"), now=NOW)
    deliver(desk, NOW)
    (sent,) = relay.messages
    dsn = (
        f"From: MAILER-DAEMON@mx.acme.example\r\nTo: support@example.com\r\nMessage-ID: <dsn@mx.acme.example>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.acme.example\r\n\r\nFinal-Recipient: rfc822; {ANNA}\r\nAction: failed\r\n"
        "Status: 5.1.1\r\n\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {sent.message['Message-ID']}\r\n\r\n--B--\r\n"
    ).encode()
    assert desk.ingest(dsn, mail_from="", now=NOW + timedelta(minutes=1)).outcome.value == "bounce"
    r = desk.ingest(build_mail(sender=f"Anna <{ANNA}>", subject="Second", message_id="<a2@acme.example>"),
                    now=NOW + timedelta(minutes=2))  # fmt: skip
    assert r.outcome.value == "new-case"
    deliver(desk, NOW + timedelta(minutes=3))
    assert len(relay.messages) == 1 and acks_to(desk, ANNA) == ["ack_new_case"]
    assert [i.status for i in desk.outbox()] == ["bounced"]
    (suppressed,) = events(desk, "suppressed-ack")
    assert suppressed.case_id == r.case
    check_outbound(desk.settings.database_url, relay)


def test_vacation_bot_that_ignores_rfc3834_meets_the_ack_cap(relayed: Desk, relay: CaptureRelay) -> None:
    # L3: for one simulated hour a bot answers every ack it receives with a new, human-looking mail
    # (no Auto-Submitted, no tag): acks to it stop at [intake] ack_per_sender_per_hour; every bot mail
    # is stored.
    desk, ledger = relayed, Ledger()
    cap = desk.settings.intake.ack_per_sender_per_hour
    first = ledger.mail(0, sender=f"Anna <{ANNA}>")
    desk.ingest(first.data, now=NOW)
    ledger.record(first, 250)
    answered = 0
    for minute in range(60):
        now = NOW + timedelta(minutes=minute)
        deliver(desk, now)
        for ack in [m for m in relay.messages if ANNA in m.rcpt_tos][answered:]:
            answered += 1
            bounce_back = ledger.mail(answered, sender=f"Anna <{ANNA}>", subject=f"I am away ({answered})",
                                      body=f"I am out of the office.\n\n> {ack.message['Subject']}\n")  # fmt: skip
            desk.ingest(bounce_back.data, now=now + timedelta(seconds=30))
            ledger.record(bounce_back, 250)
    counts = check_no_loss(desk.settings.database_url, ledger)
    acks = acks_to(desk, ANNA)
    print(f"\nL3: {counts['accepted']} mails from the bot stored, {len(acks)} acks sent in one hour (cap {cap})")
    assert len(acks) == cap and len([m for m in relay.messages if ANNA in m.rcpt_tos]) == cap
    assert counts["accepted"] == cap + 1 and len(desk.cases()) == cap + 1
    alerts = [m for m in relay.messages if ANNA not in m.rcpt_tos]
    assert {m.rcpt_tos for m in alerts} == {("tom@support.example.com",), ("tina@support.example.com",)}
    assert all("Mail flood from anna@acme.example" in str(m.message["Subject"]) for m in alerts)
    assert len(events(desk, "suppressed-ack")) == 1  # the mail after the cap; then the bot fell silent
    check_outbound(desk.settings.database_url, relay)


def test_our_own_ack_coming_back_is_a_loop(relayed: Desk, relay: CaptureRelay) -> None:
    # L4: our ack forwarded back to the intake: with From rewritten and the loop header removed (our
    # Message-ID betrays it), with From and Message-ID rewritten (the loop header does), and as is (our
    # own address): each a loop or a duplicate of one, no case, no mail out, the reason stored.
    desk = relayed
    desk.ingest(build_mail(sender=f"Anna <{ANNA}>", message_id="<a1@acme.example>"), now=NOW)
    deliver(desk, NOW)
    raw = relay.messages[0].raw
    forwarded = re.sub(rb"(?m)^From: .*\r\n", b"From: forwarder@acme.example\r\n", raw, count=1)
    new_id = forwarded.replace(relay.messages[0].message["Message-ID"].encode(), b"<fwd-1@forwarder.example>")
    msg = message_from_bytes(forwarded, policy=policy.SMTP)
    del msg["X-Maild-Loop"]
    no_header = msg.as_bytes()
    before = (len(desk.cases()), len(desk.outbox()))
    for n, (data, why) in enumerate([(no_header, "loop: own Message-ID"), (new_id, "loop: X-Maild-Loop")]):
        r = desk.ingest(data, now=NOW + timedelta(minutes=n + 1), rcpt=("support@example.com",))
        assert (r.outcome.value, r.reason) == ("ignored", why)
    # the unchanged copy: a loop too, or (same Message-ID as the stripped one) a duplicate of it
    r = desk.ingest(raw, now=NOW + timedelta(minutes=5), rcpt=("support@example.com",))
    assert r.outcome.value in ("ignored", "duplicate") and r.case is None
    assert (len(desk.cases()), len(desk.outbox())) == before
    with transaction(desk.factory) as s:
        reasons = [r.reason for r in s.scalars(select(RawMessage).order_by(RawMessage.id))][1:]
    assert len(reasons) == 3 and all(reason for reason in reasons)  # the loop log: stored, with the reason


def test_flood_of_200_mails_plus_20_resends_stores_201_and_caps_acks(relayed: Desk, relay: CaptureRelay) -> None:
    # L6: over SMTP, 200 distinct mails from one MPOC and one mail sent 20 times: 201 stored once each,
    # 19 duplicates counted on the re-sent one, acks stop at the hourly cap.
    desk, ledger = relayed, Ledger()
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0").start()
    try:
        distinct = [ledger.mail(i, sender=f"Anna <{ANNA}>") for i in range(200)]
        for entry in distinct:
            assert smtp_send(intake.port, ledger, entry, mail_from=ANNA) == 250
        again = ledger.mail(999, sender=f"Anna <{ANNA}>")
        codes = [smtp_send(intake.port, ledger, again, mail_from=ANNA) for _ in range(20)]
    finally:
        intake.stop()
    assert codes == [250] * 20
    counts = check_no_loss(desk.settings.database_url, ledger)
    with transaction(desk.factory) as s:
        rows = list(s.scalars(select(RawMessage)))
    assert counts["accepted"] == 201 and len(rows) == 201
    assert sorted(r.duplicates for r in rows)[-1] == 19 and sum(r.duplicates for r in rows) == 19
    acks = acks_to(desk, ANNA)
    assert len(acks) == desk.settings.intake.ack_per_sender_per_hour
    alerts = [i for i in desk.outbox() if i.template == "staff_alert" and b"Mail flood from" in i.data]
    assert len(alerts) == 2  # once per technician (Tom, Tina), not once per suppressed ack
    print(f"\nL6: 220 deliveries, {len(rows)} stored, 19 duplicates, {len(acks)} acks, {len(alerts)} alerts")
