# SPDX-License-Identifier: MIT
"""Drive an SMTP server with N messages over C concurrent smtplib connections, and time it.

The same client measures maild and the fsync-append baseline. ``DATA->250`` is the time from the
DATA command to the server's final reply after the dot: the part of a session a durable server
spends storing the message. ``StampedRelay`` is the test suite's capture relay, noting when each
message arrived, so the time from maild's ``250`` to its acknowledgement reaching the relay can be
measured.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import CapturedMessage, CaptureRelay, free_port


@dataclass(frozen=True)
class Sent:
    index: int
    code: int
    latency: float  # DATA command -> final reply, seconds
    done_at: float  # time.monotonic() of the final reply


@dataclass(frozen=True)
class LoadResult:
    sent: list[Sent]
    seconds: float
    deferred: int = 0  # answered 4yz on the first try, then sent again

    @property
    def accepted(self) -> int:
        return sum(1 for s in self.sent if s.code == 250)


def send_all(port: int, messages: list[tuple[bytes, str]], connections: int) -> LoadResult:
    """Send ``messages`` (bytes, envelope recipient) over ``connections`` sessions; keep each 250's time."""
    lock = threading.Lock()
    todo = list(reversed(range(len(messages))))
    sent: list[Sent] = []

    def worker() -> None:
        client = smtplib.SMTP("127.0.0.1", port, timeout=120)
        client.ehlo("bench.example")
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop()
            data, rcpt = messages[i]
            client.mail("customer@bench.example", [f"SIZE={len(data)}"])
            client.rcpt(rcpt)
            started = time.monotonic()
            try:
                code, _ = client.data(data)
            except smtplib.SMTPDataError as exc:
                code = exc.smtp_code
            now = time.monotonic()
            with lock:
                sent.append(Sent(i, code, now - started, now))
        client.quit()

    def run_pass() -> None:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    started = time.monotonic()
    run_pass()
    deferred = [s for s in sent if 400 <= s.code < 500]
    if deferred:  # as an MTA's queue would: send 4yz-answered messages once more, timed with the rest
        todo.extend(s.index for s in deferred)  # their 4yz answers stay in the latency figures
        run_pass()
    return LoadResult(sent, time.monotonic() - started, len(deferred))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_summary(results: list[LoadResult]) -> dict[str, Any]:
    latencies = [s.latency for r in results for s in r.sent]
    total = sum(len({s.index for s in r.sent}) for r in results)
    accepted = sum(r.accepted for r in results)
    seconds = sum(r.seconds for r in results)
    return {"messages": total, "accepted": accepted, "deferred_4xx": sum(r.deferred for r in results),
            "seconds": round(seconds, 3),
            "rate": round(accepted / seconds, 1) if seconds else 0.0,
            "data_250_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "data_250_p99_ms": round(percentile(latencies, 0.99) * 1000, 1)}


class StampedRelay(CaptureRelay):
    """The capture relay, noting the monotonic time each accepted message arrived."""

    def __init__(self) -> None:
        self.arrived: list[float] = []
        super().__init__()

    def _record(self, captured: CapturedMessage) -> None:
        self.arrived.append(time.monotonic())
        super()._record(captured)

    def wait_quiet(self, count: int, quiet: float) -> int:
        """Wait until ``count`` messages arrived, or none for ``quiet`` seconds; the number that arrived."""
        seen, since = len(self.arrived), time.monotonic()
        while len(self.arrived) < count and time.monotonic() - since < quiet:
            time.sleep(0.05)
            if len(self.arrived) != seen:
                seen, since = len(self.arrived), time.monotonic()
        return len(self.arrived)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Process:
    """A server subprocess (maild or the baseline) with its log file; stopped with SIGTERM."""

    def __init__(self, argv: list[str], log: Path, port: int) -> None:
        self.port = port
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env)
        wait_listening(port, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def hwm_kib(self) -> int:
        """Peak resident set size so far (VmHWM), KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_maild(config: Path, port: int, log: Path) -> Process:
    return Process([sys.executable, *((os.environ["MAILD_WRAP"],) if os.environ.get("MAILD_WRAP") else ("-m", "maild")), "run", "--config", str(config)], log, port)


def start_fsync_server(directory: Path, log: Path) -> Process:
    port = free_port()
    script = Path(__file__).with_name("fsync_server.py")
    return Process([sys.executable, str(script), str(port), str(directory / "spool.mbox")], log, port)


def wait_processed(url: str, timeout: float = 300.0) -> float:
    """Seconds until the store holds no queued message (``[smtp] queue``), polled every 50 ms."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            with engine.connect() as conn:
                if not conn.scalar(text("SELECT count(*) FROM raw_messages WHERE outcome IS NULL")):
                    break
            time.sleep(0.05)
    finally:
        engine.dispose()
    return round(time.monotonic() - started, 2)
