# SPDX-License-Identifier: MIT
"""Group commit: messages from several SMTP sessions share one commit, and each still gets 250 only
after the commit that holds it; one message that cannot be stored does not take the others down."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import Desk, build_mail, send_burst_mail
from sqlalchemy import event, func, select

from maild.db import transaction
from maild.ingest import pipeline
from maild.ingest.pipeline import IngestResult, run_ingest_batch
from maild.ingest.raw import RawMail
from maild.ingest.smtp_server import make_controller
from maild.models import Case, RawMessage


def test_a_burst_shares_commits_and_every_250_follows_its_commit(sqlite_desk: Desk) -> None:
    # Eight sessions send while the store is busy: all eight get 250, all eight are cases, in fewer commits.
    desk = sqlite_desk
    commits: list[int] = []
    event.listen(desk.engine, "commit", lambda conn: commits.append(1))
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0")
    intake.start()
    busy = threading.Event()
    release = threading.Event()

    def hold_the_store() -> None:  # another writer (the sender, a CLI command) holds the write lock
        with transaction(desk.factory):
            busy.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_store)
    holder.start()
    busy.wait(10)
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send_burst_mail, intake.port, n) for n in range(8)]
            threading.Timer(1.0, release.set).start()
            replies = [f.result(60) for f in futures]
    finally:
        release.set()
        holder.join(30)
        intake.stop()
    assert [code for code, _ in replies] == [250] * 8
    assert all(b"case-" in reply for _, reply in replies)
    with transaction(desk.factory) as s:
        assert s.scalar(select(func.count(Case.id))) == 8
        assert s.scalar(select(func.count(RawMessage.id))) == 8
    intake_commits = len(commits) - 1  # the holder's own transaction
    assert intake_commits < 8, f"{intake_commits} commits for 8 messages: no group commit happened"


def test_one_message_that_cannot_be_stored_leaves_the_rest_of_its_batch(sqlite_desk: Desk,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A database error while storing one message of a batch: that one fails (451), the other two commit.
    desk = sqlite_desk
    raws = [RawMail(build_mail(subject=f"Batch {n}", message_id=f"<batch-{n}@initech.example>"), source="smtp",
                    rcpt_tos=("support@example.com",)) for n in range(3)]
    real = pipeline.store_raw

    def failing(session: Any, raw: RawMail, now: Any, message_id: str | None = None) -> Any:
        if raw is raws[1]:
            raise OSError("disk I/O error while storing")
        return real(session, raw, now, message_id=message_id)

    monkeypatch.setattr(pipeline, "store_raw", failing)
    results = run_ingest_batch(desk.factory, desk.settings, raws)
    assert isinstance(results[0], IngestResult) and isinstance(results[2], IngestResult)
    assert isinstance(results[1], OSError)
    assert {c["subject"] for c in desk.cases()} == {"Batch 0", "Batch 2"}


def test_a_lone_message_that_cannot_be_stored_raises_and_leaves_nothing(sqlite_desk: Desk,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch of one fails as a whole: the caller answers 451 and nothing of it is in the store.
    desk = sqlite_desk
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError("database or disk is full")

    monkeypatch.setattr(pipeline, "store_raw", full)
    raw = RawMail(build_mail(), source="smtp", rcpt_tos=("support@example.com",))
    with pytest.raises(OSError):
        run_ingest_batch(desk.factory, desk.settings, [raw])
    with transaction(desk.factory) as s:
        assert s.scalar(select(func.count(RawMessage.id))) == 0


def test_a_parse_crash_ahead_of_the_transaction_is_quarantined_as_before(sqlite_desk: Desk,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    # D5: parsing now runs before the transaction; a RecursionError there still keeps the bytes, held.
    desk = sqlite_desk

    def crash(raw: RawMail) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(pipeline, "parse", crash)
    result = desk.ingest(build_mail(subject="Deeply nested"))
    assert result.outcome.value == "held" and "RecursionError" in result.reason
    assert [h.reason for h in desk.held()] == ["unprocessable"]
