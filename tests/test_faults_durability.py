# SPDX-License-Identifier: MIT
"""Durability under faults (RELIABILITY D1, D2, D4, and SIGKILL under load): nothing that got 250 is lost.

The daemon is the real ``python -m maild run`` on a temporary SQLite store; the fault is a named
fault point (``MAILD_FAULT``) or a SIGKILL from outside. After each fault maild is started again, the
client re-sends what got no 250 (as an MTA would), and the ledger oracle checks the store.
"""

from __future__ import annotations

import random
import smtplib
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO
from faultlib import Ledger, MaildProcess, check_no_loss, dot_stuff, free_port, smtp_send
from helpers import Desk, write_config
from servers import PostgresServer
from sqlalchemy import create_engine, text

from maild.db import make_engine, make_sessionmaker
from maild.ingest.smtp_server import make_controller


def make_desk(tmp_path: Path, database_url: str, port: int) -> Desk:
    cfg = write_config(tmp_path, database_url=database_url, extra=f'[smtp]\nlisten = "127.0.0.1:{port}"\n')
    desk = Desk(cfg)
    desk.import_directory(REPO / "examples" / "directory.toml")
    return desk


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Desk, MaildProcess]]:
    port = free_port()
    desk = make_desk(tmp_path, f"sqlite:///{tmp_path}/maild.db", port)
    proc = MaildProcess(desk.config_path, port, tmp_path / "maild.log")
    yield desk, proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()
    desk.close()


def count(url: str, sql: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = int(conn.execute(text(sql)).scalar_one())
    engine.dispose()
    return value


def test_sigkill_after_commit_before_reply_then_resend_stores_once(daemon: tuple[Desk, MaildProcess]) -> None:
    # D2: maild dies after the commit and before its 250; the client sees a dropped connection (= 451),
    # re-sends, gets 250, and the message is stored once, with the second arrival counted as a duplicate.
    desk, proc = daemon
    ledger = Ledger()
    entry = ledger.mail(1)
    proc.start(fault="after_commit_before_reply")
    assert smtp_send(proc.port, ledger, entry) == 0
    assert proc.wait() == -9
    proc.start()
    assert smtp_send(proc.port, ledger, entry) == 250
    assert proc.stop() == 0
    url = desk.settings.database_url
    assert check_no_loss(url, ledger)["accepted"] == 1
    assert count(url, "SELECT duplicates FROM raw_messages") == 1
    assert count(url, "SELECT count(*) FROM cases") == 1


def test_sigkill_before_commit_stores_nothing_until_the_resend(daemon: tuple[Desk, MaildProcess]) -> None:
    # The before_commit point: processed but not committed, so no reply and no row; the resend lands once.
    desk, proc = daemon
    ledger = Ledger()
    entry = ledger.mail(1)
    proc.start(fault="before_commit")
    assert smtp_send(proc.port, ledger, entry) == 0
    assert proc.wait() == -9
    assert count(desk.settings.database_url, "SELECT count(*) FROM raw_messages") == 0
    proc.start()
    assert smtp_send(proc.port, ledger, entry) == 250
    proc.stop()
    check_no_loss(desk.settings.database_url, ledger)


def test_sigkill_while_data_streams_leaves_no_partial_row(daemon: tuple[Desk, MaildProcess]) -> None:
    # D1: killed from outside while the body is half sent: no reply, no partial row; the retry is stored once.
    desk, proc = daemon
    ledger = Ledger()
    entry = ledger.mail(1, body="line of a long body\n" * 2000)
    proc.start()
    smtp = smtplib.SMTP("127.0.0.1", proc.port, timeout=10)
    smtp.ehlo("mta.example.net")
    smtp.docmd("MAIL FROM:<peter@initech.example>")
    smtp.docmd("RCPT TO:<support@example.com>")
    assert smtp.docmd("DATA")[0] == 354
    smtp.send(dot_stuff(entry.data)[: len(entry.data) // 2])
    time.sleep(0.2)
    assert proc.kill() == -9
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        smtp.send(b"rest\r\n.\r\n")
        smtp.getreply()
    smtp.close()
    ledger.record(entry, 0)
    assert count(desk.settings.database_url, "SELECT count(*) FROM raw_messages") == 0
    proc.start()
    assert smtp_send(proc.port, ledger, entry) == 250
    proc.stop()
    check_no_loss(desk.settings.database_url, ledger)


def test_random_sigkill_under_load_loses_no_accepted_message(daemon: tuple[Desk, MaildProcess]) -> None:
    # SIGKILL from outside at a random moment while 4 clients send 60 mails (after 10-30 of them were
    # answered, so the kill lands mid-load however fast the machine is, with mail still queued for
    # processing); after a restart the clients re-send everything that got no 250; every 250-nonce is
    # stored exactly once, byte-identical, and processed.
    desk, proc = daemon
    ledger = Ledger()
    entries = [ledger.mail(i, sender="Anna Admin <anna@acme.example>") for i in range(60)]
    rng = random.Random(7)
    proc.start()
    kill_after = rng.randint(10, 30)

    def kill_mid_load() -> None:
        deadline = time.monotonic() + 30
        while len(ledger.accepted()) < kill_after and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.kill()

    killer = threading.Thread(target=kill_mid_load)
    killer.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda e: smtp_send(proc.port, ledger, e, mail_from="anna@acme.example", timeout=10),
                      entries))
    killer.join()
    proc.wait()
    lost_before_restart = [e for e in entries if not e.accepted]
    proc.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda e: smtp_send(proc.port, ledger, e, mail_from="anna@acme.example"),
                      lost_before_restart))
    assert proc.stop() == 0
    counts = check_no_loss(desk.settings.database_url, ledger)
    print(f"\nkill -9 under load: {len(entries) - len(lost_before_restart)} accepted before the kill, "
          f"{len(lost_before_restart)} re-sent after it; {counts}")
    assert counts["accepted"] == 60 and lost_before_restart  # the kill did interrupt the load


