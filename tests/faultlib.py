# SPDX-License-Identifier: MIT
"""The fault-test harness (RELIABILITY "Harness"): a nonce ledger, a real SMTP client, the oracles.

``Ledger`` stamps every message a test injects with a unique nonce (an ``X-Test-Nonce`` header and a
body line), keeps the exact bytes, and records every reply the client got (``0`` = the connection
dropped before a reply). ``check_no_loss`` is the no-loss invariant read back from the store;
``check_outbound`` the outbound one, against the CaptureRelay. ``MaildProcess`` runs the real
``python -m maild run`` so a fault point or an outside SIGKILL can end it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import build_mail
from servers import CaptureRelay
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
TERMINAL = frozenset({"sent", "failed", "bounced"})
CASE_OUTCOMES = frozenset({"new-case", "threaded", "reopened", "new-linked-case"})


def crlf(data: bytes) -> bytes:
    """Every line ending CRLF, as an MTA hands mail over (so stored bytes equal sent bytes)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class Entry:
    nonce: str
    data: bytes
    replies: list[int] = field(default_factory=list)
    moved: bool = False  # IMAP: maild flagged/moved it

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def accepted(self) -> bool:
        return self.moved or any(200 <= r < 300 for r in self.replies)


class Ledger:
    """Every injected message, by nonce, with the replies it got."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def stamp(self, data: bytes) -> Entry:
        nonce = f"n{secrets.token_hex(8)}"
        data = crlf(data)
        stamped = f"X-Test-Nonce: {nonce}\r\n".encode() + data
        if not stamped.endswith(b"\r\n"):
            stamped += b"\r\n"
        stamped += f"nonce {nonce}\r\n".encode()
        entry = Entry(nonce, stamped)
        self.entries[nonce] = entry
        return entry

    def mail(self, n: int, **kwargs: Any) -> Entry:
        """A stamped customer mail (``helpers.build_mail``), Message-ID and subject numbered ``n``."""
        kwargs.setdefault("message_id", f"<fault-{n}-{secrets.token_hex(4)}@initech.example>")
        kwargs.setdefault("subject", f"Fault test {n}")
        return self.stamp(build_mail(**kwargs))

    def record(self, entry: Entry, code: int) -> int:
        entry.replies.append(code)
        return code

    def accepted(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.accepted]

    def unanswered(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.accepted]


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency: a line starting with a dot gets a second one."""
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in data.split(b"\r\n"))
    return stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"


def smtp_send(port: int, ledger: Ledger, entry: Entry, *, mail_from: str = "peter@initech.example",
              rcpts: Iterable[str] = ("support@example.com",), timeout: float = 30) -> int:
    """One SMTP transaction with the exact bytes; the reply code to DATA, 0 when the connection dropped."""
    code = 0
    smtp = smtplib.SMTP(timeout=timeout)
    try:
        smtp.connect("127.0.0.1", port)
        smtp.ehlo("mta.example.net")
        smtp.docmd(f"MAIL FROM:<{mail_from}>")
        for rcpt in rcpts:
            smtp.docmd(f"RCPT TO:<{rcpt}>")
        code, _ = smtp.docmd("DATA")
        if code == 354:
            code = 0
            smtp.send(dot_stuff(entry.data) + b".\r\n")
            code, _ = smtp.getreply()
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.docmd("QUIT")
    except (smtplib.SMTPException, OSError):
        pass  # a dropped connection before the reply: the ledger says 0
    finally:
        smtp.close()
    return ledger.record(entry, code)


