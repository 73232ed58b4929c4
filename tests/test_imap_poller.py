# SPDX-License-Identifier: MIT
"""IMAP intake against a real Dovecot: cases via the CLI, folder contents via IMAP (RELIABILITY D6-D8)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Desk, build_mail, write_config
from imapclient import IMAPClient
from plugin_servers import ImapUser
from servers import DovecotServer

from maild.ingest.imap import ImapPoller
from maild.ingest.imap_auth import ImapAuthError

REPO = Path(__file__).resolve().parents[1]
SEEN = b"\\Seen"


@dataclass(frozen=True)
class Stored:
    uid: int
    flags: tuple[bytes, ...]
    body: bytes


def imap(user: ImapUser) -> IMAPClient:
    client = IMAPClient(user.host, port=user.port, ssl=False, timeout=10)
    client.login(user.name, user.password)
    return client


def append(user: ImapUser, *messages: bytes, folder: str = "INBOX") -> None:
    with imap(user) as client:
        if not client.folder_exists(folder):
            client.create_folder(folder)
        for data in messages:
            client.append(folder, data)


def folder(user: ImapUser, name: str) -> list[Stored]:
    """What a mail client would see in folder ``name`` (read-only, nothing flagged)."""
    with imap(user) as client:
        if not client.folder_exists(name):
            return []
        client.select_folder(name, readonly=True)
        uids = client.search("ALL")
        if not uids:
            return []
        got = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
        return [Stored(u, tuple(got[u][b"FLAGS"]), got[u][b"BODY[]"]) for u in sorted(got)]


def crlf(data: bytes) -> bytes:
    """Mail as it is stored on an IMAP server (imapclient's APPEND turns LF into CRLF)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mail(n: int, sender: str = "Peter Gibbons <peter@initech.example>") -> bytes:
    return crlf(build_mail(sender=sender, subject=f"Problem {n}", body=f"Problem number {n}.\nX-Test-Nonce n{n}\n",
                           message_id=f"<imap-{n}@initech.example>"))


def make_desk(tmp_path: Path, url: str, extra: str = "") -> Desk:
    cfg = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db",
                       extra=f'[imap]\nurl = "{url}"\npoll_seconds = 1\n{extra}')
    desk = Desk(cfg)
    desk.import_directory(REPO / "examples" / "directory.toml")
    return desk


@pytest.fixture
def desk(tmp_path: Path, imap_user: ImapUser) -> Iterator[Desk]:
    d = make_desk(tmp_path, imap_user.url)
    yield d
    d.close()


def subjects(desk: Desk) -> list[str]:
    return sorted(c["subject"] for c in desk.cases())


def alerts(desk: Desk) -> list[dict[str, Any]]:
    return [o for o in desk.cli_json("outbox", "list", "--json") if o["template"] == "staff_alert"]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_three_messages_become_cases_and_move_to_processed_seen(desk: Desk, imap_user: ImapUser) -> None:
    # Three mails in INBOX from an MPOC: one poll opens three cases and files all three, read, in Processed.
    append(imap_user, mail(1), mail(2), mail(3))
    poller = ImapPoller(desk.factory, desk.settings)
    results = poller.poll_once()
    poller.close()
    assert [r.outcome.value for r in results] == ["new-case"] * 3
    assert subjects(desk) == ["Problem 1", "Problem 2", "Problem 3"]
    assert folder(imap_user, "INBOX") == []
    processed = folder(imap_user, "Processed")
    assert sorted(s.body for s in processed) == sorted([mail(1), mail(2), mail(3)])
    assert all(SEEN in s.flags for s in processed)


def test_unparseable_message_goes_to_failed_and_is_held(desk: Desk, imap_user: ImapUser) -> None:
    # Junk between two good mails: the good ones become cases, the junk is kept (held) and filed in Failed.
    junk = b"this is not a mail message\r\n\x80\x81 binary junk\r\n"
    append(imap_user, mail(1), junk, mail(2))
    with_poller = ImapPoller(desk.factory, desk.settings)
    with_poller.poll_once()
    with_poller.close()
    assert subjects(desk) == ["Problem 1", "Problem 2"]
    held = desk.cli_json("held", "list", "--json")
    assert [h["reason"] for h in held] == ["unprocessable"]
    assert [s.body for s in folder(imap_user, "Failed")] == [junk]
    assert len(folder(imap_user, "Processed")) == 2
    assert folder(imap_user, "INBOX") == []


