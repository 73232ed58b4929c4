# SPDX-License-Identifier: MIT
"""SMTP intake, DATA phase: 250 only after ingest returned, 451 on failure, bounds before parsing.

The listener is real (127.0.0.1, a free port); the ingest function is a fake (it records, blocks
or raises). It stands in for the handler's collaborator, the pipeline, which is not an external
system, so these tests pin down what the MTA sees for each thing the pipeline can do.
"""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings, SmtpSettings
from maild.enums import Outcome
from maild.ingest.pipeline import IngestResult
from maild.ingest.raw import RawMail
from maild.ingest.smtp import IntakeHandler
from maild.ingest.smtp_server import ThreadedIntake, make_controller

SETTINGS = Settings(smtp=SmtpSettings(max_message_size=2_000_000))
MESSAGE = b"From: alice@customer.example\r\nMessage-ID: <m1@customer.example>\r\nSubject: hi\r\n\r\nbody\r\n"

Ingest = Callable[[sessionmaker[Session], Settings, RawMail], IngestResult]


class FakePipeline:
    """Records every RawMail; optionally blocks until released, or raises."""

    def __init__(self, error: Exception | None = None, block: bool = False) -> None:
        self.calls: list[RawMail] = []
        self.error = error
        self.entered = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, factory: sessionmaker[Session], settings: Settings, raw: RawMail) -> IngestResult:
        self.entered.set()
        assert self.release.wait(10)
        if self.error is not None:
            raise self.error
        self.calls.append(raw)
        return IngestResult("<m1@customer.example>", Outcome.NEW_CASE, 12, "")


@pytest.fixture
def serve() -> Iterator[Callable[[Ingest], ThreadedIntake]]:
    started: list[ThreadedIntake] = []

    def start(ingest: Ingest) -> ThreadedIntake:
        intake = make_controller(sessionmaker(), SETTINGS, ingest_fn=ingest, listen="127.0.0.1:0")
        started.append(intake.start())
        return intake

    yield start
    for intake in started:
        intake.stop()


def session(intake: ThreadedIntake) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", intake.port, timeout=10)
    smtp.ehlo("mta.example.net")
    assert smtp.docmd("MAIL FROM:<alice@customer.example>")[0] == 250
    assert smtp.docmd("RCPT TO:<support@example.com>")[0] == 250
    return smtp


def send_data(smtp: smtplib.SMTP, payload: bytes) -> tuple[int, str]:
    assert smtp.docmd("DATA")[0] == 354
    smtp.send(payload + b".\r\n")
    code, text = smtp.getreply()
    return code, text.decode()


def test_250_comes_only_after_ingest_returned(serve: Callable[[Ingest], ThreadedIntake]) -> None:
    # The reply to DATA waits for the pipeline (which has committed when it returns): rule 1.
    pipeline = FakePipeline(block=True)
    smtp = session(serve(pipeline))
    assert smtp.docmd("DATA")[0] == 354
    smtp.send(MESSAGE + b".\r\n")
    assert pipeline.entered.wait(10)
    assert smtp.sock is not None
    smtp.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        smtp.sock.recv(1)  # nothing yet: ingest is still running
    smtp.sock.settimeout(10)
    pipeline.release.set()
    assert smtp.getreply() == (250, b"2.0.0 Ok: queued as case-12")
    assert len(pipeline.calls) == 1


def test_rawmail_carries_the_exact_bytes_and_envelope(serve: Callable[[Ingest], ThreadedIntake]) -> None:
    # The bytes reach ingest undecoded (8-bit, dot-unstuffed) with the envelope and session facts.
    pipeline = FakePipeline()
    smtp = session(serve(pipeline))
    body = MESSAGE + "Grüße\r\n".encode("latin-1") + b"..leading dot\r\n"
    assert send_data(smtp, body)[0] == 250
    raw = pipeline.calls[0]
    assert raw.data == MESSAGE + "Grüße\r\n".encode("latin-1") + b".leading dot\r\n"
    assert (raw.source, raw.mail_from, raw.rcpt_tos) == ("smtp", "alice@customer.example",
                                                         ("support@example.com",))
    assert (raw.peer, raw.helo, raw.tls) == ("127.0.0.1", "mta.example.net", False)
    assert raw.received_at is not None and raw.received_at.tzinfo is not None


