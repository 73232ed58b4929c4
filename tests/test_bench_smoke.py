# SPDX-License-Identifier: MIT
"""The benchmark (bench/run.py) in its seconds-long ``--smoke`` mode, so it never rots.

It starts real ``maild run`` daemons, a capture relay and the fsync-append baseline on loopback,
exactly as the full benchmark does, only with 30 messages, 1 and 4 connections, 1k/2k cases and a
2 MB message; its figures are not checked, only that every section was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_every_section_and_threads_every_reply(tmp_path: Path) -> None:
    # A CI-sized benchmark run prints one JSON object with every section, and every reply threaded right.
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text(encoding="utf-8"))
    assert {"machine", "intake", "threading", "store_scale", "memory", "targets"} <= printed.keys()
    for conns in ("1", "4"):
        level = printed["intake"]["levels"][conns]
        assert level["fsync_append"]["accepted"] == level["sqlite"]["accepted"] == 30
        assert level["sqlite"]["acks_at_relay"] == 21  # one acknowledgement per new conversation
        assert level["sqlite"]["ratio_to_fsync"] > 0
    assert printed["threading"] == {"replies": 18, "right": 18, "wrong": 0, "new_case": 0, "held_or_other": 0}
    assert set(printed["store_scale"]["sizes"]) == {"1000", "2000"}
    assert all(s["misses"] == 0 for s in printed["store_scale"]["sizes"].values())
    assert printed["memory"]["large_message"]["code"] == 250
    assert printed["memory"]["mbox_ingest"]["outcomes"] == {"new-case": 21, "threaded": 9}
    assert "Targets (issue 8)" in done.stdout
