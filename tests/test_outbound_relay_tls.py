# SPDX-License-Identifier: MIT
"""Delivery to a relay that wants TLS and authentication: implicit TLS and STARTTLS, each with AUTH,
against a real aiosmtpd relay on 127.0.0.1 whose certificate the configured CA file trusts."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from helpers import Desk, build_mail, mt
from servers import free_port

from maild.outbound.relay import Relay
from maild.outbound.sender import send_due

NOW = mt(2026, 11, 20, 10, 5)


class Capture:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"desk" and data.password == b"s3cret"
    return AuthResult(success=ok)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


@pytest.fixture(params=["tls", "starttls"])
def secured_relay(request: pytest.FixtureRequest, certificate: tuple[Path, Path]) -> Iterator[tuple[str, int, Capture]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certificate)
    capture, port = Capture(), free_port()
    kwargs: dict[str, Any] = {"ssl_context": ctx} if request.param == "tls" else {"tls_context": ctx,
                                                                                   "require_starttls": True}
    # aiosmtpd does not count implicit TLS for auth_require_tls (only STARTTLS): the wire is TLS either way
    controller = Controller(capture, hostname="127.0.0.1", port=port, authenticator=check_login,
                            auth_require_tls=request.param == "starttls", ready_timeout=10, **kwargs)
    controller.start()
    yield request.param, port, capture
    controller.stop()


def test_mail_goes_out_over_tls_with_auth(sqlite_desk: Desk, secured_relay: tuple[str, int, Capture],
                                          certificate: tuple[Path, Path]) -> None:
    # [relay] security = tls or starttls, ca_file trusted, username/password: the ack is delivered once.
    security, port, capture = secured_relay
    sqlite_desk.ingest(build_mail(), now=NOW)
    s = sqlite_desk.settings
    settings = replace(s, relay=replace(s.relay, port=port, security=security, ca_file=str(certificate[0]),
                                        username="desk", password="s3cret", timeout=10))
    (action,) = send_due(sqlite_desk.factory, settings, NOW, relay=Relay(settings, connect_wait=0))
    assert action["action"] == "sent", action
    ((mail_from, rcpts, data),) = capture.messages
    assert (mail_from, rcpts) == ("support@example.com", ["peter@initech.example"]) and b"[Case #1]" in data
    wrong = replace(settings, relay=replace(settings.relay, password="nope"))
    sqlite_desk.ingest(build_mail(message_id="<m2@initech.example>", subject="Another"), now=NOW)
    (action,) = send_due(sqlite_desk.factory, wrong, NOW, relay=Relay(wrong, connect_wait=0))
    assert action["action"] == "retry" and len(capture.messages) == 1
