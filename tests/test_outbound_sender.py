# SPDX-License-Identifier: MIT
"""Tests for maild.outbound.sender and relay against a real SMTP relay on 127.0.0.1 (CaptureRelay)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from servers import CaptureRelay
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

import maild.blobio
import maild.db
from maild.config import RelaySettings, SecuritySettings, Settings
from maild.models import Case, CaseEvent, OutboxItem, Staff
from maild.outbound import queue_mail
from maild.outbound.relay import Relay
from maild.outbound.sender import run_until_empty, send_due

NOW = datetime(2026, 11, 20, 17, 0, tzinfo=UTC)
CUSTOMER = "anna@acme.example"
STAFF = "tom@support.example.com"


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, factory = maild.db.open_store(f"sqlite:///{tmp_path}/t.db")
    with maild.db.transaction(factory) as s:
        s.add(Staff(email=STAFF, name="Tom Tech"))
    yield factory
    engine.dispose()


@pytest.fixture
def settings(relay: CaptureRelay) -> Settings:
    return Settings(security=SecuritySettings(secret="test-secret"),
                    relay=RelaySettings(host=relay.host, port=relay.port, timeout=10))  # fmt: skip


def fast(settings: Settings) -> Relay:
    """The real relay client, without the pause between its two connection attempts."""
    return Relay(settings, connect_wait=0)


def queue_ack(factory: sessionmaker[Session], settings: Settings, to: list[str] | None = None,
              attachments: list[tuple[str, str, bytes]] | None = None) -> list[int]:
    with maild.db.transaction(factory) as s:
        case = Case(subject="Phones down", requester=CUSTOMER, created_at=NOW, updated_at=NOW)
        s.add(case)
        s.flush()
        items = queue_mail(s, settings, template="ack_new_case", locale="en",
                           to=[("", a) for a in (to or [CUSTOMER])], context={}, now=NOW, case=case,
                           attachments=attachments or ())  # fmt: skip
        s.flush()
        return [i.id for i in items]


def row(factory: sessionmaker[Session], item_id: int) -> OutboxItem:
    with maild.db.transaction(factory) as s:
        item = s.get(OutboxItem, item_id)
        assert item is not None
        return item


def alerts(factory: sessionmaker[Session]) -> list[OutboxItem]:
    with maild.db.transaction(factory) as s:
        return list(s.scalars(select(OutboxItem).where(OutboxItem.template == "staff_alert")))


def test_temporary_failures_back_off_then_one_copy_is_delivered(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # O1: 451 three times, then 250 -> exactly one copy, attempts 4, back-off 5/10/20 minutes persisted.
    (item_id,) = queue_ack(factory, settings)
    relay.fail_next(3, "451 4.3.0 try later")
    now, waits = NOW, []
    for _ in range(3):
        (action,) = send_due(factory, settings, now, relay=fast(settings))
        assert action["action"] == "retry"
        item = row(factory, item_id)
        assert item.status == "queued" and item.claimed_until is None and "451" in (item.last_error or "")
        assert send_due(factory, settings, item.next_attempt_at - timedelta(seconds=1), relay=fast(settings)) == []
        waits.append(item.next_attempt_at - now)
        now = item.next_attempt_at
    assert waits == [timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=20)]
    assert [a["action"] for a in send_due(factory, settings, now, relay=fast(settings))] == ["sent"]
    item = row(factory, item_id)
    assert (item.status, item.attempts, item.sent_at, item.last_error) == ("sent", 4, now, None)
    (copy,) = relay.messages
    assert copy.message["Message-ID"] == f"<{item.message_id}>"
    assert copy.raw.rstrip(b"\r\n") == item.data.rstrip(b"\r\n")  # the stored bytes, unchanged
    assert copy.mail_from == "support@example.com" and copy.rcpt_tos == (CUSTOMER,)


def test_a_sent_row_is_never_sent_again(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # SPEC §6 "nothing is sent twice": a second run, even much later, sends nothing.
    queue_ack(factory, settings)
    assert [a["action"] for a in send_due(factory, settings, NOW, relay=fast(settings))] == ["sent"]
    assert send_due(factory, settings, NOW + timedelta(days=3), relay=fast(settings)) == []
    assert len(relay.messages) == 1


def test_permanent_failure_alerts_staff_and_never_the_customer(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # O2: 550 at RCPT -> failed at once, no copy to the customer, an alert to staff, an event on the case.
    (item_id,) = queue_ack(factory, settings)
    relay.reject_rcpt(CUSTOMER)
    actions = run_until_empty(factory, settings, NOW, relay=fast(settings))
    assert [a["action"] for a in actions] == ["failed", "sent"]
    item = row(factory, item_id)
    assert item.status == "failed" and item.attempts == 1 and "550" in (item.last_error or "")
    assert [m.rcpt_tos for m in relay.messages] == [(STAFF,)]
    assert all(m.mail_from == "support@example.com" for m in relay.messages)  # never <>
    alert = relay.messages[0].message
    assert alert["Auto-Submitted"] == "auto-generated" and CUSTOMER in alert["Subject"]
    with maild.db.transaction(factory) as s:
        event = s.scalars(select(CaseEvent)).one()
        assert event.kind == "mail-failed" and event.case_id == item.case_id


def test_rejected_data_is_permanent_too(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # O2: 554 after DATA ends the row just like a 550 at RCPT.
    (item_id,) = queue_ack(factory, settings)
    relay.fail_next(1, "554 5.7.1 rejected")
    assert send_due(factory, settings, NOW, relay=fast(settings))[0]["action"] == "failed"
    assert row(factory, item_id).last_error == "permanent failure: 554 5.7.1 rejected (at DATA)"


def test_relay_down_keeps_the_row_queued_and_moves_the_next_attempt(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # A refused connection is temporary: the row stays queued with a later next_attempt_at; sent on recovery.
    (item_id,) = queue_ack(factory, settings)
    relay.stop()
    (action,) = send_due(factory, settings, NOW, relay=fast(settings))
    item = row(factory, item_id)
    assert action["action"] == "retry" and item.status == "queued" and item.attempts == 1
    assert item.next_attempt_at == NOW + timedelta(minutes=5)
    relay.start()
    assert send_due(factory, settings, item.next_attempt_at, relay=fast(settings))[0]["action"] == "sent"
    assert len(relay.messages) == 1


def test_connection_dropped_after_data_is_retried_with_the_same_message_id(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # O4: no reply after the final dot counts as 451; the retry carries the same Message-ID.
    (item_id,) = queue_ack(factory, settings)
    relay.drop_next(1)
    assert send_due(factory, settings, NOW, relay=fast(settings))[0]["action"] == "retry"
    assert "451" in (row(factory, item_id).last_error or "")
    send_due(factory, settings, NOW + timedelta(minutes=5), relay=fast(settings))
    ids = {m.message["Message-ID"] for m in [*relay.refused, *relay.messages]}
    assert ids == {f"<{row(factory, item_id).message_id}>"} and row(factory, item_id).status == "sent"


def test_temporary_failures_expire_after_give_up_hours(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # O5: 4yz for days -> failed "expired after N attempts" at the 96-hour lifetime, staff alerted.
    (item_id,) = queue_ack(factory, settings)
    relay.reject_rcpt(CUSTOMER, "450 4.2.0 mailbox busy")
    now = NOW
    for _ in range(100):
        action = send_due(factory, settings, now, relay=fast(settings))[0]
        if action["action"] == "failed":
            break
        now = row(factory, item_id).next_attempt_at
    item = row(factory, item_id)
    assert item.status == "failed" and (item.last_error or "").startswith(f"expired after {item.attempts} attempts")
    assert now == NOW + timedelta(hours=96)
    assert item.attempts < 40  # the back-off is capped at 4 hours, not a hot loop
    assert [a.to_addr for a in alerts(factory)] == [STAFF]
    assert [m.rcpt_tos for m in relay.messages] == [(STAFF,)]  # the alert went out; nothing to the customer


def test_failed_alert_raises_no_further_alert(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # RELIABILITY rule 4: never a notice about a notice; the alert's own failure is only recorded.
    queue_ack(factory, settings)
    relay.reject_rcpt(CUSTOMER)
    relay.reject_rcpt(STAFF)
    actions = run_until_empty(factory, settings, NOW, relay=fast(settings))
    assert [a["action"] for a in actions] == ["failed", "failed"]
    (alert,) = alerts(factory)
    assert alert.status == "failed"
    assert relay.messages == []


def test_per_recipient_rows_are_sent_or_failed_separately(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # O3: one recipient 250, the other 550 -> one sent row, one failed row; the relay holds one copy.
    good, bad = "good@acme.example", "bad@acme.example"
    ids = queue_ack(factory, settings, to=[good, bad])
    relay.reject_rcpt(bad)
    send_due(factory, settings, NOW, relay=fast(settings), limit=2)
    assert [(row(factory, i).to_addr, row(factory, i).status) for i in ids] == [(good, "sent"), (bad, "failed")]
    assert [m.rcpt_tos for m in relay.messages] == [(good,)]


def test_a_batch_of_mail_goes_over_one_relay_connection(factory: sessionmaker[Session], settings: Settings,
                                                        relay: CaptureRelay) -> None:
    # Five queued acknowledgements: all five reach the relay in one SMTP session, not five handshakes.
    ids = queue_ack(factory, settings, to=[f"user{n}@acme.example" for n in range(5)])
    actions = send_due(factory, settings, NOW, relay=fast(settings))
    assert [a["action"] for a in actions] == ["sent"] * 5
    got = relay.wait_for(5)
    assert sorted(m.rcpt_tos[0] for m in got) == [f"user{n}@acme.example" for n in range(5)]
    assert len({m.peer for m in got}) == 1
    assert all(row(factory, i).status == "sent" for i in ids)


def test_a_refused_mail_does_not_spoil_the_connection_for_the_next(factory: sessionmaker[Session],
                                                                  settings: Settings, relay: CaptureRelay) -> None:
    # The relay refuses one recipient mid-batch: that row fails alone (staff are told), the others are sent.
    relay.reject_rcpt("user1@acme.example")
    queue_ack(factory, settings, to=[f"user{n}@acme.example" for n in range(3)])
    actions = send_due(factory, settings, NOW, relay=fast(settings))
    assert {a["to"]: a["action"] for a in actions} == {
        "user0@acme.example": "sent", "user1@acme.example": "failed", "user2@acme.example": "sent",
        STAFF: "sent"}
    assert sorted(m.rcpt_tos[0] for m in relay.messages if m.rcpt_tos[0].startswith("user")) == [
        "user0@acme.example", "user2@acme.example"]


LOG = ("trace.log", "text/plain", b"12:00:01 link down\n" * 200)


def test_a_stored_mail_that_cannot_be_read_is_deferred_and_the_rest_go(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mail with attachments is stored composed and read just before its delivery. If that read fails
    # (the store has an I/O error), the row is deferred like a relay's 4xx, not left claimed with
    # the rest of its batch behind it.
    to = ["a@acme.example", "b@acme.example", "c@acme.example"]
    ids = queue_ack(factory, settings, to=to, attachments=[LOG])
    real = maild.blobio.read

    def failing(engine: Any, table: Any, column: str, row_id: int, *args: Any, **kwargs: Any) -> Any:
        if row_id == ids[1]:
            raise sqlite3.OperationalError("disk I/O error")
        return real(engine, table, column, row_id, *args, **kwargs)

    monkeypatch.setattr(maild.blobio, "read", failing)
    actions = send_due(factory, settings, NOW, relay=fast(settings))
    assert [(a["to"], a["action"]) for a in actions] == [(to[0], "sent"), (to[1], "retry"), (to[2], "sent")]
    assert "cannot read the stored mail" in actions[1]["error"]
    assert sorted(m.rcpt_tos[0] for m in relay.wait_for(2)) == [to[0], to[2]]
    monkeypatch.undo()
    later = row(factory, ids[1]).next_attempt_at
    assert [a["action"] for a in send_due(factory, settings, later, relay=fast(settings))] == ["sent"]
    [attachment] = relay.wait_for(3)[2].message.iter_attachments()
    assert attachment.get_content().encode() == LOG[2]


def test_stored_mail_is_read_once_per_delivery(
    factory: sessionmaker[Session], settings: Settings, relay: CaptureRelay
) -> None:
    # The claim and the record of the outcome leave the bytes alone; only the read before delivery
    # takes them (so a large mail is in memory once, and never read under the write lock).
    queue_ack(factory, settings, to=["a@acme.example", "b@acme.example"], attachments=[LOG])
    engine = factory.kw["bind"]
    selected: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if re.search(r"outbox\.data(,|\s+FROM)", statement):
            selected.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert [a["action"] for a in send_due(factory, settings, NOW, relay=fast(settings))] == ["sent", "sent"]
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert selected == []
    assert len(relay.wait_for(2)) == 2
