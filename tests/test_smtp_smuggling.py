# SPDX-License-Identifier: MIT
"""SMTP smuggling (RELIABILITY S1): only <CRLF>.<CRLF> ends DATA, so one session is one message.

Driven over a raw socket so the exact bytes are on the wire. The ingest function is a fake that
records its calls: it stands in for the handler's collaborator, the pipeline, not an external
system, and what matters here is how many messages the listener hands over and with which bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.enums import Outcome
from maild.ingest.pipeline import IngestResult
from maild.ingest.raw import RawMail
from maild.ingest.smtp_server import ThreadedIntake, make_controller

SMUGGLED = (b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: spoofed\r\n\r\nwire the money\r\n")


@pytest.fixture
def intake() -> Iterator[tuple[ThreadedIntake, list[RawMail]]]:
    calls: list[RawMail] = []

    def ingest(factory: sessionmaker[Session], settings: Settings, raw: RawMail) -> IngestResult:
        calls.append(raw)
        return IngestResult("<a@x>", Outcome.NEW_CASE, len(calls), "")

    listener = make_controller(sessionmaker(), Settings(), ingest_fn=ingest, listen="127.0.0.1:0")
    yield listener.start(), calls
    listener.stop()


def transcript(port: int, payload: bytes) -> bytes:
    """Send one session in a single write, then QUIT; everything the server said."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"EHLO mta.example.net\r\nMAIL FROM:<alice@customer.example>\r\n"
                     b"RCPT TO:<support@example.com>\r\nDATA\r\n" + payload + b"QUIT\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("separator", [b"\n.\n", b"\r.\r\n", b"\n.\r\n"])
def test_bare_line_ending_dot_does_not_end_data(
        intake: tuple[ThreadedIntake, list[RawMail]], separator: bytes) -> None:
    # A dot between bare CR/LF is data: the smuggled commands stay inside the one stored message.
    listener, calls = intake
    first = b"From: alice@customer.example\r\nSubject: hello\r\n\r\nhello" + separator
    replies = transcript(listener.port, first + SMUGGLED + b".\r\n")
    assert replies.count(b"250 2.0.0 Ok: queued as") == 1
    assert b"221" in replies
    assert len(calls) == 1
    assert separator + SMUGGLED in calls[0].data
    assert calls[0].mail_from == "alice@customer.example"


def test_proper_end_of_data_then_a_second_transaction_is_two_messages(
        intake: tuple[ThreadedIntake, list[RawMail]]) -> None:
    # Control: a real <CRLF>.<CRLF> ends DATA, so a following transaction is a second message.
    listener, calls = intake
    first = b"From: alice@customer.example\r\nSubject: hello\r\n\r\nhello\r\n.\r\n"
    replies = transcript(listener.port, first + SMUGGLED + b".\r\n")
    assert replies.count(b"250 2.0.0 Ok: queued as") == 2
    assert [c.mail_from for c in calls] == ["alice@customer.example", "ceo@example.com"]