def test_storage_failure_answers_451_without_details(serve: Callable[[Ingest], ThreadedIntake]) -> None:
    # A locked database is a local, temporary failure: 451 4.3.0, no exception text (D4).
    locked = OperationalError("INSERT INTO raw_message", {}, Exception("database is locked"))
    smtp = session(serve(FakePipeline(error=locked)))
    code, text = send_data(smtp, MESSAGE)
    assert (code, text) == (451, "4.3.0 Requested action aborted: local error in processing")
    assert "locked" not in text and "INSERT" not in text
    # The session is usable afterwards: the MTA can retry on the same connection.
    assert smtp.docmd("MAIL FROM:<alice@customer.example>")[0] == 250


def test_unexpected_error_in_a_hook_answers_451_not_500(
        serve: Callable[[Ingest], ThreadedIntake], monkeypatch: pytest.MonkeyPatch) -> None:
    # aiosmtpd's own exception path would say "500 Error: (RuntimeError) ..."; maild says 451.
    def broken(self: IntakeHandler, address: str) -> bool:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(IntakeHandler, "accepts", broken)
    smtp = smtplib.SMTP("127.0.0.1", serve(FakePipeline()).port, timeout=10)
    smtp.ehlo("mta.example.net")
    smtp.docmd("MAIL FROM:<alice@customer.example>")
    code, text = smtp.docmd("RCPT TO:<support@example.com>")
    assert (code, text) == (451, b"4.3.0 Requested action aborted: local error in processing")


def with_received(n: int) -> bytes:
    hops = b"".join(b"Received: from h%d.example by h%d.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                    % (i, i + 1) for i in range(n))
    return hops + MESSAGE


@pytest.mark.parametrize(("hops", "code"), [(49, 250), (50, 250), (51, 554), (101, 554)])
def test_too_many_received_headers_are_refused_before_ingest(
        serve: Callable[[Ingest], ThreadedIntake], hops: int, code: int) -> None:
    # Up to [intake] max_received (50) hops are accepted; above it 554 5.4.0 and no ingest (L5).
    pipeline = FakePipeline()
    reply = send_data(session(serve(pipeline)), with_received(hops))
    assert reply[0] == code
    if code == 554:
        assert reply == (554, "5.4.0 Too many hops")
    assert len(pipeline.calls) == (1 if code == 250 else 0)


def test_received_in_the_body_does_not_count(serve: Callable[[Ingest], ThreadedIntake]) -> None:
    # Only the header block is counted: a quoted mail loop in the body is not a loop.
    pipeline = FakePipeline()
    body = MESSAGE + b"Received: from x by y\r\n" * 60
    assert send_data(session(serve(pipeline)), body)[0] == 250


def test_header_flood_is_refused_before_ingest(serve: Callable[[Ingest], ThreadedIntake]) -> None:
    # A header block over 1 MB gets 552 5.3.4 without reaching the parser (R3).
    pipeline = FakePipeline()
    flood = b"".join(b"X-Flood-%06d: %s\r\n" % (i, b"y" * 40) for i in range(25_000))
    assert send_data(session(serve(pipeline)), flood + MESSAGE) == (
        552, "5.3.4 Message header exceeds fixed limit")
    assert pipeline.calls == []


def test_oversized_message_without_size_gets_552(serve: Callable[[Ingest], ThreadedIntake]) -> None:
    # Without SIZE=, a message over the limit is drained and refused after DATA in maild's words (R1).
    pipeline = FakePipeline()
    big = MESSAGE + (b"z" * 998 + b"\r\n") * 2100
    assert send_data(session(serve(pipeline)), big) == (552, "5.3.4 Message size exceeds fixed limit")
    assert pipeline.calls == []
