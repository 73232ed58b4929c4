# SPDX-License-Identifier: MIT
"""``IntakeStamp``: how the queue's processing yields SQLite's write lock to the listener in a burst.

A module of its own, with nothing but the standard library: the listener process (``maild.listener``)
stamps it and must stay small; the processing side (``maild.ingest.queue``) waits on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maild.config import Settings

log = logging.getLogger(__name__)

QUIET_SECONDS = 0.03  # processing waits for a pause of this long in the listener's commits ...
YIELD_MAX_SECONDS = 0.5  # ... but never longer than this before each message


class IntakeStamp:
    """When the listener last committed mail, shared by every process on this machine (a file's mtime).

    The queue's processing waits for the listener to have been quiet for ``QUIET_SECONDS`` before it
    takes SQLite's one write lock (``wait_quiet``), so a burst's messages are committed and answered
    first and the case work catches up behind it. It never waits more than ``YIELD_MAX_SECONDS`` per
    message, and not at all for mail that has waited ``YIELD_WINDOW``, so a load that never pauses
    cannot starve processing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._broken = False

    def touch(self) -> None:
        if self._broken:
            return
        try:
            os.utime(self.path)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                self.path.touch()
        except OSError as exc:  # a read-only directory: processing simply does not wait
            self._broken = True
            log.warning("cannot stamp %s (%s); queued mail will be processed without yielding to intake",
                        self.path, exc)

    def wait_quiet(self, quiet: float = QUIET_SECONDS, limit: float = YIELD_MAX_SECONDS) -> float:
        """Sleep until the listener has been quiet for ``quiet`` seconds, at most ``limit``; the time waited."""
        started = time.monotonic()
        while True:
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return 0.0
            waited = time.monotonic() - started
            if age >= quiet or waited >= limit:
                return waited
            time.sleep(min(quiet - age, limit - waited, 0.01))


def intake_stamp(settings: Settings) -> IntakeStamp:
    return IntakeStamp(Path(settings.data_dir) / "intake.stamp")
