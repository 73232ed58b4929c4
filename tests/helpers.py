# SPDX-License-Identifier: MIT
"""Test helpers: a Desk that drives maild through its public entry points, and a mail builder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import smtplib
import threading
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import config
from maild.cli import main
from maild.db import open_store, transaction
from maild.directory import import_records, read_file
from maild.enums import Outcome
from maild.ingest.pipeline import IngestResult, run_ingest
from maild.ingest.raw import RawMail
from maild.models import Case, HeldMessage, Organisation, OutboxItem
from maild.outbound.outbox import message_bytes

MT = ZoneInfo("America/Denver")
# The shared real-world corpus sits beside the checkout (../shared/corpus), in CI too; MAILD_CORPUS moves it.
CORPUS = Path(os.environ.get("MAILD_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))


def corpus(relative: str = "") -> Path:
    """A path in the corpus; skips the test when the corpus is absent, and fails under CI=true."""
    path = CORPUS / relative
    if not path.exists():
        from servers import require

        require("the shared mail corpus", f"{path} not found (shared/ must sit beside the checkout, "
                                          "or set MAILD_CORPUS)")
    return path


def mt(*args: int) -> datetime:
    """A Mountain Time instant: mt(2026, 11, 20, 10, 0)."""
    return datetime(*args, tzinfo=MT)  # type: ignore[misc]


def write_config(directory: Path, *, database_url: str, relay_port: int = 2525, extra: str = "",
                 plan_ahead_days: int = 0) -> Path:
    path = directory / "maild.toml"
    path.write_text(f"""
[database]
url = "{database_url}"
[paths]
data = "{directory}"
invoices = "{directory}/invoices"
[relay]
host = "127.0.0.1"
port = {relay_port}
timeout = 10
[intake]
address = "support@example.com"
extra = {{ "macd@example.com" = "macd", "billing@example.com" = "billing" }}
[security]
secret = "test-secret"
[maintenance]
plan_ahead_days = {plan_ahead_days}
{extra}
""", encoding="utf-8")
    return path


def build_mail(
    *, sender: str = "Peter Gibbons <peter@initech.example>", to: str = "support@example.com",
    subject: str = "Printer on fire", body: str = "The printer on floor 3 is on fire.\n",
    message_id: str | None = "<m1@initech.example>", in_reply_to: str | None = None,
    references: str | None = None, date: datetime | None = None, headers: dict[str, str] | None = None,
    cc: str | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or mt(2026, 11, 20, 10, 0))
    if message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg.as_bytes()


class Desk:
    """maild as its users see it: mail in, CLI out."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.settings = config.load(config_path, env={})
        self.engine, self.factory = open_store(self.settings.database_url)

    def close(self) -> None:
        self.engine.dispose()

    def import_directory(self, path: Path) -> None:
        with transaction(self.factory) as s:
            import_records(s, read_file(path))

    def ingest(self, data: bytes, *, now: datetime | None = None, rcpt: tuple[str, ...] = (),
               mail_from: str | None = None, source: str = "smtp") -> IngestResult:
        raw = RawMail(data=data, source=source, rcpt_tos=rcpt, mail_from=mail_from)
        return run_ingest(self.factory, self.settings, raw, now=now or mt(2026, 11, 20, 10, 5))

    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--config", str(self.config_path), *args])
        return code, out.getvalue(), err.getvalue()

    def cli_json(self, *args: str) -> Any:
        code, out, err = self.cli(*args)
        assert code == 0, err
        return json.loads(out)

    def case(self, number: int) -> dict[str, Any]:
        result: dict[str, Any] = self.cli_json("cases", "show", str(number), "--json")
        return result

    def cases(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.cli_json("cases", "list", "--json")
        return result

    def outbox(self) -> list[OutboxItem]:
        """Every outbox row, its bytes composed (and stored, as the sender would) so ``.data`` is set."""
        with transaction(self.factory) as s:
            items = list(s.scalars(select(OutboxItem).order_by(OutboxItem.id)))
            for item in items:
                message_bytes(item, self.settings)
            return items

    def held(self) -> list[HeldMessage]:
        with transaction(self.factory) as s:
            return list(s.scalars(select(HeldMessage).order_by(HeldMessage.id)))

    def case_row(self, number: int) -> Case:
        with transaction(self.factory) as s:
            case = s.get(Case, number)
            assert case is not None
            return case


class BlockingIngest:
    """A stand-in for ``run_ingest`` (the listener's collaborator, not an external system) that signals
    when a message reached it and returns only once released: for drain and concurrency tests."""

    def __init__(self, case: int = 7) -> None:
        self.case = case
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, factory: object, settings: object, raw: RawMail) -> IngestResult:
        self.entered.set()
        self.release.wait(20)
        return IngestResult("<a@x>", Outcome.NEW_CASE, self.case, "")


def acme_case(session: Session, subject: str, at: datetime) -> Case:
    """A case of a German organisation (Europe/Berlin), opened at ``at``, flushed so it has a number."""
    org = Organisation(name="Acme GmbH", locale="de", timezone="Europe/Berlin")
    case = Case(subject=subject, requester="anna@acme.example", requester_name="Anna", organisation=org,
                created_at=at, updated_at=at)  # fmt: skip
    session.add(case)
    session.flush()
    return case


def send_burst_mail(port: int, n: int) -> tuple[int, bytes]:
    """Peter's n-th mail of an outage burst ("Outage report n") over SMTP: (code, reply)."""
    data = build_mail(subject=f"Outage report {n}", message_id=f"<burst-{n}@initech.example>")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mta.initech.example")
        client.mail("peter@initech.example")
        client.rcpt("support@example.com")
        return client.data(data)
