# SPDX-License-Identifier: MIT
"""Proves the real-server harness works: PostgreSQL, Dovecot IMAP and the SMTP capture relay."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa
from imapclient import IMAPClient
from plugin_servers import ImapUser
from servers import CaptureRelay, DovecotServer, PostgresServer, ServerUnavailable, require


def _message(subject: str = "harness check") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "customer@example.org"
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = "<harness-1@example.org>"
    msg.set_content("Hello from the harness.\n")
    return msg


def _committed_row_survives(url: str, value: str) -> str | None:
    writer = sa.create_engine(url)
    with writer.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS probe (v text)"))
        conn.execute(sa.text("INSERT INTO probe (v) VALUES (:v)"), {"v": value})
    writer.dispose()
    reader = sa.create_engine(url)
    with reader.connect() as conn:
        found = conn.execute(sa.text("SELECT v FROM probe WHERE v = :v"), {"v": value}).scalar()
    reader.dispose()
    return found


def test_postgres_committed_row_is_read_back_on_a_new_connection(pg_url: str) -> None:
    # A row committed through one engine is visible through a fresh engine and connection.
    assert pg_url.startswith("postgresql+psycopg://")
    assert _committed_row_survives(pg_url, "durable") == "durable"
    with sa.create_engine(pg_url).connect() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar() == "on"
        assert conn.execute(sa.text("SHOW fsync")).scalar() == "on"


def test_postgres_restart_keeps_committed_data(postgres_server: PostgresServer, pg_url: str) -> None:
    # Fault tests stop the shared server; after restart() committed rows are still there.
    assert _committed_row_survives(pg_url, "before") == "before"
    postgres_server.stop()
    assert not postgres_server.running
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(pg_url).connect()
    postgres_server.restart()
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM probe")).scalar() == 1
    engine.dispose()


def test_dovecot_login_append_fetch_round_trips_bytes(dovecot_server: DovecotServer, imap_user: ImapUser) -> None:
    # LOGIN, APPEND and FETCH BODY.PEEK[] over real IMAP return the exact bytes appended.
    raw = _message().as_bytes(policy=_message().policy.clone(linesep="\r\n"))
    assert imap_user.url == f"imap://{imap_user.name}:{imap_user.password}@127.0.0.1:{imap_user.port}/INBOX"
    with IMAPClient(imap_user.host, port=imap_user.port, ssl=False, timeout=10) as client:
        client.login(imap_user.name, imap_user.password)
        client.append("INBOX", raw)
        client.select_folder("INBOX")
        uids = client.search("ALL")
        assert len(uids) == 1
        fetched = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])[uids[0]]
    assert fetched[b"BODY[]"] == raw
    # Maildir files keep LF line ends; IMAP hands CRLF back.
    on_disk = [p.read_bytes() for p in dovecot_server.maildir(imap_user.name).glob("cur/*")]
    assert on_disk == [raw.replace(b"\r\n", b"\n")]
    assert b"\\Seen" not in fetched[b"FLAGS"]


def test_dovecot_rejects_a_wrong_password(imap_user: ImapUser) -> None:
    # The passwd-file really authenticates: a wrong password is refused.
    client = IMAPClient(imap_user.host, port=imap_user.port, ssl=False, timeout=10)
    with client, pytest.raises(IMAPClient.Error):
        client.login(imap_user.name, "wrong")


def test_dovecot_tls_listener_serves_imaps(tmp_path: Path) -> None:
    # DovecotServer(tls=True) adds an imaps listener with a self-signed certificate.
    server = DovecotServer(tls=True)
    try:
        server.start(tmp_path)
    except ServerUnavailable as missing:
        require(missing.what, missing.reason)
    try:
        server.add_user("tls-user", "secret")
        assert server.imap_url("tls-user", "secret", tls=True).startswith("imaps://tls-user:secret@")
        with IMAPClient(server.host, port=server.tls_port, ssl=True, ssl_context=server.ssl_context()) as c:
            c.login("tls-user", "secret")
            assert c.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        server.close()


def test_relay_captures_a_message_sent_with_smtplib(relay: CaptureRelay) -> None:
    # The relay records envelope, raw bytes and the parsed message of what it accepted.
    with smtplib.SMTP(relay.host, relay.port, timeout=10) as smtp:
        smtp.send_message(_message(), "bounces@example.com", ["a@example.net", "b@example.net"])
    [captured] = relay.wait_for(1)
    assert captured.mail_from == "bounces@example.com"
    assert captured.rcpt_tos == ("a@example.net", "b@example.net")
    assert captured.message["Subject"] == "harness check"
    assert b"Hello from the harness." in captured.raw


def test_relay_answers_451_when_told_and_then_recovers(relay: CaptureRelay) -> None:
    # fail_next makes the next DATA get a 4yz; the one after is accepted again.
    relay.fail_next(1, "451 4.3.0 try later")
    with smtplib.SMTP(relay.host, relay.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.send_message(_message(), "bounces@example.com", ["a@example.net"])
        assert refused.value.smtp_code == 451
        smtp.send_message(_message(), "bounces@example.com", ["a@example.net"])
    assert len(relay.wait_for(1)) == 1
    assert [r.reply for r in relay.refused] == ["451 4.3.0 try later"]


def test_relay_rejects_one_recipient_and_drops_connections(relay: CaptureRelay) -> None:
    # reject_rcpt refuses one address; drop_next closes after DATA without a reply.
    relay.reject_rcpt("gone@example.net", "550 5.1.1 no such user")
    with smtplib.SMTP(relay.host, relay.port, timeout=10) as smtp:
        refused = smtp.send_message(_message(), "b@example.com", ["ok@example.net", "gone@example.net"])
    assert refused == {"gone@example.net": (550, b"5.1.1 no such user")}
    assert relay.wait_for(1)[0].rcpt_tos == ("ok@example.net",)
    relay.drop_next(1)
    smtp = smtplib.SMTP(relay.host, relay.port, timeout=10)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.send_message(_message(), "b@example.com", ["ok@example.net"])
    smtp.close()
    assert len(relay.messages) == 1


def test_relay_can_go_down_and_come_back_on_the_same_port(relay: CaptureRelay) -> None:
    # stop() refuses connections (relay down); start() listens again on the same port.
    port = relay.port
    relay.stop()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(relay.host, port, timeout=5)
    relay.start()
    with smtplib.SMTP(relay.host, port, timeout=10) as smtp:
        smtp.send_message(_message(), "b@example.com", ["a@example.net"])
    assert len(relay.wait_for(1)) == 1
