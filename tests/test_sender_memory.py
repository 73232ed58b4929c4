# SPDX-License-Identifier: MIT
"""The sender holds one large mail at a time (issue 8: stay small in memory).

Mail with attachments is stored composed, up to the size limit each. ``maild send`` claims up to 20
rows per transaction; their bytes are read one row at a time, just before each delivery, so a queue
of large replies (a relay outage after a morning of packet captures) does not add up in memory.
Measured as ``maild send`` in a subprocess reporting its own peak RSS (VmHWM), on both stores,
through the real capture relay.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from helpers import Desk, build_mail
from servers import CapturedMessage, CaptureRelay

from maild import clock
from maild.db import transaction
from maild.models import Case
from maild.staff import staff_reply

TECH = "tom@support.example.com"
# `maild send`, then its own peak resident size on the last line.
SEND = """import sys
from maild.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
status = open("/proc/self/status").read()
print("HWM", status.split("VmHWM:")[1].split()[0])
sys.exit(code)
"""


def send_peak_kib(desk: Desk) -> int:
    done = subprocess.run([sys.executable, "-c", SEND, "--config", str(desk.config_path), "send"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1].split()[1])


def plain_text(captured: CapturedMessage) -> str:
    body = captured.message.get_body(("plain",))
    return "" if body is None else str(body.get_content())


def test_queued_large_replies_are_read_one_at_a_time(make_desk: Callable[..., Desk], relay: CaptureRelay) -> None:
    desk = make_desk(relay=relay)
    case_id = desk.ingest(build_mail(sender="Anna <anna@acme.example>")).case
    assert case_id is not None
    trace = os.urandom(3 << 20)

    def reply(numbers: range) -> None:
        now = clock.now()  # due at once
        with transaction(desk.factory) as s:
            case = s.get(Case, case_id)
            assert case is not None
            for n in numbers:
                staff_reply(s, desk.settings, case, body=f"Trace {n} attached.", staff_email=TECH, now=now,
                            attachments=[(f"trace-{n}.pcap", "application/vnd.tcpdump.pcap", trace)])

    reply(range(1))
    one = send_peak_kib(desk)  # the acknowledgement and one large reply
    reply(range(1, 9))
    eight = send_peak_kib(desk)  # eight large replies, claimed in one batch

    sent = relay.wait_for(10)
    replies = [m for m in sent if "attached" in plain_text(m)]
    assert sorted(plain_text(m).split()[1] for m in replies) == [str(n) for n in range(9)]
    for m in replies:
        [attachment] = m.message.iter_attachments()
        assert attachment.get_content() == trace
    size_kib = max(len(m.raw) for m in replies) // 1024
    # Eight rows claimed together cost about what one did: before, every claimed row's bytes were
    # loaded at the claim (8 x 4 MiB more here).
    assert eight - one < 2 * size_kib, (one, eight, size_kib)