def _rows(db_url: str, sql: str) -> list[Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def integrity(db_url: str) -> list[str]:
    """SQLite: PRAGMA integrity_check and foreign_key_check; no blob without an attachment (any store)."""
    problems: list[str] = []
    if db_url.startswith("sqlite"):
        result = [r[0] for r in _rows(db_url, "PRAGMA integrity_check")]
        if result != ["ok"]:
            problems.append(f"integrity_check: {result}")
        orphans = _rows(db_url, "PRAGMA foreign_key_check")
        if orphans:
            problems.append(f"foreign_key_check: {orphans[:5]}")
    blobs = _rows(db_url, "SELECT count(*) FROM blobs b WHERE NOT EXISTS "
                          "(SELECT 1 FROM attachments a WHERE a.sha256 = b.sha256)")  # fmt: skip
    if blobs[0][0]:
        problems.append(f"{blobs[0][0]} orphan blob(s)")
    return problems


def check_no_loss(db_url: str, ledger: Ledger) -> dict[str, int]:
    """The no-loss invariant; AssertionError listing every broken nonce. Returns the counts."""
    raws = _rows(db_url, "SELECT r.id, b.data, r.outcome, r.reason, r.case_id, r.duplicates "
                                 "FROM raw_messages r JOIN raw_bodies b ON b.id = r.id")
    held = {r[0]: r[1] for r in _rows(db_url, "SELECT raw_id, reason FROM held_messages")}
    on_case_rows = [r[0] for r in _rows(db_url, "SELECT raw_id FROM case_messages WHERE raw_id IS NOT NULL")]
    on_case = set(on_case_rows)
    problems = integrity(db_url)
    # processed exactly once: a message recorded on cases twice was processed twice
    problems += [f"raw #{raw_id} recorded on cases {on_case_rows.count(raw_id)} times"
                 for raw_id in sorted(on_case) if on_case_rows.count(raw_id) > 1]
    counts = {"injected": len(ledger.entries), "accepted": 0, "stored": 0, "refused_or_dropped": 0}
    for entry in ledger.entries.values():
        needle = entry.nonce.encode()
        copies = [r for r in raws if needle in bytes(r[1])]
        counts["stored"] += bool(copies)
        if not entry.accepted:
            counts["refused_or_dropped"] += 1
            if len(copies) > 1:
                problems.append(f"{entry.nonce}: refused but stored {len(copies)} times")
            continue
        counts["accepted"] += 1
        if len(copies) != 1:
            problems.append(f"{entry.nonce}: accepted (replies {entry.replies}) but stored {len(copies)} times")
            continue
        row_id, data, outcome, reason, case_id, _ = copies[0]
        if hashlib.sha256(bytes(data)).hexdigest() != entry.sha256:
            problems.append(f"{entry.nonce}: stored bytes differ from the bytes sent")
        if outcome is None:
            problems.append(f"{entry.nonce}: stored without an outcome")
        elif outcome == "held" and not held.get(row_id):
            problems.append(f"{entry.nonce}: held without a held row and reason")
        elif outcome in CASE_OUTCOMES and (case_id is None or row_id not in on_case):
            problems.append(f"{entry.nonce}: outcome {outcome} but not on a case")
        elif outcome not in CASE_OUTCOMES and outcome != "held" and not reason:
            problems.append(f"{entry.nonce}: outcome {outcome} without a reason")
    assert not problems, "no-loss invariant broken:\n" + "\n".join(problems)
    return counts


def check_outbound(db_url: str, relay: CaptureRelay) -> dict[str, int]:
    """Every outbox row terminal; each sent row's Message-ID at the relay; nothing sent to <>."""
    rows = _rows(db_url, "SELECT id, status, message_id, to_addr FROM outbox")
    seen = [m.message["Message-ID"] for m in relay.messages]
    problems = [f"outbox {r[0]} is {r[1]}" for r in rows if r[1] not in TERMINAL]
    problems += [f"outbox {r[0]} sent but not at the relay" for r in rows
                 if r[1] == "sent" and f"<{r[2]}>" not in seen]  # fmt: skip
    problems += [f"relay got mail with MAIL FROM {m.mail_from!r}" for m in relay.messages
                 if m.mail_from.strip("<>") == ""]  # fmt: skip
    assert not problems, "outbound invariant broken:\n" + "\n".join(problems)
    return {"rows": len(rows), "sent": sum(r[1] == "sent" for r in rows), "relay_copies": len(seen)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MaildProcess:
    """``python -m maild --config CFG run`` as a child process, optionally with ``MAILD_FAULT``."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, fault: str | None = None, wrapper: list[str] | None = None) -> MaildProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("MAILD_FAULT", "NOTIFY_SOCKET")}
        env["PYTHONPATH"] = str(REPO)
        if fault:
            env["MAILD_FAULT"] = fault
        with self.log.open("ab") as log:
            command = [*(wrapper or []), sys.executable, "-m", "maild", "--config", str(self.config), "run"]
            # A session of its own: kill() ends maild's work process too (maild.listener), as a crash
            # of the machine or of the whole service would.
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=REPO,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
                return self
            except OSError:
                assert self.proc.poll() is None, f"maild exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "maild did not listen within 30 s"
                time.sleep(0.05)

    def kill(self) -> int:
        """SIGKILL from outside to every process of maild's (a crash); the listener's exit status."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(30)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM: the graceful drain; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            return self.kill()
