# SPDX-License-Identifier: MIT
"""End to end over real sockets: `maild run` as a subprocess, smtplib as the customer's MTA, a real
aiosmtpd relay capturing what maild sends, and the CLI's JSON as the staff's view."""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from helpers import build_mail, write_config
from imapclient import IMAPClient
from plugin_servers import ImapUser
from servers import CaptureRelay, free_port

REPO = Path(__file__).resolve().parents[1]


class Daemon:
    """`python -m maild run` on a temporary SQLite store, its listener on a free loopback port."""

    def __init__(self, tmp: Path, relay: CaptureRelay, extra: str = "") -> None:
        self.port = free_port()
        self.config = write_config(tmp, database_url=f"sqlite:///{tmp}/maild.db", relay_port=relay.port,
                                   extra=f'[smtp]\nlisten = "127.0.0.1:{self.port}"\n{extra}')
        self.cli("directory", "import", str(REPO / "examples" / "directory.toml"))
        self.log = (tmp / "daemon.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "maild", "run", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                smtplib.SMTP("127.0.0.1", self.port, timeout=2).quit()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("maild run did not start listening")

    def cli(self, *args: str) -> object:
        out = subprocess.run([sys.executable, "-m", "maild", "--config", str(self.config), *args],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout) if out.stdout.strip().startswith(("{", "[")) else out.stdout

    def send(self, data: bytes, sender: str, rcpt: str = "support@example.com") -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo("mx.initech.example")
            smtp.mail(sender)
            smtp.rcpt(rcpt)
            return smtp.data(data)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


@pytest.fixture
def daemon(tmp_path: Path, relay: CaptureRelay) -> Iterator[Daemon]:
    d = Daemon(tmp_path, relay)
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0


def test_customer_mail_becomes_case_and_ack_reaches_relay(daemon: Daemon, relay: CaptureRelay) -> None:
    # An MPOC's mail over SMTP: 250, a P4 New case, and the acknowledgement at the relay, tagged and threaded.
    code, reply = daemon.send(build_mail(), "peter@initech.example")
    assert code == 250 and b"queued" in reply
    case = daemon.cli("cases", "show", "1", "--json")
    assert isinstance(case, dict) and (case["status"], case["priority"]) == ("new", "P4")
    (ack,) = relay.wait_for(1, timeout=30)
    assert ack.rcpt_tos == ("peter@initech.example",) and ack.mail_from == "support@example.com"
    msg = ack.message
    assert str(msg["Subject"]).startswith("[Case #1] ")
    assert msg["In-Reply-To"] == "<m1@initech.example>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Reply-To"].addresses[0].addr_spec.startswith("support+case-1-")
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Priority 4" in text and "+1 800 555 0100" in text
    outbox = daemon.cli("outbox", "list", "--json")
    assert isinstance(outbox, list) and outbox[0]["status"] == "sent"


def test_german_organisation_gets_german_ack(daemon: Daemon, relay: CaptureRelay) -> None:
    # Acme's locale is de: the acknowledgement speaks German (SPEC §9 words).
    daemon.send(build_mail(sender="Anna Admin <anna@acme.example>", message_id="<de1@acme.example>"),
                "anna@acme.example")
    (ack,) = relay.wait_for(1, timeout=30)
    body = ack.message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Priorität 4" in text and "Neuer Fall" in text


