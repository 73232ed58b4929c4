# SPDX-License-Identifier: MIT
"""Named fault points: where a test can make maild die as a power cut or ``kill -9`` would.

``fault_point(name)`` sends SIGKILL to the own process when ``MAILD_FAULT`` equals ``name`` and does
nothing otherwise. Only the fault tests set that variable; SIGKILL (not an exception) is the point,
because no ``finally``, no rollback and no reply may run, exactly as after a crash. The points are:

- ``before_commit`` (pipeline): the message is processed but not committed: no 250 may have gone out.
- ``after_commit_before_reply`` (SMTP): committed, 250 not sent: the client sees a dropped
  connection (RFC 5321 §3.8, counts as 451) and sends again; the envelope key absorbs the copy.
- ``after_send_before_mark`` (sender): the relay said 250, the row is not yet marked sent: it is sent
  again, with the same Message-ID, once its claim lease ends (at-least-once, STYLE §5).
- ``after_fetch`` and ``after_commit_before_move`` (IMAP poller).

``fault_hang(name)`` instead blocks its thread for good, as a message that hangs the parser would:
- ``processing_hangs`` (queue): inside the message's transaction, holding SQLite's write lock.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "MAILD_FAULT"
POINTS = frozenset({"before_commit", "after_commit_before_reply", "after_send_before_mark",
                    "after_fetch", "after_commit_before_move", "processing_hangs"})  # fmt: skip


def fault_point(name: str) -> None:
    """Die at once with SIGKILL if ``MAILD_FAULT`` names this point; otherwise return."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fault_hang(name: str) -> None:
    """Block this thread for good if ``MAILD_FAULT`` names this point; otherwise return."""
    while os.environ.get(ENV) == name:
        time.sleep(3600)
