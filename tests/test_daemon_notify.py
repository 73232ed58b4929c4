# SPDX-License-Identifier: MIT
"""sd_notify over NOTIFY_SOCKET and the journald-friendly log lines, as systemd sees them."""

from __future__ import annotations

import io
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from maild.logs import MESSAGE_LINE, OneLineFormatter, setup_logging
from maild.notify import notify, watchdog_interval


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    directory = tempfile.mkdtemp(prefix="maild-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def test_notify_sends_one_datagram(listener: tuple[str, socket.socket]) -> None:
    # Each call is one datagram with the state lines, as sd_notify(3) sends them.
    path, sock = listener
    assert notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})
    assert sock.recv(100) == b"READY=1\nSTATUS=ok"


def test_notify_abstract_socket() -> None:
    # "@name" means the abstract namespace (a leading NUL byte).
    name = f"maild-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notify_is_a_no_op_outside_systemd() -> None:
    # Without NOTIFY_SOCKET nothing is sent; a dead socket is logged, never raised.
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"})


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "60000000"}, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({}, None),
])
def test_watchdog_pings_at_half_the_timeout(env: dict[str, str], expected: float | None) -> None:
    # Ping at half of WATCHDOG_USEC, and only when the watchdog is meant for this process.
    assert watchdog_interval(env) == expected


def record(level: int, msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError as error:
            info = (type(error), error, error.__traceback__)
    return logging.LogRecord("maild.ingest.smtp", level, __file__, 1, msg, args, info)


def test_journald_lines_carry_the_priority_and_stay_one_line() -> None:
    # Under journald: "<N>" syslog priority prefix, no timestamp, traceback folded into the line.
    fmt = OneLineFormatter(journald=True)
    line = fmt.format(record(logging.INFO, MESSAGE_LINE, "<m@x>", "new-case", 12, 35, "smtp"))
    assert line == "<6>maild.ingest.smtp: message_id=<m@x> outcome=new-case case=12 duration_ms=35 source=smtp"
    folded = fmt.format(record(logging.ERROR, "intake of %s failed", "<m@x>", exc=True))
    assert folded.startswith("<3>maild.ingest.smtp: intake of <m@x> failed | Traceback")
    assert "\n" not in folded and "ValueError: boom | second line" in folded


def test_setup_logging_writes_timestamped_lines_to_the_stream() -> None:
    # Outside journald each line has time and level; calling setup twice installs one handler.
    out = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging("INFO", stream=out)
        setup_logging("INFO", stream=out)
        logging.getLogger("maild.test").info("hello %s", "world")
        assert out.getvalue().count("hello world") == 1
        assert " INFO maild.test: hello world" in out.getvalue()
    finally:
        for handler in list(root.handlers):
            if handler not in before[0]:
                root.removeHandler(handler)
        root.setLevel(before[1])


def test_notify_never_waits_for_a_reader_that_stopped_reading(listener: tuple[str, socket.socket]) -> None:
    # notify() runs on the event loop that serves SMTP: when the socket's queue is full it drops the
    # notification (False) instead of blocking the loop until someone reads.
    path, _sock = listener
    env = {"NOTIFY_SOCKET": path}
    sent: list[int] = []

    def fill() -> None:
        while notify("WATCHDOG=1", env=env) and len(sent) < 100_000:
            sent.append(1)

    filler = threading.Thread(target=fill, daemon=True)
    filler.start()
    filler.join(10)
    assert not filler.is_alive(), "notify() blocked on a full socket"
    assert 0 < len(sent) < 100_000