def _reply(ack: EmailMessage, *, client: str, sender: str) -> bytes:
    """A customer's answer to our ack as Outlook or Thunderbird would write it."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = str(ack["Reply-To"])
    if client == "outlook":
        msg["Subject"] = "AW: " + str(ack["Subject"])
        msg["Thread-Topic"] = str(ack["Thread-Topic"])
        msg["Thread-Index"] = str(ack["Thread-Index"]) + "AQHZ"
        msg["In-Reply-To"] = str(ack["Message-ID"])
        msg["References"] = str(ack["Message-ID"])
        msg["X-MS-Has-Attach"] = ""
        msg["Content-Language"] = "de-DE"
        body = "Danke, es geht wieder.\r\n\r\n-----Ursprüngliche Nachricht-----\r\nVon: Support\r\n" \
               "Gesendet: Freitag\r\nBetreff: " + str(ack["Subject"]) + "\r\n\r\nold text\r\n"
    else:
        msg["Subject"] = "Re: " + str(ack["Subject"])
        msg["In-Reply-To"] = str(ack["Message-ID"])
        msg["References"] = f"{ack['References']} {ack['Message-ID']}"
        msg["User-Agent"] = "Mozilla/5.0 Thunderbird/128.3.0"
        body = "Still broken.\n\nOn 20.11.26 18:00, Support wrote:\n> old text\n"
    msg["Message-ID"] = make_msgid(domain="client.example")
    msg.set_content(body)
    return msg.as_bytes()


@pytest.mark.parametrize("client", ["outlook", "thunderbird"])
def test_reply_from_real_client_shapes_threads_into_case(daemon: Daemon, relay: CaptureRelay, client: str) -> None:
    # A reply written by Outlook (AW:, Thread-Index) or Thunderbird (References chain) to the ack threads.
    daemon.send(build_mail(), "peter@initech.example")
    (ack,) = relay.wait_for(1, timeout=30)
    reply = _reply(ack.message, client=client, sender="peter@initech.example")
    code, _ = daemon.send(reply, "peter@initech.example", rcpt=ack.message["Reply-To"].addresses[0].addr_spec)
    assert code == 250
    case = daemon.cli("cases", "show", "1", "--json")
    assert isinstance(case, dict)
    inbound = [m for m in case["messages"] if m["direction"] == "in"]
    assert len(inbound) == 2 and len(daemon.cli("cases", "list", "--json")) == 1  # type: ignore[arg-type]
    assert "old text" not in inbound[1]["text"] and "old text" in inbound[1]["quoted"]


def test_relay_down_does_not_stop_intake_and_mail_goes_out_later(daemon: Daemon, relay: CaptureRelay) -> None:
    # With the relay down, intake still answers 250; the ack waits queued and leaves once the relay is back.
    relay.stop()
    code, _ = daemon.send(build_mail(), "peter@initech.example")
    assert code == 250
    time.sleep(6)  # at least one sender pass while the relay is down
    (item,) = daemon.cli("outbox", "list", "--json")  # type: ignore[misc]
    assert item["status"] == "queued" and item["attempts"] >= 1 and item["last_error"]
    relay.start()
    subprocess.run([sys.executable, "-m", "maild", "--config", str(daemon.config), "send",
                    "--now", "2026-12-31T00:00"], check=True, capture_output=True)
    assert len(relay.wait_for(1, timeout=30)) == 1
    assert daemon.stop() == 0


def test_daemon_takes_mail_from_an_imap_mailbox(tmp_path: Path, relay: CaptureRelay, imap_user: ImapUser) -> None:
    # `maild run` with [imap] url: a message appended to the real Dovecot mailbox becomes a case, is
    # acknowledged through the relay, and ends in the Processed folder, marked read.
    d = Daemon(tmp_path, relay, extra=f'[imap]\nurl = "{imap_user.url}"\npoll_seconds = 1\n')
    try:
        with IMAPClient(imap_user.host, port=imap_user.port, ssl=False, timeout=10) as client:
            client.login(imap_user.name, imap_user.password)
            client.append("INBOX", build_mail(message_id="<imap-e2e@initech.example>").replace(b"\n", b"\r\n"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not d.cli("cases", "list", "--json"):
            time.sleep(0.5)
        cases = d.cli("cases", "list", "--json")
        assert isinstance(cases, list) and len(cases) == 1, (tmp_path / "daemon.log").read_text()
        (case,) = cases
        assert case["requester"] == "peter@initech.example"
        (ack,) = relay.wait_for(1, timeout=30)
        assert ack.rcpt_tos == ("peter@initech.example",)
        with IMAPClient(imap_user.host, port=imap_user.port, ssl=False, timeout=10) as client:
            client.login(imap_user.name, imap_user.password)
            client.select_folder("Processed", readonly=True)
            (uid,) = client.search("ALL")
            assert b"\\Seen" in client.get_flags([uid])[uid]
            client.select_folder("INBOX", readonly=True)
            assert client.search("ALL") == []
    finally:
        assert d.stop() == 0
