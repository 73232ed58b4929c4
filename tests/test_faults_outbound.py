# SPDX-License-Identifier: MIT
"""Outbound under faults (RELIABILITY O1, O5, O7 and the after_send_before_mark point).

The relay is real SMTP on 127.0.0.1 (CaptureRelay, or a small aiosmtpd/socket peer where the fault
is AUTH, TLS or silence). A "restart" is a new engine and session factory, or a new process.
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import REPO
from faultlib import check_outbound, free_port
from helpers import Desk, build_mail, mt, write_config
from servers import CaptureRelay
from sqlalchemy import select

from maild.db import open_store, transaction
from maild.models import OutboxItem
from maild.outbound.relay import Relay
from maild.outbound.sender import lease_for, send_due

NOW = mt(2026, 11, 20, 10, 5)
SECRET = "Pa55-w0rd-never-logged"


def make_desk(tmp_path: Path, relay_port: int, **relay: Any) -> Desk:
    """A desk whose [relay] points at ``relay_port`` (plus ``relay`` overrides) with one ack queued."""
    desk = Desk(write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db", relay_port=relay_port))
    desk.settings = replace(desk.settings, relay=replace(desk.settings.relay, **relay))
    desk.import_directory(REPO / "examples" / "directory.toml")
    assert desk.ingest(build_mail(), now=NOW).outcome.value == "new-case"  # queues one ack
    return desk


def ack(desk: Desk) -> OutboxItem:
    (item,) = [i for i in desk.outbox() if i.template == "ack_new_case"]
    return item


@pytest.fixture
def desk(tmp_path: Path, relay: CaptureRelay) -> Iterator[Desk]:
    d = make_desk(tmp_path, relay.port)
    yield d
    d.close()


def test_temporary_failures_across_restarts_back_off_and_send_one_copy(desk: Desk, relay: CaptureRelay) -> None:
    # O1: 451 at DATA, 421 at MAIL, 452 at RCPT, with maild "restarted" (a new engine) before every
    # attempt: next_attempt_at persists and backs off 5/10/20 min; nothing goes early; one copy at the end.
    relay.fail_next(1, "451 4.3.0 try later", at="DATA")
    relay.fail_next(1, "421 4.3.2 closing", at="MAIL")
    relay.fail_next(1, "452 4.3.1 no space", at="RCPT")
    now, waits = NOW, []
    for _ in range(4):
        engine, factory = open_store(desk.settings.database_url)  # a fresh process's view of the store
        item = ack(desk)
        assert send_due(factory, desk.settings, item.next_attempt_at - timedelta(seconds=1),
                        relay=Relay(desk.settings, connect_wait=0)) == []  # fmt: skip
        now = item.next_attempt_at
        send_due(factory, desk.settings, now, relay=Relay(desk.settings, connect_wait=0))
        engine.dispose()
        waits.append(ack(desk).next_attempt_at - now)
    item = ack(desk)
    assert (item.status, item.attempts) == ("sent", 4)
    assert waits[:3] == [timedelta(minutes=5), timedelta(minutes=10), timedelta(minutes=20)]
    assert [m.message["Message-ID"] for m in relay.messages] == [f"<{item.message_id}>"]
    check_outbound(desk.settings.database_url, relay)


SEND_SCRIPT = """
import sys
from datetime import datetime
from maild import config
from maild.db import open_store
from maild.outbound.sender import send_due
settings = config.load(sys.argv[1], env={})
engine, factory = open_store(settings.database_url)
print([a["action"] for a in send_due(factory, settings, datetime.fromisoformat(sys.argv[2]))])
"""


def run_sender(desk: Desk, now: Any, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **({"MAILD_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-c", SEND_SCRIPT, str(desk.config_path), now.isoformat()],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_sigkill_after_send_before_mark_resends_the_same_message_after_the_lease(
        desk: Desk, relay: CaptureRelay) -> None:
    # The relay said 250, then the sender process died before marking the row: the claim lease keeps
    # other runs off it, then it is sent again with the same Message-ID and bytes (at-least-once).
    assert run_sender(desk, NOW, fault="after_send_before_mark").returncode == -9
    assert ack(desk).status == "queued" and len(relay.messages) == 1
    assert run_sender(desk, NOW + timedelta(seconds=30)).stdout.strip() == "[]"  # still leased
    later = NOW + lease_for(desk.settings) + timedelta(seconds=1)
    assert run_sender(desk, later).stdout.strip() == "['sent']"
    item = ack(desk)
    assert item.status == "sent"
    assert [m.message["Message-ID"] for m in relay.messages] == [f"<{item.message_id}>"] * 2
    assert relay.messages[0].raw == relay.messages[1].raw
    check_outbound(desk.settings.database_url, relay)


def test_six_days_of_4xx_expire_at_the_lifetime_without_a_hot_loop(tmp_path: Path, relay: CaptureRelay) -> None:
    # O5: the relay answers 450 for 6 simulated days while the sender polls every simulated minute:
    # the row fails "expired" at the configured 5-day lifetime, the attempts follow the back-off
    # schedule (no hot loop), staff are alerted, nothing reaches the customer.
    desk = make_desk(tmp_path, relay.port, give_up_hours=120)
    relay.reject_rcpt("peter@initech.example", "450 4.2.0 mailbox busy")
    relay_client = Relay(desk.settings, connect_wait=0)
    cpu, wall = time.process_time(), time.monotonic()
    polls, attempts_at = 0, []
    now = NOW
    while now < NOW + timedelta(days=6):
        for action in send_due(desk.factory, desk.settings, now, relay=relay_client):
            if action["to"] == "peter@initech.example":
                attempts_at.append((now, action["action"]))
        polls += 1
        now += timedelta(minutes=1)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    item = ack(desk)
    assert item.status == "failed" and (item.last_error or "").startswith(f"expired after {item.attempts} attempts")
    assert attempts_at[-1] == (NOW + timedelta(hours=120), "failed")
    # Attempts at 0, +5, +15, +35, +75, +155, +315 min, then every 240 min (28 more by 7,035 min), and a
    # last one exactly at the 7,200-minute lifetime: 36, whatever the polling rate.
    assert len(attempts_at) == item.attempts == 36
    assert all("peter@initech.example" not in m.rcpt_tos for m in relay.messages)
    alerted = {i.to_addr for i in desk.outbox() if i.template == "staff_alert"}
    assert alerted == {"tom@support.example.com", "tina@support.example.com"}  # every active technician
    print(f"\nO5: {polls} polls over 6 simulated days, {item.attempts} attempts, expired at "
          f"+{(attempts_at[-1][0] - NOW) / timedelta(hours=1):.0f} h; CPU {cpu:.2f} s in {wall:.2f} s")
    desk.close()


class _Refuse:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def test_auth_failure_is_temporary_and_the_password_is_nowhere(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # O7: the relay refuses AUTH: the row is rescheduled, and the password appears neither in any maild
    # log line (DEBUG included) nor anywhere in the SQLite files (FreeScout GHSA-7wcq).
    tried: list[str] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        tried.append(mechanism)
        return AuthResult(success=False, handled=False)

    port = free_port()
    controller = Controller(_Refuse(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False, ready_timeout=10)  # fmt: skip
    controller.start()
    caplog.set_level(logging.DEBUG)
    try:
        desk = make_desk(tmp_path, port, username="desk", password=SECRET)
        (action,) = send_due(desk.factory, desk.settings, NOW, relay=Relay(desk.settings, connect_wait=0))
    finally:
        controller.stop()
    assert tried and action["action"] == "retry" and "AUTH" in action["error"]
    item = ack(desk)
    assert item.status == "queued" and item.next_attempt_at == NOW + timedelta(minutes=5)
    desk.close()
    needles = [SECRET.encode(), base64.b64encode(f"\0desk\0{SECRET}".encode()), base64.b64encode(SECRET.encode())]
    maild_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("maild")).encode()
    assert maild_log and not [n for n in needles if n in maild_log]
    files = [p for p in tmp_path.iterdir() if p.name.startswith("maild.db")]
    assert files and not [(p.name, n) for p in files for n in needles if n in p.read_bytes()]


def test_silent_relay_and_untrusted_certificate_are_temporary_and_send_nothing(
        desk: Desk, relay: CaptureRelay) -> None:
    # O7: a relay that never greets frees the worker after [relay] timeout; a TLS relay whose certificate
    # is not trusted gets nothing (no fallback to plaintext). Both are retries, not failures.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list[socket.socket] = []
    accept = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accept.start()
    settings = desk.settings
    quiet = replace(settings, relay=replace(settings.relay, port=silent.getsockname()[1], timeout=1))
    started = time.monotonic()
    (action,) = send_due(desk.factory, quiet, NOW, relay=Relay(quiet, connect_wait=0))
    assert action["action"] == "retry" and time.monotonic() - started < 10
    silent.close()
    for conn in held:
        conn.close()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, key = tmp_path_cert(desk.config_path.parent)
    ctx.load_cert_chain(cert, key)
    port = free_port()
    tls_relay = Controller(_Refuse(), hostname="127.0.0.1", port=port, ssl_context=ctx, ready_timeout=10)
    tls_relay.start()
    try:
        tls = replace(settings, relay=replace(settings.relay, port=port, security="tls", timeout=5))
        (action,) = send_due(desk.factory, tls, ack(desk).next_attempt_at, relay=Relay(tls, connect_wait=0))
    finally:
        tls_relay.stop()
    assert action["action"] == "retry" and "CERTIFICATE_VERIFY_FAILED" in action["error"]
    assert relay.messages == [] and ack(desk).status == "queued"


def tmp_path_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "relay-cert.pem", directory / "relay-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=relay.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    return cert, key


def test_outbox_rows_carry_no_credentials(desk: Desk) -> None:
    # The stored mail bytes are what the relay gets (composed as the sender would); nothing names the
    # relay account, in the bytes or in what was kept to compose them.
    with transaction(desk.factory) as s:
        drafts = [repr(item.pending) for item in s.scalars(select(OutboxItem))]
    assert drafts and not any(SECRET in d for d in drafts)
    items = desk.outbox()
    assert items and all(b"AUTH" not in i.data and SECRET.encode() not in i.data for i in items if i.data)
    assert all(i.data for i in items)