def test_new_poller_resumes_after_the_stored_uid(desk: Desk, imap_user: ImapUser) -> None:
    # A restart (new poller) processes only mail that arrived since; with nothing new it does nothing.
    append(imap_user, mail(1))
    first = ImapPoller(desk.factory, desk.settings)
    first.poll_once()
    first.close()
    append(imap_user, mail(2))
    second = ImapPoller(desk.factory, desk.settings)
    results = second.poll_once()
    assert second.poll_once() == []
    second.close()
    assert [(r.outcome.value, r.message_id) for r in results] == [("new-case", "imap-2@initech.example")]
    third = ImapPoller(desk.factory, desk.settings)
    assert third.poll_once() == []
    third.close()
    assert subjects(desk) == ["Problem 1", "Problem 2"]
    assert len(folder(imap_user, "Processed")) == 2


CRASH_SCRIPT = """
import sys
from maild import config
from maild.db import open_store
from maild.ingest.imap import ImapPoller
settings = config.load(sys.argv[1], env={})
engine, factory = open_store(settings.database_url)
ImapPoller(factory, settings).poll_once()
"""


def run_with_fault(desk: Desk, point: str) -> int:
    env = {**os.environ, "MAILD_FAULT": point}
    done = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(desk.config_path)], env=env, cwd=REPO,
                          capture_output=True, timeout=60, check=False)
    return done.returncode


def test_sigkill_after_fetch_leaves_the_message_unread_in_inbox(desk: Desk, imap_user: ImapUser) -> None:
    # D6: killed after the fetch, before the commit: the mail is untouched on the server and the next poll
    # turns it into exactly one case.
    append(imap_user, mail(1))
    assert run_with_fault(desk, "after_fetch") == -9
    inbox = folder(imap_user, "INBOX")
    assert len(inbox) == 1 and SEEN not in inbox[0].flags
    assert desk.cases() == []
    poller = ImapPoller(desk.factory, desk.settings)
    poller.poll_once()
    poller.close()
    assert subjects(desk) == ["Problem 1"]
    assert folder(imap_user, "INBOX") == []
    assert len(folder(imap_user, "Processed")) == 1


def test_sigkill_after_commit_before_move_is_absorbed_as_duplicate(desk: Desk, imap_user: ImapUser) -> None:
    # D7: killed after the commit, before the move: the case exists, the mail is still in INBOX; the next
    # poll sees a duplicate, opens no second case and files the mail in Processed exactly once.
    append(imap_user, mail(1))
    assert run_with_fault(desk, "after_commit_before_move") == -9
    assert subjects(desk) == ["Problem 1"]
    assert len(folder(imap_user, "INBOX")) == 1
    poller = ImapPoller(desk.factory, desk.settings)
    results = poller.poll_once()
    poller.close()
    assert [r.outcome.value for r in results] == ["duplicate"]
    assert subjects(desk) == ["Problem 1"]
    assert folder(imap_user, "INBOX") == []
    assert [s.body for s in folder(imap_user, "Processed")] == [mail(1)]


def test_uidvalidity_change_rescans_without_duplicates(tmp_path: Path, imap_user: ImapUser) -> None:
    # D8: the mailbox is recreated with the same mails plus a new one: no duplicate cases, the new mail
    # opens a case, and staff get one alert about the reset.
    url = imap_user.url.rsplit("/", 1)[0] + "/Support"
    desk = make_desk(tmp_path, url)
    append(imap_user, mail(1), mail(2), folder="Support")
    poller = ImapPoller(desk.factory, desk.settings)
    poller.poll_once()
    poller.close()
    with imap(imap_user) as client:
        before = client.folder_status("Support", ["UIDVALIDITY"])[b"UIDVALIDITY"]
        client.delete_folder("Support")
        time.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock
        client.create_folder("Support")
        assert client.folder_status("Support", ["UIDVALIDITY"])[b"UIDVALIDITY"] != before
    append(imap_user, mail(1), mail(2), mail(3), folder="Support")
    poller = ImapPoller(desk.factory, desk.settings)
    results = poller.poll_once()
    poller.close()
    assert [r.outcome.value for r in results] == ["duplicate", "duplicate", "new-case"]
    assert subjects(desk) == ["Problem 1", "Problem 2", "Problem 3"]
    assert {a["subject"] for a in alerts(desk)} == {"[maild] IMAP mailbox Support was recreated (UIDVALIDITY changed)"}
    desk.close()


