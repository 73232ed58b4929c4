# SPDX-License-Identifier: MIT
"""Tests for deferred composition in maild.outbound.outbox: the bytes composed when the sender claims a
row are byte-for-byte what composing at queue time gave, they are composed once, and every retry and
every reader gets exactly those bytes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import acme_case
from servers import CaptureRelay
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

import maild.db
from maild.config import DeskSettings, RelaySettings, SecuritySettings, Settings
from maild.models import Case, CaseMessage, OutboxItem, Staff
from maild.outbound import queue_mail
from maild.outbound.compose import compose, serialize
from maild.outbound.outbox import Recipient, base_context, message_bytes
from maild.outbound.relay import Relay
from maild.outbound.render import render
from maild.outbound.sender import send_due
from maild.threading.addresses import reply_address
from maild.threading.subject import tag_subject

MT = ZoneInfo("America/Denver")
NOW = datetime(2026, 11, 20, 10, 0, 7, 654321, tzinfo=MT)  # microseconds: Thread-Index reads 100 ns ticks
OPENED = datetime(2026, 11, 19, 23, 59, 59, 123456, tzinfo=UTC)
SETTINGS = Settings(security=SecuritySettings(secret="test-secret"), desk=DeskSettings(name="Ünïcode Desk"))
STAFF = "tom@support.example.com"


@dataclass(frozen=True)
class Mail:
    """One queue_mail call: the template, its recipients and everything else it was given."""

    template: str
    to: tuple[tuple[str, str], ...]
    context: dict[str, Any]
    on_case: bool = True
    locale: str = "en"
    automatic: bool = True
    auto_kind: str = "auto-replied"
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


ALERT = {"alert": {"title": "Mail to x@y could not be delivered", "detail": "550 5.1.1 — no such user"}}
MAILS = {
    "ack": Mail("ack_new_case", (("Anna Ärger", "Anna@Acme.example"),), {}, in_reply_to="<c1@acme.example>",
                references=("<root@acme.example>", "<c1@acme.example>")),
    "ack_de": Mail("ack_new_case", (("José Müller", "jose@acme.example"),), {}, locale="de",
                   in_reply_to="<c2@acme.example>"),
    "staff_reply": Mail("staff_reply", (("", "anna@acme.example"), ("Bob", "bob@acme.example")),
                        {"body": "Grüße – try this:\n" + "x" * 200 + "\n", "awaiting_customer": True,
                         "staff": {"name": "Tom", "email": STAFF}}, automatic=False),
    "alert_no_case": Mail("staff_alert", (("Tom Tech", STAFF),), ALERT, on_case=False, auto_kind="auto-generated"),
    "alert_on_case": Mail("staff_alert", (("", STAFF),), ALERT, auto_kind="auto-generated"),
}  # fmt: skip
SUBJECTS = ["Telefone außer Betrieb – dringend 電話", "Re: =?utf-8?q?caf=C3=A9?= down", "hi\r\nBcc: evil@x"]


@pytest.fixture
def factory(store_url: str) -> Iterator[sessionmaker[Session]]:
    engine, factory = maild.db.open_store(store_url)
    yield factory
    engine.dispose()


def make_case(s: Session, subject: str) -> Case:
    return acme_case(s, subject, OPENED)


def queue(s: Session, mail: Mail, case: Case | None, settings: Settings = SETTINGS) -> list[OutboxItem]:
    return queue_mail(s, settings, template=mail.template, locale=mail.locale, to=mail.to, context=mail.context,
                      now=NOW, case=case, in_reply_to=mail.in_reply_to, references=mail.references,
                      automatic=mail.automatic, auto_kind=mail.auto_kind)  # fmt: skip


def eager(mail: Mail, case: Case | None, rcpt: Recipient, message_id: str) -> tuple[bytes, str]:
    """What queue_mail stored before composition was deferred (the same compose call, at once): the
    bytes, and the Subject it put on the row."""
    rendered = render(mail.template, mail.locale, {**base_context(SETTINGS, case, rcpt), **mail.context},
                      settings=SETTINGS)  # fmt: skip
    msg = compose(
        SETTINGS, rendered, to=rcpt.email, to_name=rcpt.name, message_id=message_id,
        case_number=None if case is None else case.id, in_reply_to=mail.in_reply_to, references=mail.references,
        automatic=mail.automatic, auto_kind=mail.auto_kind, now=NOW,
        reply_to=None if case is None else reply_address(SETTINGS.support_address, case.id, SETTINGS.secret_bytes),
        thread_topic=None if case is None else tag_subject(case.subject, case.id),
        thread_started=None if case is None else case.created_at,
    )  # fmt: skip
    return serialize(msg), str(msg["Subject"])


@pytest.mark.parametrize("subject", SUBJECTS)
def test_deferred_bytes_equal_eager_bytes(factory: sessionmaker[Session], subject: str) -> None:
    # Ack, staff reply, staff_alert with and without a case, non-ASCII names and subjects: composed after
    # a round trip through the store, each row's bytes and Subject are exactly what composing at once gave.
    with maild.db.transaction(factory) as s:
        case = make_case(s, subject)
        expected: dict[int, tuple[bytes, str]] = {}
        for mail in MAILS.values():
            on = case if mail.on_case else None
            items = queue(s, mail, on)
            s.flush()
            for item, (name, email) in zip(items, mail.to, strict=True):
                random.seed(item.id)
                expected[item.id] = eager(mail, on, Recipient(name, email), item.message_id)
    with maild.db.transaction(factory) as s:
        items = list(s.scalars(select(OutboxItem).order_by(OutboxItem.id)))
        assert len(items) == len(expected) == 6
        assert all(i.data is None and i.pending is not None for i in items)
        for item in items:
            random.seed(item.id)  # the same MIME boundary (email.generator draws it from random)
            assert (message_bytes(item, SETTINGS), item.subject) == expected[item.id]
    with maild.db.transaction(factory) as s:  # stored: later readers get the same bytes, nothing pending
        assert {i.id: (i.data, i.subject) for i in s.scalars(select(OutboxItem))} == expected
        assert s.scalars(select(OutboxItem).where(OutboxItem.pending.is_not(None))).all() == []


def test_mail_with_attachments_is_composed_at_once(factory: sessionmaker[Session]) -> None:
    # An invoice carries its PDF: it is composed when queued (no draft), and reading it changes nothing.
    with maild.db.transaction(factory) as s:
        (item,) = queue_mail(s, SETTINGS, template="invoice", locale="en", to=[("", "finance@acme.example")],
                             context={"period": "2026-11", "filename": "a.pdf"}, now=NOW,
                             attachments=[("a.pdf", "application/pdf", b"%PDF-1.4 test")])  # fmt: skip
        assert item.pending is None and item.data is not None and b"%PDF" not in item.data  # base64 part
        assert message_bytes(item, SETTINGS) is item.data


def test_queueing_flushes_once_for_all_rows(factory: sessionmaker[Session]) -> None:
    # A staff reply on a case to two people: one flush for both rows (not one per row), after which
    # every returned row has its id and the case history's copies point at their rows.
    with maild.db.transaction(factory) as s:
        case = make_case(s, "Phones down")
        flushes: list[object] = []
        event.listen(s, "before_flush", lambda *a: flushes.append(a))
        items = queue(s, MAILS["staff_reply"], case)
        assert len(flushes) == 1 and len(items) == 2 and all(i.id is not None for i in items)
        copies = s.scalars(select(CaseMessage).order_by(CaseMessage.id)).all()
        assert [(c.outbox_id, c.message_id) for c in copies] == [(i.id, i.message_id) for i in items]


def test_a_second_reader_gets_the_first_readers_bytes(factory: sessionmaker[Session]) -> None:
    # Two readers compose the same row (say a test helper and the sender): the first one's bytes are
    # stored, and the one that loaded the row before them returns those, not its own (MIME boundary).
    with maild.db.transaction(factory) as s:
        (item,) = queue(s, MAILS["ack"], make_case(s, "Phones down"))  # multipart: a random boundary
        item_id = item.id
    with maild.db.transaction(factory) as s:
        stale = s.get(OutboxItem, item_id)  # loaded before the other reader stored its bytes
        assert stale is not None and stale.data is None
    with maild.db.transaction(factory) as s:
        first_row = s.get(OutboxItem, item_id)
        assert first_row is not None
        first = message_bytes(first_row, SETTINGS)
    with maild.db.transaction(factory) as s:
        s.add(stale)
        assert stale.data is None and message_bytes(stale, SETTINGS) == first
        assert stale.pending is None and not s.dirty
    with maild.db.transaction(factory) as s:
        assert s.scalars(select(OutboxItem.data).where(OutboxItem.id == item_id)).one() == first


def ack_row(factory: sessionmaker[Session], settings: Settings) -> int:
    with maild.db.transaction(factory) as s:
        s.add(Staff(email=STAFF, name="Tom Tech"))
        (item,) = queue(s, MAILS["ack"], make_case(s, "Phones down"), settings)
        s.flush()
        return item.id


def test_bytes_are_composed_once_before_the_first_attempt(
    factory: sessionmaker[Session], relay: CaptureRelay
) -> None:
    # RELIABILITY rule 4 / STYLE §5: the first attempt stores the bytes; a retry after the desk's name
    # (or a template, or the code) changed sends exactly those bytes again, Message-ID and Date included.
    settings = replace(SETTINGS, relay=RelaySettings(host=relay.host, port=relay.port, timeout=10))
    item_id = ack_row(factory, settings)
    relay.fail_next(1, "451 4.3.0 try later")
    (first,) = send_due(factory, settings, NOW, relay=Relay(settings, connect_wait=0))
    assert first["action"] == "retry"
    with maild.db.transaction(factory) as s:
        row = s.get(OutboxItem, item_id)
        assert row is not None and row.pending is None and row.data is not None
        stored = row.data
        later = row.next_attempt_at
    renamed = replace(settings, desk=DeskSettings(name="Another Name"))
    (second,) = send_due(factory, renamed, later, relay=Relay(renamed, connect_wait=0))
    assert second["action"] == "sent"
    (copy,) = relay.messages
    assert copy.raw.rstrip(b"\r\n") == stored.rstrip(b"\r\n") and b"Another Name" not in copy.raw


def test_a_row_that_cannot_be_composed_fails_alone(factory: sessionmaker[Session], relay: CaptureRelay) -> None:
    # A draft compose refuses (here: a format this maild does not know) fails that row and tells staff;
    # it neither stops the sender nor keeps the rows queued after it from going out.
    settings = replace(SETTINGS, relay=RelaySettings(host=relay.host, port=relay.port, timeout=10))
    bad_id = ack_row(factory, settings)
    with maild.db.transaction(factory) as s:
        bad = s.get(OutboxItem, bad_id)
        assert bad is not None and bad.pending is not None
        bad.pending = {**bad.pending, "v": 99}
        (good,) = queue(s, MAILS["alert_no_case"], None, settings)
        s.flush()
        good_id = good.id
    actions = send_due(factory, settings, NOW, relay=Relay(settings, connect_wait=0))
    assert [a["action"] for a in actions] == ["failed", "sent", "sent"]  # the bad row, the good one, the alert
    with maild.db.transaction(factory) as s:
        bad, good = s.get(OutboxItem, bad_id), s.get(OutboxItem, good_id)
        assert bad is not None and good is not None
        assert bad.status == "failed" and "cannot compose" in (bad.last_error or "") and bad.data is None
        assert good.status == "sent"
    assert [m.rcpt_tos for m in relay.messages] == [(STAFF,), (STAFF,)]
    assert "could not be delivered" in str(relay.messages[1].message["Subject"])
