# SPDX-License-Identifier: MIT
"""Tests for maild.outbound.outbox: rows per recipient, dedupe, bounce blocks, claims, JSON shape."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from helpers import acme_case
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import maild.db
from maild.config import SecuritySettings, Settings
from maild.models import BouncingAddress, Case, CaseEvent, CaseMessage, OutboxItem, ThreadId
from maild.outbound import queue_mail
from maild.outbound.outbox import claim_due, mark_bounced, message_bytes, outbox_json

NOW = datetime(2026, 11, 20, 17, 0, tzinfo=UTC)
SETTINGS = Settings(security=SecuritySettings(secret="test-secret"))
WINDOW = {"kind": "monthly", "start": NOW, "end": NOW + timedelta(hours=6), "products": ["cloud"],
          "description": "Upgrade", "reason": "Security"}  # fmt: skip


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, factory = maild.db.open_store(f"sqlite:///{tmp_path}/t.db")
    yield factory
    engine.dispose()


def make_case(s: Session, subject: str = "Phones down") -> Case:
    return acme_case(s, subject, NOW)


def test_case_ack_is_one_row_with_thread_records(factory: sessionmaker[Session]) -> None:
    # An ack on a case is a queued row (bytes composed on first read), a CaseMessage and a ThreadId for its id.
    with maild.db.transaction(factory) as s:
        case = make_case(s)
        items = queue_mail(s, SETTINGS, template="ack_new_case", locale="de", to=[("Anna", "Anna@Acme.example")],
                           context={}, now=NOW, case=case, in_reply_to="<cust@acme.example>")  # fmt: skip
        assert len(items) == 1
        case_id = case.id
    with maild.db.transaction(factory) as s:
        item = s.scalars(select(OutboxItem)).one()
        assert (item.status, item.attempts, item.to_addr, item.case_id) == ("queued", 0, "anna@acme.example", case_id)
        assert item.next_attempt_at == NOW and item.expires_at == NOW + timedelta(hours=96)
        assert item.data is None and item.pending is not None  # composed off the intake's path
        msg = message_from_bytes(message_bytes(item, SETTINGS), policy=policy.default)
        assert item.data is not None and item.pending is None  # stored: composed once
        assert msg["Message-ID"] == f"<{item.message_id}>" and item.message_id.endswith("@example.com")
        assert msg["Subject"] == f"[Case #{case_id}] Wir haben Ihre Anfrage erhalten: Phones down"
        assert msg["In-Reply-To"] == "<cust@acme.example>"
        assert s.get(ThreadId, (item.message_id, case_id)) is not None
        cm = s.scalars(select(CaseMessage)).one()
        assert (cm.direction, cm.author, cm.outbox_id, cm.message_id) == ("out", "system", item.id, item.message_id)
        assert "Fall #" in cm.text


def test_one_row_per_recipient_each_with_its_own_message_id(factory: sessionmaker[Session]) -> None:
    # RELIABILITY O3: three maintenance contacts -> three rows, three ids; duplicates collapse.
    to = [("A", "a@acme.example"), ("B", "b@acme.example"), ("C", "c@acme.example"), ("A2", "A@acme.example")]
    with maild.db.transaction(factory) as s:
        items = queue_mail(s, SETTINGS, template="maintenance_reminder", locale="en", to=to,
                           context={"window": WINDOW}, now=NOW, auto_kind="auto-generated")  # fmt: skip
        assert [i.to_addr for i in items] == ["a@acme.example", "b@acme.example", "c@acme.example"]
        assert len({i.message_id for i in items}) == 3
        first = message_from_bytes(message_bytes(items[0], SETTINGS), policy=policy.default)
        assert first["To"].addresses[0].display_name == "A" and first["Auto-Submitted"] == "auto-generated"
        assert "Hello A," in first.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_dedupe_key_prevents_a_second_row(factory: sessionmaker[Session]) -> None:
    # A scheduled notice queued twice with the same key (e.g. a replayed tick) yields one row per person.
    for _ in range(2):
        with maild.db.transaction(factory) as s:
            queue_mail(s, SETTINGS, template="maintenance_start", locale="en", to=[("A", "a@acme.example")],
                       context={"window": WINDOW}, now=NOW, dedupe_key="maint:7:start:1")  # fmt: skip
    with maild.db.transaction(factory) as s:
        queue_mail(s, SETTINGS, template="maintenance_start", locale="en",
                   to=[("A", "a@acme.example"), ("B", "b@acme.example")],
                   context={"window": WINDOW}, now=NOW, dedupe_key="maint:7:start:1")  # fmt: skip
        rows = s.scalars(select(OutboxItem).order_by(OutboxItem.id)).all()
        assert [r.to_addr for r in rows] == ["a@acme.example", "b@acme.example"]


def test_bouncing_address_gets_no_automatic_mail(factory: sessionmaker[Session]) -> None:
    # L2: a hard-bounced address gets no ack until the block ends; a human staff reply still goes.
    with maild.db.transaction(factory) as s:
        case = make_case(s)
        s.add(BouncingAddress(address="anna@acme.example", until=NOW + timedelta(days=1), reason="550"))
        to = [("Anna", "anna@acme.example")]
        assert queue_mail(s, SETTINGS, template="ack_new_case", locale="en", to=to, context={}, now=NOW,
                          case=case) == []  # fmt: skip
        reply = queue_mail(s, SETTINGS, template="staff_reply", locale="en", to=to, now=NOW, case=case,
                           automatic=False, context={"body": "Hi", "staff": {"name": "Tom", "email": "t@x.example"},
                                                     "awaiting_customer": False})  # fmt: skip
        assert len(reply) == 1
        later = NOW + timedelta(days=2)
        assert len(queue_mail(s, SETTINGS, template="ack_reopened", locale="en", to=to, context={}, now=later,
                              case=case)) == 1  # fmt: skip


def test_malformed_recipient_is_skipped_not_fatal(factory: sessionmaker[Session]) -> None:
    # An address with CR/LF or without @ never reaches compose; the good one is still queued.
    with maild.db.transaction(factory) as s:
        items = queue_mail(s, SETTINGS, template="invoice", locale="en",
                           to=[("X", "x@evil.example\r\nRCPT TO:<y@evil.example>"), ("", "nope"),
                               ("F", "finance@acme.example")],
                           context={"period": "2026-11", "filename": "a.pdf"}, now=NOW,
                           attachments=[("a.pdf", "application/pdf", b"%PDF")])  # fmt: skip
        assert [i.to_addr for i in items] == ["finance@acme.example"]


def test_claim_due_takes_due_unclaimed_rows_only(factory: sessionmaker[Session]) -> None:
    # A claimed row is invisible to a second claimer until its lease ends; future rows wait.
    with maild.db.transaction(factory) as s:
        queue_mail(s, SETTINGS, template="invoice", locale="en", to=[("", "a@acme.example"), ("", "b@acme.example")],
                   context={"period": "2026-11", "filename": "a.pdf"}, now=NOW)  # fmt: skip
        s.scalars(select(OutboxItem).where(OutboxItem.to_addr == "b@acme.example")).one().next_attempt_at = (
            NOW + timedelta(hours=1)
        )
    with maild.db.transaction(factory) as s:
        assert [i.to_addr for i in claim_due(s, NOW, 10, timedelta(minutes=5))] == ["a@acme.example"]
    with maild.db.transaction(factory) as s:
        assert claim_due(s, NOW + timedelta(minutes=1), 10, timedelta(minutes=5)) == []
        later = claim_due(s, NOW + timedelta(hours=2), 10, timedelta(minutes=5))
        assert sorted(i.to_addr for i in later) == ["a@acme.example", "b@acme.example"]


def test_outbox_json_has_the_contract_shape(factory: sessionmaker[Session]) -> None:
    # CONTRACT: {"id","case","template","to","subject","message_id","status","attempts","last_error"}.
    with maild.db.transaction(factory) as s:
        case = make_case(s)
        (item,) = queue_mail(s, SETTINGS, template="closed_no_response", locale="pt", to=[("", "a@acme.example")],
                             context={}, now=NOW, case=case)  # fmt: skip
        data = outbox_json(item)
    assert set(data) == {"id", "case", "template", "to", "subject", "message_id", "status", "attempts", "last_error"}
    assert data["status"] == "queued" and data["case"] == case.id and data["to"] == "a@acme.example"
    assert data["subject"] == f"[Case #{case.id}] Caso encerrado: Phones down"


def test_mark_bounced_blocks_the_address_and_records_on_the_case(factory: sessionmaker[Session]) -> None:
    # A permanent DSN: row bounced, address blocked 30 days, event on the case.
    with maild.db.transaction(factory) as s:
        case = make_case(s)
        (item,) = queue_mail(s, SETTINGS, template="ack_new_case", locale="en", to=[("", "a@acme.example")],
                             context={}, now=NOW, case=case)  # fmt: skip
        mid = item.message_id
    with maild.db.transaction(factory) as s:
        found = mark_bounced(s, f"<{mid}>", "A@acme.example", "550 5.1.1 no such user", NOW)
        assert found is not None and found.status == "bounced"
        assert mark_bounced(s, "<unknown@example.com>", None, "x", NOW) is None
    with maild.db.transaction(factory) as s:
        block = s.get(BouncingAddress, "a@acme.example")
        assert block is not None and block.until == NOW + timedelta(days=30)
        event = s.scalars(select(CaseEvent)).one()
        assert event.kind == "mail-bounced" and event.detail["to"] == "a@acme.example"
