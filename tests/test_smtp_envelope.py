# SPDX-License-Identifier: MIT
"""SMTP intake, envelope phase: greeting, EHLO, MAIL and RCPT replies as a client sees them.

The listener is real (127.0.0.1, a free port); the ingest function is a fake that records its
calls. That is the handler's collaborator (the pipeline), not an external system, so faking it
here is allowed: these tests are about the SMTP conversation, not about storing mail.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy.orm import Session, sessionmaker

from maild.config import IntakeSettings, Settings, SmtpSettings
from maild.enums import Outcome
from maild.ingest.pipeline import IngestResult
from maild.ingest.raw import RawMail
from maild.ingest.smtp import IngestFn
from maild.ingest.smtp_server import ThreadedIntake, make_controller

SETTINGS = Settings(
    intake=IntakeSettings(address="support@example.com", extra={"macd@example.com": "macd"}),
    smtp=SmtpSettings(max_recipients=3, max_message_size=100_000),
)


def fake_ingest(calls: list[RawMail]) -> IngestFn:
    def ingest(factory: sessionmaker[Session], settings: Settings, raw: RawMail) -> IngestResult:
        calls.append(raw)
        return IngestResult("<m@x>", Outcome.NEW_CASE, 1, "")
    return ingest


@pytest.fixture
def calls() -> list[RawMail]:
    return []


def listener(settings: Settings, calls: list[RawMail]) -> ThreadedIntake:
    intake = make_controller(sessionmaker(), settings, ingest_fn=fake_ingest(calls), listen="127.0.0.1:0")
    return intake.start()


@pytest.fixture
def client(calls: list[RawMail]) -> Iterator[smtplib.SMTP]:
    intake = listener(SETTINGS, calls)
    smtp = smtplib.SMTP("127.0.0.1", intake.port, timeout=10)
    smtp.ehlo("mta.example.net")
    yield smtp
    smtp.close()
    intake.stop()


def cmd(smtp: smtplib.SMTP, line: str) -> tuple[int, str]:
    code, text = smtp.docmd(line)
    return code, text.decode()


def test_greeting_and_ehlo_reveal_no_software_and_offer_no_auth(calls: list[RawMail]) -> None:
    # The banner names no software/version; EHLO offers SIZE, 8BITMIME, SMTPUTF8 and no AUTH.
    intake = listener(SETTINGS, calls)
    try:
        smtp = smtplib.SMTP(timeout=10)
        code, banner = smtp.connect("127.0.0.1", intake.port)
        assert code == 220 and banner.decode().endswith(" ESMTP")
        assert "python" not in banner.decode().lower()
        code, _ = smtp.ehlo("mta.example.net")
        assert code == 250
        assert smtp.has_extn("size") and smtp.esmtp_features["size"] == "100000"
        assert smtp.has_extn("8bitmime") and smtp.has_extn("smtputf8")
        assert not smtp.has_extn("auth")
        smtp.quit()
    finally:
        intake.stop()


@pytest.mark.parametrize("rcpt", [
    "support@example.com", "SUPPORT@Example.COM", "macd@example.com",
    "support+case-12-abc@example.com", "support+case-12@example.com", "macd+case-7-Zq_9-x@EXAMPLE.com",
])
def test_intake_and_reply_addresses_are_accepted(client: smtplib.SMTP, rcpt: str) -> None:
    # Intake addresses and support+case-N[-token]@ reply addresses are accepted, case-insensitively.
    assert cmd(client, "MAIL FROM:<alice@customer.example>") == (250, "2.1.0 Ok")
    assert cmd(client, f"RCPT TO:<{rcpt}>") == (250, "2.1.5 Ok")


@pytest.mark.parametrize("rcpt", [
    "other@example.com", "support@other.example", "support+case-x@example.com",
    "support+case-12-abc@other.example", "sales+case-1@example.com", "support+case-@example.com",
    "support+case-1-@example.com", "support+foo@example.com",
])
def test_other_recipients_get_550_at_once(client: smtplib.SMTP, calls: list[RawMail], rcpt: str) -> None:
    # Anything that is not an intake or reply address is refused at RCPT with 550 5.1.1.
    cmd(client, "MAIL FROM:<alice@customer.example>")
    assert cmd(client, f"RCPT TO:<{rcpt}>") == (550, f"5.1.1 <{rcpt}>: recipient not accepted here")
    assert cmd(client, "DATA")[0] == 503  # nothing was accepted, so there is no transaction
    assert calls == []


def test_recipients_over_the_cap_get_452(client: smtplib.SMTP) -> None:
    # Beyond [smtp] max_recipients (3 here) each RCPT gets 452 4.5.3; the client sends them later.
    cmd(client, "MAIL FROM:<alice@customer.example>")
    for n in range(1, 4):
        assert cmd(client, f"RCPT TO:<support+case-{n}@example.com>")[0] == 250
    assert cmd(client, "RCPT TO:<support@example.com>") == (452, "4.5.3 Too many recipients")


def test_recipients_reach_the_envelope_once_each(client: smtplib.SMTP, calls: list[RawMail]) -> None:
    # A repeated RCPT is answered 250 but listed once; the envelope reaches ingest as sent.
    cmd(client, "MAIL FROM:<alice@customer.example>")
    cmd(client, "RCPT TO:<support@example.com>")
    cmd(client, "RCPT TO:<Support@example.com>")
    cmd(client, "RCPT TO:<macd@example.com>")
    assert cmd(client, "DATA")[0] == 354
    client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert client.getreply()[0] == 250
    assert calls[0].rcpt_tos == ("support@example.com", "macd@example.com")
    assert calls[0].mail_from == "alice@customer.example"
    assert calls[0].helo == "mta.example.net"


def test_size_over_the_limit_gets_552_at_mail(client: smtplib.SMTP) -> None:
    # MAIL FROM with SIZE= above [smtp] max_message_size is refused at once (RFC 1870, R1).
    assert cmd(client, "MAIL FROM:<a@customer.example> SIZE=100001") == (
        552, "5.3.4 Message size exceeds fixed limit")
    assert cmd(client, "MAIL FROM:<a@customer.example> SIZE=100000") == (250, "2.1.0 Ok")


def test_null_sender_is_accepted(client: smtplib.SMTP) -> None:
    # Bounces come from <>; they must reach intake so they can be matched to our outbound mail.
    assert cmd(client, "MAIL FROM:<>")[0] == 250
    assert cmd(client, "RCPT TO:<support@example.com>")[0] == 250


def test_low_disk_gets_452_at_mail(calls: list[RawMail]) -> None:
    # When free space is below 1.5 x the size limit, MAIL gets 452 4.3.1 (RELIABILITY D4).
    huge = replace(SETTINGS, smtp=replace(SETTINGS.smtp, max_message_size=2**62))
    intake = listener(huge, calls)
    try:
        smtp = smtplib.SMTP("127.0.0.1", intake.port, timeout=10)
        smtp.ehlo("mta.example.net")
        assert cmd(smtp, "MAIL FROM:<a@customer.example>") == (452, "4.3.1 Insufficient system storage")
        smtp.close()
    finally:
        intake.stop()
