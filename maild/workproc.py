# SPDX-License-Identifier: MIT
"""The work process of ``maild run``: started, woken, stopped and restarted by the listener process.

``maild run`` is two processes (``maild.listener``): the listener, which the MTA talks to, and the
work process, which does everything else (``maild.daemon`` run with a ``Parent``): the queue's case
work, the outbox sender, the scheduler and the IMAP poller. They share the store. Between them run
two channels:

- *control*, a socket pair carrying small pickled tuples: the settings (listener to work, first),
  ``ready`` (work to listener, once its store is open and its jobs run), ``alive`` every
  ``HEARTBEAT`` seconds, and ``stop`` with what is left of the shutdown grace. End of file means the
  other side is gone: the work process then stops, so it never outlives a killed listener.
- *wake*, a pipe of single bytes, one per queue commit. A write never blocks the listener: when the
  pipe is full, the work process has wake-ups enough waiting.

The listener starts the work process again when it exits unasked (a hung message's exit 70, a
crash, the OOM killer) or stops answering for ``HEARTBEAT_TIMEOUT``, after a delay that doubles up
to ``RESTART_MAX``. Intake goes on meanwhile: what arrives waits in the queue.

Only the standard library here: the listener imports this module and must stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maild.config import Settings
    from maild.ingest.smtp import Waker

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds between the work process's "alive" messages
HEARTBEAT_TIMEOUT = 60.0  # no message for this long: the work process is wedged, and is killed
RESTART_FIRST = 1.0  # seconds before the first restart; doubled after each quick failure ...
RESTART_MAX = 30.0  # ... up to this
HEALTHY_AFTER = 60.0  # a work process that ran this long starts the delays from RESTART_FIRST again
START_TIMEOUT = 300.0  # a restarted work process not ready by then (a connect that hangs) is killed
PAUSED = 2.0  # the listener itself ran no check for this long (paused, starved): heartbeats start afresh
EXIT_STUCK = 70  # maild.daemon's exit when a message hangs processing in its own thread
STOP_MARGIN = 15.0  # past the grace, before a stopping work process is killed (its own margin is 10 s)

# The work process's entry, run with -c rather than -m: as __main__ this module would be imported
# a second time, under its own name, by maild.daemon.
_ENTRY = "import sys; from maild.workproc import main; sys.exit(main(sys.argv[1:]))"


class WorkProcess:
    """The listener's side: one work process at a time, started again when it dies."""

    def __init__(self, settings: Settings, log_level: int) -> None:
        self._settings = settings
        self._level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: Connection | None = None
        self._wake_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._started = self._heard = self._checked = 0.0
        self._restart_at: float | None = None
        self._delay = RESTART_FIRST
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        """Spawn the work process (a fresh interpreter, never a fork) and send it the settings."""
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        wake_r, wake_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-c", _ENTRY, str(theirs.fileno()), str(wake_r)],
                pass_fds=(theirs.fileno(), wake_r), stdin=subprocess.DEVNULL, env=_child_env())
        except BaseException:
            ours.close()
            os.close(wake_w)
            raise
        finally:
            theirs.close()
            os.close(wake_r)
        os.set_blocking(wake_w, False)
        self._wake_fd = wake_w
        self._control = Connection(ours.detach())
        self._ready.clear()
        self._started = self._heard = time.monotonic()
        self._restart_at = None
        try:
            self._control.send(("settings", self._settings, self._level, HEARTBEAT))
            self._loop.add_reader(self._control.fileno(), self._on_control)
        except BaseException:  # nothing may be left behind: the next start begins clean
            self._proc.kill()
            self._proc.wait()
            self._close_channels()
            raise
        log.info("work process %d started", self._proc.pid)

    async def wait_ready(self, stop: threading.Event) -> bool:
        """True once the work process has opened the store and started its jobs; False if it exited
        first (it logged why) or ``stop`` was set."""
        while not self._ready.is_set():
            if stop.is_set() or self.returncode is not None:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), 0.1)
        return True

    def wake(self) -> None:
        """After a queue commit: there is mail to process."""
        if self._wake_fd is None:
            return
        try:
            os.write(self._wake_fd, b"w")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already
        except OSError:
            pass  # the work process is gone; it is started again, and takes the queue from the start

    def check(self) -> None:
        """Called every tenth of a second by the listener: restart a work process that died or hangs."""
        if self._stopping or self._proc is None:
            return
        now = time.monotonic()
        if now - self._checked > PAUSED:  # we did not run either (SIGSTOP of both, a paused VM): no one
            self._heard = now            # could have heard the work process, so nothing is held against it
        self._checked = now
        code = self._proc.poll()
        if code is None:
            self._on_control()  # what it sent since the last turn of the loop counts
            if self._ready.is_set() and now - self._heard > HEARTBEAT_TIMEOUT:
                log.critical("work process %d has not answered for %.0f s; killing it", self._proc.pid,
                             now - self._heard)
                self._proc.kill()
            elif not self._ready.is_set() and self.restarts and now - self._started > START_TIMEOUT:
                log.critical("work process %d is not ready after %.0f s; killing it", self._proc.pid,
                             now - self._started)
                self._proc.kill()
            return
        if self._restart_at is None:
            self._close_channels()
            ran = now - self._started
            # A hung message (70) ran its process_timeout first and is quarantined after 3 runs: no
            # need to slow down. Quick failures otherwise (the store is down ...) double the delay.
            quick = ran < HEALTHY_AFTER and code != EXIT_STUCK
            delay = self._delay if quick else RESTART_FIRST
            self._delay = min(RESTART_MAX, delay * 2)  # for the next quick failure
            why = "a message hung processing" if code == EXIT_STUCK else (
                f"killed by signal {-code}" if code < 0 else f"exit {code}")
            log.critical("work process %d stopped after %.0f s (%s); starting it again in %.0f s while intake "
                         "goes on into the queue", self._proc.pid, ran, why, delay)
            self._restart_at = now + delay
        elif now >= self._restart_at:
            self.restarts += 1
            try:
                self.start()
            except OSError as exc:
                log.error("cannot start the work process: %s", exc)
                self._restart_at = now + self._delay

    async def stop(self, grace: float) -> int | None:
        """Ask the work process to stop within ``grace`` seconds (its queue run, its jobs); kill it if
        it has not exited ``STOP_MARGIN`` later. Its exit status; None if none was running."""
        self._stopping = True  # one that is down stays down: what it would have done waits in the queue
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None and self._control is not None:
            with contextlib.suppress(OSError):
                self._control.send(("stop", grace))
        deadline = time.monotonic() + grace + STOP_MARGIN
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            log.error("work process %d did not stop in %.0f s; killing it", proc.pid, grace + STOP_MARGIN)
            proc.kill()
            await asyncio.to_thread(proc.wait)
        self._close_channels()
        return proc.returncode

    def _on_control(self) -> None:
        control = self._control
        if control is None:
            return
        try:
            while control.poll():
                message = control.recv()
                self._heard = time.monotonic()
                if message[0] == "ready":
                    self._ready.set()
                    log.info("work process %d is ready", self._proc.pid if self._proc else 0)
        except (EOFError, OSError):  # it exited; check() sees the status and restarts it
            self._close_channels()

    def _close_channels(self) -> None:
        if self._control is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None