def test_oversized_message_goes_to_failed_unread_with_an_alert(tmp_path: Path, imap_user: ImapUser) -> None:
    # A mail over [smtp] max_message_size is not fetched: it is filed in Failed and staff are told.
    desk = make_desk(tmp_path, imap_user.url, "[smtp]\nmax_message_size = 4000\n")
    big = crlf(build_mail(subject="Huge", body=("y" * 70 + "\n") * 80, message_id="<big@x>"))
    append(imap_user, mail(1), big)
    poller = ImapPoller(desk.factory, desk.settings)
    poller.poll_once()
    poller.close()
    assert subjects(desk) == ["Problem 1"]
    failed = folder(imap_user, "Failed")
    assert [s.body for s in failed] == [big] and SEEN not in failed[0].flags
    assert [a["subject"] for a in alerts(desk)][:1] == ["[maild] Oversized mail moved to Failed"]
    desk.close()


def test_poller_survives_a_dovecot_restart(desk: Desk, imap_user: ImapUser, dovecot_server: DovecotServer) -> None:
    # The running poller (IDLE) loses its server, reconnects by itself and picks up mail sent afterwards.
    stop = threading.Event()
    poller = ImapPoller(desk.factory, desk.settings)
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        append(imap_user, mail(1))
        wait_until("the first case", lambda: len(desk.cases()) == 1)
        dovecot_server.stop()
        # Dovecot lets logged-in sessions outlive its master, so cut the poller's connection as a
        # server crash or a network drop would; its reconnects then meet a closed port for a while.
        assert poller._client is not None
        poller._client.socket().shutdown(socket.SHUT_RDWR)
        time.sleep(2.0)
        dovecot_server.ensure_running()
        append(imap_user, mail(2))
        wait_until("the case after the restart", lambda: len(desk.cases()) == 2, timeout=15)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "the poller did not stop within 10 s of the stop request"
    assert subjects(desk) == ["Problem 1", "Problem 2"]
    assert len(folder(imap_user, "Processed")) == 2


def test_idle_poller_takes_new_mail_promptly_and_stops_on_request(desk: Desk, imap_user: ImapUser) -> None:
    # With IDLE, new mail becomes a case within seconds, and a stop request ends the loop quickly.
    stop = threading.Event()
    poller = ImapPoller(desk.factory, desk.settings)
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(1.0)
    append(imap_user, mail(7))
    wait_until("the case", lambda: len(desk.cases()) == 1, timeout=10)
    started = time.monotonic()
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 6


def test_wrong_password_is_loud_alerts_once_and_backs_off(
    desk: Desk, imap_user: ImapUser, caplog: pytest.LogCaptureFixture
) -> None:
    # A refused login: an error in the log, one alert per staff recipient, and no tight retry loop.
    bad = imap_user.url.replace(f":{imap_user.password}@", ":wrong-password@")
    stop = threading.Event()
    poller = ImapPoller(desk.factory, desk.settings, bad)
    caplog.set_level(logging.WARNING, logger="maild.ingest.imap")
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(3.0)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "LOGIN FAILED" in r.getMessage()]
    assert 1 <= len(failures) <= 2
    with pytest.raises(ImapAuthError):  # a second failure within the hour: logged, but no second alert
        ImapPoller(desk.factory, desk.settings, bad).poll_once()
    sent = alerts(desk)
    assert sent and len(sent) == len({a["to"] for a in sent})
    assert {a["subject"] for a in sent} == {"[maild] IMAP login to 127.0.0.1 failed"}
    assert "wrong-password" not in caplog.text
