# SPDX-License-Identifier: MIT
"""``[smtp] processes``: intake in worker processes, and SQLite writers of several processes taking turns.

The daemon is the real ``python -m maild run`` with two intake worker processes, a real capture relay
and a SQLite store; a worker is killed with SIGKILL from outside, as the OOM killer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO
from faultlib import Ledger, MaildProcess, check_no_loss, free_port, smtp_send
from helpers import Desk, write_config
from servers import CaptureRelay
from sqlalchemy import text

from maild import config
from maild.db import make_engine, make_sessionmaker, transaction
from maild.ingest.workers import IntakePool


@pytest.fixture(params=[True, False], ids=["queue", "no-queue"])
def pooled(tmp_path: Path, relay: CaptureRelay, request: pytest.FixtureRequest) -> Iterator[tuple[Desk, MaildProcess]]:
    # With the queue the workers do the case work after the 250; without it, before.
    port = free_port()
    queue = "true" if request.param else "false"
    cfg = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db", relay_port=relay.port,
                       extra=f'[smtp]\nlisten = "127.0.0.1:{port}"\nprocesses = 2\nqueue = {queue}\n')
    desk = Desk(cfg)
    desk.import_directory(REPO / "examples" / "directory.toml")
    proc = MaildProcess(cfg, port, tmp_path / "maild.log")
    yield desk, proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()
    desk.close()


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (the forkserver and the workers it forked)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            kids = (task / "children").read_text().split()
            for kid in map(int, kids):
                if kid not in found:
                    found.add(kid)
                    todo.append(kid)
    return found


def test_worker_processes_take_mail_and_the_desk_acknowledges_it(pooled: tuple[Desk, MaildProcess],
                                                                  relay: CaptureRelay) -> None:
    # Eight mails from four MPOCs at once through two intake workers: eight 250s, cases, acknowledgements.
    desk, proc = pooled
    proc.start()
    ledger = Ledger()
    senders = ["anna@acme.example", "bernd@acme.example", "paula@globex.example", "peter@initech.example"] * 2
    entries = [(ledger.mail(n, sender=f"Customer <{who}>"), who) for n, who in enumerate(senders)]
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda e: smtp_send(proc.port, ledger, e[0], mail_from=e[1]), entries))
    assert codes == [250] * 8
    acks = relay.wait_for(8, timeout=60)
    assert sorted(a.rcpt_tos[0] for a in acks) == sorted(senders)
    assert all(str(a.message["Subject"]).startswith("[Case #") for a in acks)
    assert len(desk.cases()) == 8
    assert "intake runs in 2 worker processes" in proc.log.read_text()
    assert proc.stop() == 0
    check_no_loss(desk.settings.database_url, ledger)


def work_process(pid: int) -> int | None:
    """The work process ``maild run`` started beside its listener (maild.workproc); None if none."""
    for kid in children(pid):
        with contextlib.suppress(OSError):
            if b"maild.workproc" in Path(f"/proc/{kid}/cmdline").read_bytes():
                return kid
    return None


def test_a_killed_worker_costs_a_retry_and_nothing_else(pooled: tuple[Desk, MaildProcess]) -> None:
    # A worker dies (OOM killer): what it held is answered 451 or was committed (no queue), or stays
    # queued and is processed by the next pool (queue); a resend is stored once, each processed once.
    desk, proc = pooled
    proc.start()
    assert proc.proc is not None
    ledger = Ledger()
    assert smtp_send(proc.port, ledger, ledger.mail(0)) == 250
    # With the queue the pool belongs to the work process beside the listener; without, to maild itself.
    work = work_process(proc.proc.pid)
    assert (work is not None) == (desk.settings.smtp.queue)
    before = children(work or proc.proc.pid)
    assert len(before) >= 2
    for pid in before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    for n in range(1, 4):
        entry = ledger.mail(n)
        for _attempt in range(3):  # an MTA retries a 451
            if smtp_send(proc.port, ledger, entry) == 250:
                break
        assert entry.accepted, entry.replies
    assert proc.proc.poll() is None, "the daemon itself must survive a worker's death"
    assert proc.stop() == 0
    counts = check_no_loss(desk.settings.database_url, ledger)
    assert counts["accepted"] == 4
    assert len(desk.cases()) == 4


def _write_turns(url: str, name: str, turns: int, started: multiprocessing.synchronize.Event) -> None:
    engine = make_engine(url, busy_timeout_ms=2000)
    factory = make_sessionmaker(engine)
    started.wait(10)
    for n in range(turns):
        with transaction(factory) as session:
            session.execute(text("INSERT INTO turns (who, n) VALUES (:who, :n)"), {"who": name, "n": n})
            time.sleep(0.003)  # hold the write lock a while, as a real intake transaction does
    engine.dispose()


def test_writers_in_several_processes_take_turns_instead_of_failing(tmp_path: Path) -> None:
    # Three processes write at once, each holding the write lock a while: every write lands, none fails.
    url = f"sqlite:///{tmp_path}/turns.db"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE turns (who TEXT, n INTEGER)"))
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    procs = [context.Process(target=_write_turns, args=(url, f"p{i}", 40, started)) for i in range(3)]
    for p in procs:
        p.start()
    started.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM turns")).scalar_one() == 120
    engine.dispose()


def test_workers_do_not_outlive_a_killed_daemon(pooled: tuple[Desk, MaildProcess]) -> None:
    # kill -9 of the daemon: its intake workers end by themselves instead of holding the store open.
    _desk, proc = pooled
    proc.start()
    assert proc.proc is not None
    workers = children(proc.proc.pid)  # with the queue: the work process, and its pool below it
    assert len(workers) >= 2
    proc.proc.send_signal(signal.SIGKILL)  # maild's first process only, not its process group
    assert proc.proc.wait(10) == -9
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_lock_file_that_cannot_be_opened_does_not_stop_writes(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # The writer lock file cannot be opened (here: a directory in its place): writes still succeed.
    url = f"sqlite:///{tmp_path}/turns.db"
    (tmp_path / "turns.db-writer.lock").mkdir()
    factory = make_sessionmaker(make_engine(url))
    with transaction(factory) as session:
        session.execute(text("CREATE TABLE turns (who TEXT, n INTEGER)"))
        session.execute(text("INSERT INTO turns VALUES ('a', 1)"))
    with transaction(factory) as session:
        assert session.execute(text("SELECT count(*) FROM turns")).scalar_one() == 1
    assert "will not queue in order" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_root_makes_the_lock_file_for_the_database_owner(tmp_path: Path) -> None:
    # An operator's command run as root creates the lock file owned like the database, not by root.
    url = f"sqlite:///{tmp_path}/desk.db"
    make_engine(url).dispose()
    database = tmp_path / "desk.db"
    database.touch()
    os.chown(database, 65534, 65534)
    factory = make_sessionmaker(make_engine(url))
    with transaction(factory) as session:
        session.execute(text("SELECT 1"))
    lock = tmp_path / "desk.db-writer.lock"
    assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534)


def _hold_the_store(url: str, holding: multiprocessing.synchronize.Event, seconds: float) -> None:
    factory = make_sessionmaker(make_engine(url))
    with transaction(factory) as session:
        session.execute(text("INSERT INTO turns VALUES ('holder', 0)"))
        holding.set()
        time.sleep(seconds)


def test_a_writer_stuck_past_the_busy_timeout_gets_an_error_not_a_hang(tmp_path: Path) -> None:
    # Another process holds the store (a CLI paused in a pager): a writer fails after its busy timeout
    # (an SMTP 451) instead of waiting for ever, and writes again once the holder is done.
    url = f"sqlite:///{tmp_path}/turns.db"
    engine = make_engine(url, busy_timeout_ms=300)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE turns (who TEXT, n INTEGER)"))
    context = multiprocessing.get_context("spawn")
    holding = context.Event()
    holder = context.Process(target=_hold_the_store, args=(url, holding, 3.0))
    holder.start()
    assert holding.wait(30)
    factory = make_sessionmaker(engine)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="database is locked"), transaction(factory) as session:
        session.execute(text("INSERT INTO turns VALUES ('late', 1)"))
    assert time.monotonic() - started < 2.0
    holder.join(30)
    with transaction(factory) as session:
        session.execute(text("INSERT INTO turns VALUES ('late', 2)"))
        assert session.execute(text("SELECT count(*) FROM turns")).scalar_one() == 2
    engine.dispose()


def test_ctrl_c_reaching_the_workers_does_not_break_intake(pooled: tuple[Desk, MaildProcess]) -> None:
    # Ctrl-C in a terminal signals the whole process group: the workers ignore it, the daemon drains.
    desk, proc = pooled
    proc.start()
    assert proc.proc is not None
    work = work_process(proc.proc.pid)  # with the queue, the pool is the work process's
    for pid in children(work or proc.proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
    if work is not None:  # Ctrl-C reaches it too: it leaves stopping to the listener, in order
        os.kill(work, signal.SIGINT)
    time.sleep(0.5)
    ledger = Ledger()
    assert smtp_send(proc.port, ledger, ledger.mail(1)) == 250
    assert "intake worker died" not in proc.log.read_text()
    assert work_process(proc.proc.pid) == work  # the same work process goes on
    assert proc.stop() == 0
    assert check_no_loss(desk.settings.database_url, ledger)["accepted"] == 1


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_worker_that_hangs_is_killed_and_the_next_run_gets_a_fresh_one(tmp_path: Path) -> None:
    # A run of the queue hangs in a worker (a message that stalls the parser or a driver): past the
    # time limit the worker is killed and the call fails (the runner backs off; the messages it held
    # stay queued, their attempt counted), and the next run goes to a fresh worker.
    settings = config.load(write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db"), env={})
    pool = IntakePool(settings, 1)
    pool.warm_up()

    async def scenario() -> tuple[int, int]:
        first = await pool._submit(os.getpid)
        with pytest.raises(TimeoutError):
            await pool._submit(time.sleep, 60, timeout=1.0)
        return first, await pool._submit(os.getpid)

    try:
        first, second = asyncio.run(scenario())
    finally:
        pool.close()
    assert first != second
    deadline = time.monotonic() + 10
    while not _gone(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(first), "the hung worker is still running"


@contextlib.contextmanager
def desk_daemon(tmp_path: Path, relay: CaptureRelay, smtp: str = "") -> Iterator[tuple[Desk, MaildProcess]]:
    """A SQLite desk with the example directory and its daemon, not started yet (processes = 0,
    with the ``[smtp]`` lines ``smtp``); killed at the end if still running."""
    port = free_port()
    cfg = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db", relay_port=relay.port,
                       extra=f'[smtp]\nlisten = "127.0.0.1:{port}"\n{smtp}')
    desk = Desk(cfg)
    desk.import_directory(REPO / "examples" / "directory.toml")
    proc = MaildProcess(cfg, port, tmp_path / "maild.log")
    try:
        yield desk, proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
        desk.close()


@contextlib.contextmanager
def hung_message(tmp_path: Path, relay: CaptureRelay, smtp: str) -> Iterator[tuple[Desk, MaildProcess, Ledger]]:
    """A daemon (``desk_daemon``) whose processing hangs on every message (the ``processing_hangs``
    fault), and one customer mail already answered 250."""
    with desk_daemon(tmp_path, relay, smtp) as (desk, proc):
        ledger = Ledger()
        poison = ledger.mail(1, sender="Anna <anna@acme.example>")
        proc.start(fault="processing_hangs")
        assert ledger.record(poison, smtp_send(proc.port, ledger, poison, mail_from="anna@acme.example")) == 250
        yield desk, proc, ledger


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def test_a_message_that_hangs_processing_restarts_the_work_process_until_quarantined(
        tmp_path: Path, relay: CaptureRelay) -> None:
    # processes = 0: a message that hangs the parser hangs a thread of the work process, holding
    # SQLite's write lock. Past [smtp] process_timeout the work process exits 70 and the listener starts
    # it again, while intake goes on: the MTA is never refused. Each run counts an attempt; after the
    # third the message is quarantined unparsed.
    with hung_message(tmp_path, relay, "process_timeout = 1\nshutdown_grace = 1\n") as (desk, proc, ledger):
        assert proc.proc is not None
        first = work_process(proc.proc.pid)
        later = ledger.mail(2, sender="Anna <anna@acme.example>")
        assert ledger.record(later, smtp_send(proc.port, ledger, later, mail_from="anna@acme.example")) == 250
        wait_until("raw-1 quarantined", lambda: [h["raw"] for h in desk.cli_json("held", "list", "--json")] == [1])
        [held] = desk.cli_json("held", "list", "--json")
        assert held["reason"] == "unprocessable"
        assert held["detail"].startswith("processing was begun 3 times and never finished")
        log = proc.log.read_text()
        assert log.count("processing raw-1 has not finished") == 3, log[-3000:]
        assert log.count("(a message hung processing); starting it again") >= 3
        assert proc.proc.poll() is None, "the listener keeps running"
        assert work_process(proc.proc.pid) not in (None, first)
        assert desk.cases() == []  # the fault hangs every message's processing, the later one's too
        proc.stop()

        # Without the fault, the mail that waited (claimed once or twice so far) is processed.
        proc.start()
        [ack] = relay.wait_for(1, timeout=30)
        assert ack.rcpt_tos == ("anna@acme.example",)
        assert [c["subject"] for c in desk.cases()] == ["Fault test 2"]
        assert desk.cli_json("queue")["queued"] == 0
        assert proc.stop() == 0


def test_a_killed_work_process_is_started_again_and_intake_never_stops(tmp_path: Path, relay: CaptureRelay) -> None:
    # The OOM killer (or a crash in a C library) takes the work process: the listener answers 250
    # throughout, starts a new work process, and that one processes what was queued meanwhile.
    with desk_daemon(tmp_path, relay) as (desk, proc):
        proc.start()
        assert proc.proc is not None
        ledger = Ledger()
        senders = ["anna@acme.example", "paula@globex.example"]
        assert smtp_send(proc.port, ledger, ledger.mail(0, sender=f"C <{senders[0]}>"), mail_from=senders[0]) == 250
        relay.wait_for(1, timeout=30)
        first = work_process(proc.proc.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for n in range(1, 4):  # at once, while there is no work process
            who = senders[n % 2]
            assert smtp_send(proc.port, ledger, ledger.mail(n, sender=f"C <{who}>"), mail_from=who) == 250
        acks = relay.wait_for(4, timeout=60)
        assert len(acks) == 4
        second = work_process(proc.proc.pid)
        assert second not in (None, first)
        assert "killed by signal 9" in proc.log.read_text()
        assert proc.stop() == 0
        counts = check_no_loss(desk.settings.database_url, ledger)
        assert counts["accepted"] == 4
        assert len(desk.cases()) == 4


def test_stopping_while_a_message_hangs_processing_exits_without_waiting_for_it(
        tmp_path: Path, relay: CaptureRelay) -> None:
    # SIGTERM (systemctl stop/restart) while a message hangs the daemon's own processing thread:
    # SMTP drains, and the daemon exits 70 after shutdown_grace plus a margin instead of waiting for
    # the thread for ever (systemd would SIGKILL it after TimeoutStopSec).
    with hung_message(tmp_path, relay, "shutdown_grace = 1\n") as (desk, proc, _):
        deadline = time.monotonic() + 10
        while desk.cli_json("queue")["begun_before"] != 1:  # claimed (attempt counted), now hanging
            assert time.monotonic() < deadline, "the message was never claimed"
            time.sleep(0.1)
        assert proc.stop() == 70
        assert "processing raw-1 did not finish while stopping" in proc.log.read_text()
