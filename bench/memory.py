# SPDX-License-Identifier: MIT
"""Memory: the daemon's peak RSS while taking one large message, and ``maild ingest`` of a big mbox.

``maild run`` is two processes (maild.listener): the listener, which takes the message from the MTA
and commits it, and the work process beside it, which parses it and does the case work. Each one's
peak is VmHWM from /proc/<pid>/status, read after a small warm-up message (imports, templates, first
connections: the resting size) and again once the large message was processed; the difference is what
taking and processing that message cost. The target (peak < 2x the size limit) is read on the
listener, the process that takes the message; the work process's figures and the sum are printed
beside it. The mbox run is ``python -m maild
ingest`` in a subprocess; its peak is its VmHWM, read every 0.1 s while it runs (``hwm_kib``), its
rate from the wall time.
"""

from __future__ import annotations

import mailbox
import os
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from corpus import Corpus
from intake import import_directory, write_config
from servers import free_port
from smtp_load import send_all, start_maild, wait_processed


def large_message(size: int, sender: str) -> bytes:
    """A mail of about ``size`` bytes: a short text and one base64 attachment filling the rest."""
    payload = os.urandom(int(size * 0.75 * 76 / 78) - 2000)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@example.com"
    msg["Subject"] = "Packet capture of the outage"
    msg["Message-ID"] = "<large-1@bench.example>"
    msg.set_content("The capture is attached.\n")
    msg.add_attachment(payload, maintype="application", subtype="vnd.tcpdump.pcap", filename="outage.pcap")
    from email import policy

    return msg.as_bytes(policy=policy.SMTP)


def large_message_section(corpus: Corpus, root: Path, size: int) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(root, f"sqlite:///{root}/maild.db", port, free_port())
    import_directory(config, corpus)
    daemon = start_maild(config, port, root / "maild.log")
    sender = f"{corpus.new[0].sender.name} <{corpus.new[0].sender.email}>"
    try:
        send_all(port, [(corpus.new[0].render(), "support@example.com")], 1)
        wait_processed(f"sqlite:///{root}/maild.db")
        work = work_pid(daemon.pid)
        rest_kib, work_rest_kib = daemon.hwm_kib(), hwm_kib(work)
        data = large_message(size, sender)
        result = send_all(port, [(data, "support@example.com")], 1)
        processed_s = wait_processed(f"sqlite:///{root}/maild.db")  # the case work follows the 250
        peak_kib, work_peak_kib = daemon.hwm_kib(), hwm_kib(work)
    finally:
        daemon.stop()
    limit = 25 * 1024 * 1024
    mib = 1024
    return {"message_bytes": len(data), "code": result.sent[0].code,
            "data_250_s": round(result.sent[0].latency, 2), "processed_after_250_s": processed_s,
            "rest_rss_mib": round(rest_kib / mib, 1),
            "peak_rss_mib": round(peak_kib / mib, 1), "peak_minus_rest_mib": round((peak_kib - rest_kib) / mib, 1),
            "work_rest_rss_mib": round(work_rest_kib / mib, 1), "work_peak_rss_mib": round(work_peak_kib / mib, 1),
            "work_peak_minus_rest_mib": round((work_peak_kib - work_rest_kib) / mib, 1),
            "both_peak_rss_mib": round((peak_kib + work_peak_kib) / mib, 1),
            "size_limit_mib": limit / 1024 / 1024,
            "peak_over_size_limit": round(peak_kib * 1024 / limit, 2),
            "work_peak_over_size_limit": round(work_peak_kib * 1024 / limit, 2),
            "growth_over_message": round((peak_kib - rest_kib) * 1024 / len(data), 2)}


def work_pid(pid: int) -> int:
    """The work process ``maild run`` (pid) started beside its listener (maild.workproc)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for kid in (task / "children").read_text().split():
            try:
                if b"maild.workproc" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    return int(kid)
            except OSError:
                continue
    raise RuntimeError(f"maild {pid} has no work process")


def write_mbox(corpus: Corpus, path: Path) -> int:
    box = mailbox.mbox(str(path), create=True)
    box.lock()
    count = 0
    try:
        for conv in corpus.new:
            box.add(conv.render().replace(b"\r\n", b"\n"))
            count += 1
        for reply in corpus.replies:
            box.add(reply.render(None)[0].replace(b"\r\n", b"\n"))
            count += 1
        box.flush()
    finally:
        box.unlock()
        box.close()
    return count


def mbox_section(corpus: Corpus, root: Path) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root, f"sqlite:///{root}/maild.db", free_port(), free_port())
    import_directory(config, corpus)
    count = write_mbox(corpus, root / "burst.mbox")
    started = time.monotonic()
    with open(root / "ingest.jsonl", "wb") as out, open(root / "ingest.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "maild", "ingest", "--config", str(config),
                                 "--now", "2026-03-02T09:00", str(root / "burst.mbox")], stdout=out, stderr=err)
        peak_kib = 0
        while proc.poll() is None:  # VmHWM only grows: its last reading is the peak up to then
            peak_kib = max(peak_kib, hwm_kib(proc.pid))
            time.sleep(0.1)
    status = proc.returncode
    seconds = time.monotonic() - started
    lines = (root / "ingest.jsonl").read_text(encoding="utf-8").splitlines()
    outcomes: dict[str, int] = {}
    for line in lines:
        key = line.split('"outcome": "', 1)[-1].split('"', 1)[0]
        outcomes[key] = outcomes.get(key, 0) + 1
    return {"messages": count, "mbox_mib": round((root / "burst.mbox").stat().st_size / 2**20, 1),
            "exit": status, "seconds": round(seconds, 1),
            "rate": round(len(lines) / seconds, 1), "outcomes": outcomes,
            "peak_rss_mib": round(peak_kib / 1024, 1)}


def hwm_kib(pid: int) -> int:
    """VmHWM of a running process (0 once it is gone).

    Not ``wait4``'s ru_maxrss: a child started from a big parent reports the parent's peak (Linux
    carries the high-water mark of the address space it replaced at exec), which made this figure
    the benchmark's own size, 270 MiB, instead of maild's."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
