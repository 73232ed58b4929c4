# SPDX-License-Identifier: MIT
"""maild's benchmark: durable SMTP intake beside the machine's fsync limit, threading, scale, memory.

Run from the repository root: ``python bench/run.py [--quick | --smoke] [--json PATH]`` (see
docs/PERFORMANCE.md). One run generates a seeded corpus, measures ``maild run`` on SQLite (and on
PostgreSQL when tests/servers.py can start one) at 1, 8 and 32 connections beside an fsync-append
aiosmtpd server driven by the same client, counts where every reply landed, times reply lookup and
``tick`` with 1k/100k/1M cases stored, and reads peak RSS while taking a 25 MB message and during a
10,000-message mbox ingest. It prints a table and one JSON object (also written to --json PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO / "bench", REPO / "tests", REPO):
    sys.path.insert(0, str(extra))

from corpus import make_corpus  # noqa: E402
from intake import intake_section  # noqa: E402
from memory import large_message_section, mbox_section  # noqa: E402
from report import print_table, targets  # noqa: E402
from store_scale import scale_section  # noqa: E402

# messages at 8 connections (the target's level), at 1 and 32, case counts, mbox size, large message
MODES: dict[str, dict[str, Any]] = {
    "full": {"headline": 2000, "others": 1000, "levels": [1, 8, 32], "sizes": [1000, 100_000, 1_000_000],
             "mbox": 10_000, "large": 25_000_000, "postgres": True},
    "quick": {"headline": 600, "others": 300, "levels": [1, 8, 32], "sizes": [1000, 10_000, 50_000],
              "mbox": 2000, "large": 25_000_000, "postgres": True},
    "smoke": {"headline": 30, "others": 30, "levels": [1, 4], "sizes": [1000, 2000], "mbox": 30,
              "large": 2_000_000, "postgres": False},
}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1), "cpu": cpu,
            "python": platform.python_version(), "kernel": platform.release()}


def start_postgres(root: Path) -> Any:
    """A throw-away PostgreSQL server, or None (with a note) when it cannot run here."""
    from servers import PostgresServer, ServerUnavailable

    server = PostgresServer()
    try:
        server.start(root / "pg")
    except (ServerUnavailable, RuntimeError) as exc:
        print(f"note: PostgreSQL skipped: {exc}".splitlines()[0])
        return None
    return server


def run(mode: str, root: Path, log: Any, processes: int = 0) -> dict[str, Any]:
    cfg = MODES[mode]
    started = time.monotonic()
    result: dict[str, Any] = {"mode": mode, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                              "machine": machine()}
    pg = start_postgres(root) if cfg["postgres"] else None
    if not cfg["postgres"]:
        log("note: PostgreSQL not measured in this mode")
    urls: dict[str, Any] = {"sqlite": lambda where, c: f"sqlite:///{where}/maild.db"}
    if pg is not None:
        urls["postgresql"] = lambda where, c: pg.create_database(f"bench_{c}")
    try:
        result["intake"] = {"levels": {}, "processes": processes}
        for level in cfg["levels"]:
            size = cfg["headline"] if level == 8 or len(cfg["levels"]) < 3 else cfg["others"]
            part = intake_section(make_corpus(size), root / "intake", urls, [level], log, processes)
            result["intake"]["levels"].update(part["levels"])
            result["intake"]["levels"][str(level)]["messages"] = size
    finally:
        if pg is not None:
            pg.close()
    log("intake done")
    result["store_scale"] = scale_section(root / "scale", cfg["sizes"], log)
    corpus = make_corpus(cfg["headline"])
    result["memory"] = {"large_message": large_message_section(corpus, root / "large", cfg["large"]),
                        "mbox_ingest": mbox_section(make_corpus(cfg["mbox"], seed=10), root / "mbox")}
    log("memory done")
    result["targets"] = targets(result)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="maild benchmark (docs/PERFORMANCE.md)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller N: 1k/10k/50k cases, 2,000-message mbox")
    size.add_argument("--smoke", action="store_true", help="seconds-long run for CI: 30 messages, no PostgreSQL")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON object here")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, stores)")
    parser.add_argument("--processes", type=int, default=0, metavar="N",
                        help="maild's [smtp] processes (intake worker processes); default: 0, maild's own")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True, exist_ok=True)
        result = run(mode, root, log, args.processes)
    else:
        with tempfile.TemporaryDirectory(prefix="maild-bench-") as tmp:
            os.chmod(tmp, 0o755)  # PostgreSQL runs as its own user when we are root
            result = run(mode, Path(tmp), log, args.processes)
    print_table(result)
    text = json.dumps(result, ensure_ascii=False)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
