# SPDX-License-Identifier: MIT
"""The SMTP queue (``[smtp] queue = true``): 250 once the raw message and envelope are committed, the
case work right after, oldest first, exactly once, and nothing stuck behind a message that kills the
process. Real stores (SQLite and PostgreSQL), real sockets, a real relay."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from faultlib import MaildProcess, free_port
from helpers import Desk, build_mail, mt, send_burst_mail, write_config
from servers import CaptureRelay
from sqlalchemy import select, update

from maild import clock
from maild.db import transaction
from maild.ingest import parse as parse_module
from maild.ingest import pipeline, queue
from maild.ingest import stamp as stamp_module
from maild.ingest.queue import Queued, enqueue_batch, process_pending
from maild.ingest.raw import RawMail
from maild.ingest.smtp_server import make_controller
from maild.ingest.stamp import IntakeStamp
from maild.models import RawMessage


def smtp_raw(data: bytes, at_minute: int = 5) -> RawMail:
    return RawMail(data=data, source="smtp", mail_from="peter@initech.example", rcpt_tos=("support@example.com",),
                   peer="127.0.0.1", received_at=mt(2026, 11, 20, 10, at_minute))


def rows(desk: Desk) -> list[tuple[int, str | None, int | None, int]]:
    with transaction(desk.factory) as s:
        return [(r.id, r.outcome, r.case_id, r.attempts)
                for r in s.scalars(select(RawMessage).order_by(RawMessage.id))]


def test_queued_mail_waits_unprocessed_then_is_processed_oldest_first(desk: Desk) -> None:
    # A new conversation and the customer's follow-up are queued together: nothing is decided at
    # queueing; processing takes the original first, so the follow-up lands on the case it opened.
    original = smtp_raw(build_mail(subject="VPN down", message_id="<q1@initech.example>"))
    follow_up = smtp_raw(build_mail(subject="Re: VPN down", message_id="<q2@initech.example>",
                                    in_reply_to="<q1@initech.example>", references="<q1@initech.example>"), 6)
    queued = enqueue_batch(desk.factory, [original, follow_up])
    assert [q.duplicate for q in queued if isinstance(q, Queued)] == [False, False]
    assert [(outcome, case) for _, outcome, case, _ in rows(desk)] == [(None, None), (None, None)]
    assert desk.cli_json("queue")["queued"] == 2
    assert desk.cases() == []

    assert process_pending(desk.factory, desk.settings) == 2
    assert [(outcome, case) for _, outcome, case, _ in rows(desk)] == [("new-case", 1), ("threaded", 1)]
    assert len(desk.cases()) == 1
    assert [i.template for i in desk.outbox()] == ["ack_new_case"]
    assert desk.cli_json("queue") == {"queued": 0, "oldest_received_at": None, "begun_before": 0}
    assert process_pending(desk.factory, desk.settings) == 0


def test_the_same_copy_queued_twice_is_one_message(desk: Desk) -> None:
    # An MTA re-sends after a lost 250 (RELIABILITY D2): the second copy is counted on the first row.
    raw = smtp_raw(build_mail())
    first, second = enqueue_batch(desk.factory, [raw]), enqueue_batch(desk.factory, [raw])
    assert isinstance(first[0], Queued) and isinstance(second[0], Queued)
    assert (second[0].raw_id, second[0].duplicate) == (first[0].raw_id, True)
    process_pending(desk.factory, desk.settings)
    assert len(desk.cases()) == 1 and len(rows(desk)) == 1


def test_a_message_that_keeps_stopping_the_process_is_quarantined_and_the_queue_goes_on(
        desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    # Three processing runs were begun on the first message and none finished (a crash each time):
    # it is held as unprocessable without being parsed again; the messages behind it become cases.
    enqueue_batch(desk.factory, [smtp_raw(build_mail(subject=f"Issue {n}", message_id=f"<k{n}@initech.example>"),
                                          n) for n in range(3)])
    with transaction(desk.factory) as s:
        first = s.scalars(select(RawMessage.id).order_by(RawMessage.id)).first()
        s.execute(update(RawMessage).where(RawMessage.id == first).values(attempts=queue.MAX_ATTEMPTS))

    class Crash(BaseException):  # what killed the process those three times: nothing may catch it
        pass

    def crash(*_: Any) -> Any:
        raise Crash("the quarantined message was parsed again")

    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "parse", crash)
        patched.setattr(parse_module, "parse", crash)
        # A message begun before is claimed alone, so those behind it are not charged for its attempts.
        assert process_pending(desk.factory, desk.settings) == 1
    assert process_pending(desk.factory, desk.settings) == 2
    (held,) = desk.held()
    assert held.reason == "unprocessable" and "never finished" in held.detail
    assert [(outcome, attempts) for _, outcome, _, attempts in rows(desk)] == [
        ("held", queue.MAX_ATTEMPTS + 1), ("new-case", 1), ("new-case", 1)]
    assert [c["subject"] for c in desk.cases()] == ["Issue 1", "Issue 2"]


def test_a_queued_reply_is_decided_as_of_its_arrival(desk: Desk) -> None:
    # Closed on the 2nd at 10:00; a reply that arrived on the 9th at 09:59 but is processed later
    # (the daemon was down overnight) still reopens the case: the 7 days count to its arrival.
    desk.ingest(build_mail(), now=mt(2026, 11, 2, 9, 0))
    desk.cli_json("cases", "set", "1", "--status", "closed", "--now", "2026-11-02T10:00")
    reply = RawMail(data=build_mail(subject="Re: [Case #1] Printer on fire", message_id="<late@initech.example>",
                                    in_reply_to="<m1@initech.example>"),
                    source="smtp", rcpt_tos=("support@example.com",), received_at=mt(2026, 11, 9, 9, 59))
    enqueue_batch(desk.factory, [reply])
    process_pending(desk.factory, desk.settings)
    assert desk.case(1)["status"] == "customer-reopened"
    assert len(desk.cases()) == 1


def test_maild_queue_reports_and_processes_what_waits(desk: Desk) -> None:
    # The operator's view: how much waits and since when; --process drains it with the daemon stopped.
    enqueue_batch(desk.factory, [smtp_raw(build_mail(subject=f"Q {n}", message_id=f"<c{n}@initech.example>"), n)
                                 for n in (1, 2)])
    report = desk.cli_json("queue")
    assert (report["queued"], report["begun_before"]) == (2, 0)
    assert report["oldest_received_at"].startswith("2026-11-20T17:01")  # 10:01 in America/Denver, as UTC
    assert desk.cli_json("queue", "--process") == {"queued": 0, "oldest_received_at": None, "begun_before": 0,
                                                   "processed": 2}
    assert len(desk.cases()) == 2


def test_a_burst_over_smtp_is_answered_from_the_queue_and_every_message_is_acknowledged(
        make_desk: Callable[..., Desk]) -> None:
    # Twenty sessions over four connections: each 250 names the stored row, every message becomes a
    # case, and the acknowledgements (up to the per-sender cap) reach the relay.
    relay = CaptureRelay()
    relay.start()
    try:
        desk = make_desk(relay=relay)
        intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0", queue=True).start()
        try:
            with ThreadPoolExecutor(4) as pool:
                replies = list(pool.map(lambda n: send_burst_mail(intake.port, n), range(20)))
            assert all(code == 250 and reply.startswith(b"2.0.0 Ok: queued as raw-") for code, reply in replies)
            assert len({reply for _, reply in replies}) == 20
            deadline = time.monotonic() + 30
            while desk.cli_json("queue")["queued"] and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            intake.stop(grace=10)
        assert sorted(c["subject"] for c in desk.cases()) == sorted(f"Outage report {n}" for n in range(20))
        assert desk.cli("send")[0] == 0
        acks = [m for m in relay.wait_for(6, timeout=30) if m.rcpt_tos == ("peter@initech.example",)]
        cap = desk.settings.intake.ack_per_sender_per_hour  # the rest are suppressed, and staff alerted
        assert len(acks) == cap and all(str(m.message["Subject"]).startswith("[Case #") for m in acks)
    finally:
        relay.stop()


def test_stopping_finishes_the_queue_within_the_grace_period(sqlite_desk: Desk) -> None:
    # Mail queued when the listener stops is processed before it exits (within the grace period).
    intake = make_controller(sqlite_desk.factory, sqlite_desk.settings, listen="127.0.0.1:0", queue=True).start()
    enqueue_batch(sqlite_desk.factory, [smtp_raw(build_mail(subject="Left over", message_id="<lo@i.example>"))])
    intake.stop(grace=10)
    assert sqlite_desk.cli_json("queue")["queued"] == 0
    assert [c["subject"] for c in sqlite_desk.cases()] == ["Left over"]


def test_the_store_refusing_the_queue_insert_is_a_451_and_the_retry_lands_once(sqlite_desk: Desk,
                                                                              tmp_path: Path) -> None:
    # D4 with the queue: the write lock is held past the busy timeout -> 451 (never 5yz); the retry
    # after it is released is stored and processed once.

    from maild.db import make_engine, make_sessionmaker

    engine = make_engine(sqlite_desk.settings.database_url, busy_timeout_ms=500)
    intake = make_controller(make_sessionmaker(engine), sqlite_desk.settings, listen="127.0.0.1:0",
                             queue=True).start()
    locker = sqlite3.connect(tmp_path / "maild.db", isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        assert send_burst_mail(intake.port, 1)[0] == 451
        locker.execute("COMMIT")
        assert send_burst_mail(intake.port, 1)[0] == 250
    finally:
        locker.close()
        intake.stop(grace=10)
        engine.dispose()
    assert [(outcome, case) for _, outcome, case, _ in rows(sqlite_desk)] == [("new-case", 1)]


def test_processing_waits_for_a_pause_in_intake_but_never_for_long(tmp_path: Path) -> None:
    # While the listener commits (the stamp is fresh) processing holds back, up to its limit.
    stamp = IntakeStamp(tmp_path / "intake.stamp")
    assert stamp.wait_quiet(quiet=0.2, limit=1.0) == 0.0  # never stamped: no wait
    stamp.touch()
    assert 0.1 <= stamp.wait_quiet(quiet=0.2, limit=1.0) < 0.9
    stamp.touch()
    assert stamp.wait_quiet(quiet=5.0, limit=0.1) < 1.0


def test_copies_within_one_batch_and_across_batches_are_one_row(desk: Desk) -> None:
    # Two copies of a message in one group commit, and a third later: one row, counted twice more.
    a = smtp_raw(build_mail(subject="A", message_id="<a@i.example>"))
    b = smtp_raw(build_mail(subject="B", message_id="<b@i.example>"))
    first = enqueue_batch(desk.factory, [a, b, a])
    again = enqueue_batch(desk.factory, [a])
    assert all(isinstance(q, Queued) for q in first + again)
    ids = [(q.raw_id, q.duplicate) for q in first + again if isinstance(q, Queued)]
    assert ids[0][1] is False and ids[1][1] is False and ids[0][0] != ids[1][0]
    assert ids[2] == (ids[0][0], True) and ids[3] == (ids[0][0], True)
    with transaction(desk.factory) as s:
        assert [(r.id, r.duplicates) for r in s.scalars(select(RawMessage).order_by(RawMessage.id))] == [
            (ids[0][0], 2), (ids[1][0], 0)]


def test_one_process_works_the_queue_at_a_time(desk: Desk) -> None:
    # While another process works the queue (a second daemon, an operator's `maild queue --process`),
    # this one takes nothing: no message is begun twice, and none is charged an attempt for it.
    enqueue_batch(desk.factory, [smtp_raw(build_mail(subject="Turns", message_id="<t@i.example>"))])
    with queue._one_processor(desk.factory) as ours:
        assert ours
        assert process_pending(desk.factory, desk.settings) == 0
        assert desk.cli_json("queue", "--process")["processed"] == 0
        assert [(outcome, attempts) for _, outcome, _, attempts in rows(desk)] == [(None, 0)]
    assert process_pending(desk.factory, desk.settings) == 1
    assert [(outcome, attempts) for _, outcome, _, attempts in rows(desk)] == [("new-case", 1)]


def test_the_no_response_rule_waits_for_queued_mail(desk: Desk) -> None:
    # The technician asked a question; the customer's answer is accepted but still queued when the
    # no-response rule would close the case: the rule waits, and the answer lands on the open case.
    desk.ingest(build_mail(), now=mt(2026, 11, 2, 9, 0))
    desk.cli_json("cases", "reply", "1", "--body", "Which floor?", "--await-customer", "--now", "2026-11-02T10:00")
    answer = RawMail(data=build_mail(subject="Re: [Case #1] Printer on fire", message_id="<ans@initech.example>",
                                     in_reply_to="<m1@initech.example>", body="Floor 3.\n"),
                     source="smtp", rcpt_tos=("support@example.com",), received_at=mt(2026, 11, 3, 9, 0))
    enqueue_batch(desk.factory, [answer])
    for at in ("2026-11-20T10:00", "2026-11-27T10:00"):  # due to warn, then due to close
        assert desk.cli("tick", "--now", at)[0] == 0
    assert desk.case(1)["status"] != "closed-no-response"
    assert "no_response_warning" not in [i.template for i in desk.outbox()]
    process_pending(desk.factory, desk.settings)
    assert desk.cli("tick", "--now", "2026-11-27T10:05")[0] == 0
    case = desk.case(1)
    assert case["status"] != "closed-no-response"
    assert [m["text"].strip() for m in case["messages"]][-1] == "Floor 3."


def test_an_error_of_the_store_does_not_count_as_an_attempt(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    # The store fails while a message is processed (locked, down): the run fails and is retried later,
    # and the failed run is not counted towards quarantine: only crashes are.
    enqueue_batch(desk.factory, [smtp_raw(build_mail(subject=f"E {n}", message_id=f"<e{n}@i.example>"), n)
                                 for n in range(2)])
    real = pipeline.settle

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("database is locked")

    monkeypatch.setattr(pipeline, "settle", locked)
    for _ in range(queue.MAX_ATTEMPTS + 1):
        with pytest.raises(TimeoutError):
            process_pending(desk.factory, desk.settings)
    assert [(outcome, attempts) for _, outcome, _, attempts in rows(desk)] == [(None, 0), (None, 0)]
    monkeypatch.setattr(pipeline, "settle", real)
    assert process_pending(desk.factory, desk.settings) == 2
    assert sorted(c["subject"] for c in desk.cases()) == ["E 0", "E 1"]


def test_a_daemon_started_without_the_queue_still_finishes_what_was_queued(tmp_path: Path,
                                                                          relay: CaptureRelay) -> None:
    # The desk switched to `queue = false` while mail was still queued (or a daemon was killed with
    # mail queued): `maild run` processes it at start, and the customer gets the acknowledgement.
    port = free_port()
    cfg = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db", relay_port=relay.port,
                       extra=f'[smtp]\nlisten = "127.0.0.1:{port}"\nqueue = false\n')
    desk = Desk(cfg)
    desk.import_directory(REPO / "examples" / "directory.toml")
    enqueue_batch(desk.factory, [smtp_raw(build_mail(subject="Left in the queue", message_id="<lq@i.example>"))])
    proc = MaildProcess(cfg, port, tmp_path / "maild.log").start()
    try:
        (ack,) = relay.wait_for(1, timeout=30)
    finally:
        assert proc.stop() == 0
    assert str(ack.message["Subject"]).endswith("Left in the queue") and ack.rcpt_tos == ("peter@initech.example",)
    assert desk.cli_json("queue")["queued"] == 0
    desk.close()


def test_staff_hear_once_when_accepted_mail_waits_unprocessed(desk: Desk) -> None:
    # Processing has stalled (a hung message, a failing store): after 15 minutes the scheduler alerts
    # staff, once for that oldest message, not at every tick.
    enqueue_batch(desk.factory, [smtp_raw(build_mail(subject="Stuck", message_id="<st@i.example>"))])  # 10:05
    code, out, _ = desk.cli("tick", "--now", "2026-11-20T10:15")
    assert code == 0 and "queue-stuck-alert" not in out
    code, out, _ = desk.cli("tick", "--now", "2026-11-20T10:25")
    assert code == 0 and "queue-stuck-alert" in out
    code, out, _ = desk.cli("tick", "--now", "2026-11-20T10:35")
    assert code == 0 and "queue-stuck-alert" not in out
    alerts = [i for i in desk.outbox() if i.template == "staff_alert"]  # one per staff recipient
    assert alerts and len({i.to_addr for i in alerts}) == len(alerts)
    assert all("Accepted mail not processed for 20 minutes (1 waiting)" in i.subject for i in alerts)


def test_under_a_load_that_never_pauses_young_mail_yields_and_old_mail_does_not(
        desk: Desk, tmp_path: Path) -> None:
    # The listener commits every 5 ms without a pause. A message that has waited less than 30 s holds
    # back (up to 0.5 s) so intake goes first; mail that has waited longer goes ahead at once, so a
    # load that never pauses cannot starve processing.
    stamp = IntakeStamp(tmp_path / "intake.stamp")
    stop = threading.Event()

    def busy_listener() -> None:
        while not stop.is_set():
            stamp.touch()
            time.sleep(0.005)

    listener = threading.Thread(target=busy_listener)
    listener.start()
    try:
        enqueue_batch(desk.factory, [smtp_raw(build_mail(subject=f"Old {n}", message_id=f"<old{n}@i.example>"), n)
                                     for n in range(6)])  # received 2026-11-20: long ago
        assert process_pending(desk.factory, desk.settings, stamp=stamp, limit=1) == 1  # imports, templates
        started = time.monotonic()
        assert process_pending(desk.factory, desk.settings, stamp=stamp) == 5
        old_took = time.monotonic() - started
        young = RawMail(data=build_mail(subject="Young", message_id="<young@i.example>"), source="smtp",
                        rcpt_tos=("support@example.com",), received_at=clock.now())
        enqueue_batch(desk.factory, [young])
        started = time.monotonic()
        assert process_pending(desk.factory, desk.settings, stamp=stamp) == 1
        young_took = time.monotonic() - started
    finally:
        stop.set()
        listener.join()
    assert old_took < 1.25, old_took  # five messages, no yielding (yielding, it would be 5 x 0.5 s)
    assert young_took >= stamp_module.YIELD_MAX_SECONDS * 0.9, young_took
    assert len(desk.cases()) == 7


def test_a_stopping_daemon_stops_between_messages_and_gives_the_rest_back(
        desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the stop's grace the queue's run ends after the message under way: the messages it had
    # claimed but not begun go back uncounted (a stop is not a crash), and the next start does them.
    enqueue_batch(desk.factory, [smtp_raw(build_mail(subject=f"H {n}", message_id=f"<h{n}@i.example>"), n)
                                 for n in range(3)])
    halt = threading.Event()
    real = pipeline.settle

    def then_stop(*args: Any, **kwargs: Any) -> Any:
        halt.set()  # the grace ends while the first message is processed
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "settle", then_stop)
    assert process_pending(desk.factory, desk.settings, halt=halt) == 1
    monkeypatch.undo()
    assert [(outcome, attempts) for _, outcome, _, attempts in rows(desk)] == \
        [("new-case", 1), (None, 0), (None, 0)]
    assert desk.cli_json("queue")["queued"] == 2
    assert process_pending(desk.factory, desk.settings) == 2
    assert sorted(c["subject"] for c in desk.cases()) == ["H 0", "H 1", "H 2"]
