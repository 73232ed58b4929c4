# SPDX-License-Identifier: MIT
"""Logging for the daemon: one line per record on stderr, in the form journald reads best.

Under systemd, stderr goes to the journal (``JOURNAL_STREAM`` is set, systemd.exec(5)); the
journal stamps the time itself and reads a leading ``<N>`` as the syslog priority
(``SyslogLevelPrefix=``, on by default), so ``journalctl -p warning`` works. Elsewhere each line
carries a timestamp and the level name. Tracebacks are folded onto the record's line so one
message is one journal entry, and one inbound mail is one ``MESSAGE_LINE``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

# The one line logged per inbound message, by every intake channel (SMTP, IMAP, files):
# message_id, outcome, case (or None), duration in ms, source.
MESSAGE_LINE = "message_id=%s outcome=%s case=%s duration_ms=%d source=%s"

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}  # syslog(3) levels
_HANDLER_NAME = "maild-stderr"


class OneLineFormatter(logging.Formatter):
    """Folds multi-line messages and tracebacks into one line; optional ``<N>`` priority prefix."""

    def __init__(self, *, journald: bool) -> None:
        fmt = "%(name)s: %(message)s" if journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r", "").replace("\n", " | ")
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def under_journald(stream: TextIO) -> bool:
    """True when ``stream`` is the journal's socket (the device:inode in ``JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: int | str = logging.INFO, *, stream: TextIO | None = None) -> None:
    """Send every logger's records to stderr (or ``stream``), one line each; idempotent."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(OneLineFormatter(journald=under_journald(out)))
    root = logging.getLogger()
    # Replace our earlier handler and a plain one from logging.basicConfig (not test captures).
    for old in [h for h in root.handlers
                if h.get_name() == _HANDLER_NAME or type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiosmtpd logs every command line at INFO under "mail.log", alembic every migration step;
    # keep those for debugging only.
    chatty = logging.DEBUG if root.getEffectiveLevel() <= logging.DEBUG else logging.WARNING
    for name in ("mail.log", "alembic"):
        logging.getLogger(name).setLevel(chatty)
