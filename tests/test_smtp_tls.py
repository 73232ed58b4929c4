# SPDX-License-Identifier: MIT
"""STARTTLS on the intake listener: offered with a certificate, optionally required, injection-safe.

A throw-away self-signed certificate is made with ``cryptography``. The ingest function is a fake
that records its calls: it stands in for the pipeline, the handler's collaborator, not an
external system; the tests check the TLS flag and envelope the pipeline would receive.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings, SmtpSettings
from maild.enums import Outcome
from maild.ingest.pipeline import IngestResult
from maild.ingest.raw import RawMail
from maild.ingest.smtp_server import ThreadedIntake, make_controller

MESSAGE = b"From: alice@customer.example\r\nSubject: hi\r\n\r\nbody\r\n"


def self_signed(directory: Path) -> tuple[str, str]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test certificate is self-signed
    return context


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[bool], tuple[ThreadedIntake, list[RawMail]]]]:
    cert, key = self_signed(tmp_path)
    started: list[ThreadedIntake] = []

    def start(require_tls: bool) -> tuple[ThreadedIntake, list[RawMail]]:
        calls: list[RawMail] = []

        def ingest(factory: sessionmaker[Session], settings: Settings, raw: RawMail) -> IngestResult:
            calls.append(raw)
            return IngestResult("<a@x>", Outcome.NEW_CASE, 1, "")

        settings = Settings(smtp=replace(SmtpSettings(), tls_cert=cert, tls_key=key, require_tls=require_tls))
        intake = make_controller(sessionmaker(), settings, ingest_fn=ingest, listen="127.0.0.1:0").start()
        started.append(intake)
        return intake, calls

    yield start
    for intake in started:
        intake.stop()


def test_starttls_is_offered_and_recorded(serve: Callable[[bool], tuple[ThreadedIntake, list[RawMail]]]) -> None:
    # With a certificate, EHLO offers STARTTLS; mail sent after it reaches ingest with tls=True.
    intake, calls = serve(False)
    with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as smtp:
        smtp.ehlo("mta.example.net")
        assert smtp.has_extn("starttls")
        smtp.starttls(context=client_context())
        smtp.ehlo("mta.example.net")
        smtp.sendmail("alice@customer.example", ["support@example.com"], MESSAGE)
    assert calls[0].tls is True


def test_require_tls_refuses_plaintext_mail(serve: Callable[[bool], tuple[ThreadedIntake, list[RawMail]]]) -> None:
    # With require_tls, MAIL before STARTTLS gets 530 (RFC 3207 §4).
    intake, calls = serve(True)
    with smtplib.SMTP("127.0.0.1", intake.port, timeout=10) as smtp:
        smtp.ehlo("mta.example.net")
        assert smtp.docmd("MAIL FROM:<alice@customer.example>")[0] == 530
    assert calls == []


def test_plaintext_pipelined_after_starttls_is_discarded(
        serve: Callable[[bool], tuple[ThreadedIntake, list[RawMail]]]) -> None:
    # STARTTLS injection (RELIABILITY S2): a MAIL FROM sent in the same plaintext packet as
    # STARTTLS is dropped; the TLS session starts clean, so its own MAIL FROM is not "nested".
    intake, calls = serve(False)
    raw = socket.create_connection(("127.0.0.1", intake.port), timeout=10)
    lines = raw.makefile("rb")
    lines.readline()
    raw.sendall(b"EHLO mta.example.net\r\n")
    while not lines.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
    assert lines.readline().startswith(b"220 ")
    with client_context().wrap_socket(raw) as tls:
        reader = tls.makefile("rb")
        tls.sendall(b"EHLO mta.example.net\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        tls.sendall(b"MAIL FROM:<alice@customer.example>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n")
        assert [reader.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        tls.sendall(MESSAGE + b".\r\nQUIT\r\n")
        assert reader.readline().startswith(b"250 2.0.0")
    assert [c.mail_from for c in calls] == ["alice@customer.example"]