def _child_env() -> dict[str, str]:
    """The listener's environment, with the directory this maild was imported from first on the path:
    the work process runs the same code (``-P``: not whatever the working directory holds)."""
    env = dict(os.environ)
    home = Path(__file__).resolve().parent.parent
    if home.name not in ("site-packages", "dist-packages"):  # installed: the interpreter finds it anyway,
        # and site-packages in PYTHONPATH would come before the standard library
        env["PYTHONPATH"] = os.pathsep.join([str(home), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


class Parent:
    """The work process's side, for ``maild.daemon``'s event loop."""

    def __init__(self, control: Connection, wake_fd: int, heartbeat: float = HEARTBEAT) -> None:
        self._control = control
        self._wake_fd = wake_fd
        self._heartbeat_every = heartbeat
        self._grace: float | None = None
        self._beat: asyncio.Task[None] | None = None

    def serve(self, loop: asyncio.AbstractEventLoop, queue: Waker, stop: threading.Event) -> None:
        """Wake ``queue`` on each commit of the listener's; set ``stop`` when it says so, or is gone."""
        os.set_blocking(self._wake_fd, False)
        loop.add_reader(self._wake_fd, self._on_wake, loop, queue)
        loop.add_reader(self._control.fileno(), self._on_control, loop, stop)
        self._beat = loop.create_task(self._heartbeat())

    def ready(self) -> None:
        self._send(("ready",))

    def grace(self, default: float) -> float:
        """Seconds left of the shutdown grace, as the listener gave them (it drained SMTP first)."""
        return self._grace if self._grace is not None else default

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._beat is not None:
            self._beat.cancel()
        for fd in (self._wake_fd, self._control.fileno()):
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(fd)

    def _on_wake(self, loop: asyncio.AbstractEventLoop, queue: Waker) -> None:
        try:
            data = os.read(self._wake_fd, 4096)
        except BlockingIOError:
            return
        if not data:  # the listener is gone: control sees it too and stops us
            loop.remove_reader(self._wake_fd)
            return
        queue.wake()

    def _on_control(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        try:
            message = self._control.recv()
        except (EOFError, OSError):
            log.warning("the listener process is gone; stopping")
            loop.remove_reader(self._control.fileno())
            stop.set()
            return
        if message[0] == "stop":
            self._grace = float(message[1])
            stop.set()

    def _send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the listener is gone; _on_control stops us
            self._control.send(message)

    async def _heartbeat(self) -> None:
        while True:
            self._send(("alive",))
            await asyncio.sleep(self._heartbeat_every)


def main(argv: list[str]) -> int:
    """The work process: ``python -c <_ENTRY> CONTROL_FD WAKE_FD``, started by ``WorkProcess``."""
    control = Connection(int(argv[0]))
    _, settings, level, heartbeat = control.recv()
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # systemd hears the listener only
        os.environ.pop(name, None)
    # Ctrl-C in a terminal reaches the whole process group: the listener drains SMTP first, then
    # stops this process itself. SIGTERM (an operator, systemd) still stops it in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from maild.daemon import run
    from maild.logs import setup_logging

    setup_logging(level)
    return run(settings, parent=Parent(control, int(argv[1]), heartbeat))
