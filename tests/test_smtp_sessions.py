# SPDX-License-Identifier: MIT
"""SMTP intake with many sessions: concurrency, and the drain on shutdown (RELIABILITY D9, R7).

The ingest function is a fake that sleeps or blocks: it stands in for the handler's collaborator,
the pipeline (not an external system), so the tests control how long a DATA stays in flight.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import BlockingIngest
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.enums import Outcome
from maild.ingest.pipeline import IngestResult
from maild.ingest.raw import RawMail
from maild.ingest.smtp_server import make_controller

MESSAGE = b"From: alice@customer.example\r\nSubject: hi\r\n\r\nbody\r\n"


def send_one(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.ehlo("mta.example.net")
        smtp.docmd("MAIL FROM:<alice@customer.example>")
        smtp.docmd("RCPT TO:<support@example.com>")
        smtp.docmd("DATA")
        smtp.send(MESSAGE + b".\r\n")
        return smtp.getreply()


def test_ten_concurrent_sessions_all_get_250() -> None:
    # Ingest runs off the event loop, so ten slow deliveries overlap and all are accepted.
    calls: list[RawMail] = []
    lock = threading.Lock()

    def slow(factory: sessionmaker[Session], settings: Settings, raw: RawMail) -> IngestResult:
        time.sleep(0.5)
        with lock:
            calls.append(raw)
        return IngestResult("<a@x>", Outcome.NEW_CASE, 1, "")

    intake = make_controller(sessionmaker(), Settings(), ingest_fn=slow, listen="127.0.0.1:0").start()
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(send_one, [intake.port] * 10))
        elapsed = time.monotonic() - started
    finally:
        intake.stop()
    assert [code for code, _ in replies] == [250] * 10
    assert len(calls) == 10
    assert elapsed < 4.5  # serial would take 5 s




def start_data(port: int) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=20)
    smtp.ehlo("mta.example.net")
    smtp.docmd("MAIL FROM:<alice@customer.example>")
    smtp.docmd("RCPT TO:<support@example.com>")
    smtp.docmd("DATA")
    smtp.send(MESSAGE + b".\r\n")
    return smtp


def idle_session(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.makefile("rb").readline()  # the greeting
    return sock


@pytest.mark.parametrize(("grace", "release_after", "expected"), [
    (10.0, 0.5, (250, b"2.0.0 Ok: queued as case-7")),  # finishes within the grace period
    (0.5, None, (421, b"4.3.2 Service shutting down")),  # still running when the grace ends
])
def test_shutdown_drains_in_flight_data_and_closes_idle_sessions(
        grace: float, release_after: float | None, expected: tuple[int, bytes]) -> None:
    # On stop: new connections are refused, idle sessions get 421 4.3.2 at once, an in-flight
    # DATA gets its 250 if ingest returns within the grace period, else 421 (RELIABILITY D9).
    pipeline = BlockingIngest(case=7)
    intake = make_controller(sessionmaker(), Settings(), ingest_fn=pipeline, listen="127.0.0.1:0").start()
    port = intake.port
    idle = idle_session(port)
    busy = start_data(port)
    assert pipeline.entered.wait(10)
    stopper = threading.Thread(target=intake.stop, args=(grace,))
    stopper.start()
    assert idle.makefile("rb").readline() == b"421 4.3.2 Service shutting down\r\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    if release_after is not None:
        time.sleep(release_after)
        pipeline.release.set()
    assert busy.getreply() == expected
    pipeline.release.set()  # the loop's exit waits for the worker thread (asyncio.run)
    stopper.join(30)
    assert not stopper.is_alive()
    idle.close()
    busy.close()