def test_sqlite_locked_past_busy_timeout_answers_451_then_lands_once(tmp_path: Path) -> None:
    # D4 (SQLite): another connection holds the write lock longer than busy_timeout -> 451 4.3.0 (never
    # 5yz); once the lock is released the MTA's retry is stored exactly once.
    desk = make_desk(tmp_path, f"sqlite:///{tmp_path}/maild.db", 0)
    engine = make_engine(desk.settings.database_url, busy_timeout_ms=500)
    intake = make_controller(make_sessionmaker(engine), desk.settings, listen="127.0.0.1:0").start()
    ledger = Ledger()
    entry = ledger.mail(1)
    locker = sqlite3.connect(tmp_path / "maild.db", isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        assert smtp_send(intake.port, ledger, entry) == 451
        locker.execute("COMMIT")
        assert smtp_send(intake.port, ledger, entry) == 250
    finally:
        locker.close()
        intake.stop()
        engine.dispose()
    assert entry.replies == [451, 250]
    check_no_loss(desk.settings.database_url, ledger)
    desk.close()


def test_postgres_stopped_during_data_answers_451_then_lands_once(
        tmp_path: Path, pg_url: str, postgres_server: PostgresServer) -> None:
    # D4 (PostgreSQL): the server is down when DATA ends -> 451 4.3.0; after the restart the retry is
    # stored once (pool_pre_ping replaces the dead connections).
    desk = make_desk(tmp_path, pg_url, 0)
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0").start()
    ledger = Ledger()
    entry = ledger.mail(1)
    try:
        assert smtp_send(intake.port, ledger, ledger.mail(0)) == 250  # the pool holds a live connection
        postgres_server.stop()
        assert smtp_send(intake.port, ledger, entry) == 451
        postgres_server.restart()
        assert smtp_send(intake.port, ledger, entry) == 250
    finally:
        postgres_server.ensure_running()
        intake.stop()
    assert entry.replies == [451, 250]
    check_no_loss(pg_url, ledger)
    desk.close()

