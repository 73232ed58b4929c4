# SPDX-License-Identifier: MIT
"""systemd service notification (sd_notify(3)) over the ``NOTIFY_SOCKET`` datagram, no dependency.

With ``Type=notify`` systemd considers maild started only after ``READY=1`` (sent once the SMTP
listener is bound), restarts it when ``WATCHDOG=1`` pings stop for ``WatchdogSec``, and shows
``STOPPING=1`` / ``STATUS=`` in ``systemctl status``. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_WAIT = 5.0  # seconds a READY/STOPPING/STATUS notification may wait for room in the socket


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not under systemd or on error."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract-namespace socket (sd_notify(3))
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            # This runs on the event loop that serves SMTP. A watchdog ping never waits: a full socket
            # (its reader has stopped reading) drops that one ping, logged below, and the next one
            # follows. READY, STOPPING and STATUS happen once and must arrive: they wait, as
            # libsystemd's sd_notify does, but not for ever.
            sock.settimeout(0.0 if state.startswith("WATCHDOG=") else NOTIFY_WAIT)
            sock.send(state.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state.split("=", 1)[0], exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)).

    None when the watchdog is off, or when ``WATCHDOG_PID`` names another process.
    """
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
