# SPDX-License-Identifier: MIT
"""Threading cost and ``tick`` cost as the store grows: 1k, 100k and 1M cases already stored.

The cases and their thread ids (the customer's first Message-ID and maild's acknowledgement's, as
intake writes them) are bulk-loaded with ``executemany`` into a SQLite store created by maild's own
migrations; one case in 1,000 is open (its clocks in the future, so ``tick`` has nothing to send
and measures only its queries), the rest are closed. At each size the bench parses replies to
random cases in three shapes (In-Reply-To naming the ack; only the subject tag; only the reply
address) and times ``maild.threading.find_case`` on each, one session per lookup as intake does;
then it times one ``maild.scheduler.tick``.
"""

from __future__ import annotations

import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from smtp_load import percentile

NOW = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
OPEN_EVERY = 1000
OPEN_STATUSES = ["new", "in-progress", "on-hold", "shipping"]
LOOKUPS = 300
CHUNK = 50_000


def _when(t: datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def _ack_id(n: int) -> str:
    return f"maild.ack-new-case.{n:020x}.bulk@example.com"


def _case_rows(first: int, last: int) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
    cases, ids = [], []
    for n in range(first, last + 1):
        created = NOW - timedelta(minutes=(10**6 - n) % 500_000 + 60)
        is_open = n % OPEN_EVERY == 0
        status = OPEN_STATUSES[(n // OPEN_EVERY) % len(OPEN_STATUSES)] if is_open else "closed"
        due = _when(NOW + timedelta(days=2)) if is_open else None
        cases.append((n, "technical", "P3", status, f"user{n % 3}@org{n % 500:04d}.example", "Bulk Customer",
                      f"Bulk problem {n}", _when(created), _when(created), None if is_open else _when(created), "[]",
                      due, due, due if status == "on-hold" else None, 1, 0))
        ids += [(f"bulk-{n}@org{n % 500:04d}.example", n), (_ack_id(n), n)]
    return cases, ids


def bulk_load(db: Path, first: int, last: int) -> float:
    """Add cases ``first..last`` with their thread ids; seconds taken."""
    started = time.monotonic()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # a bulk load, not intake: durability is not measured here
    for lo in range(first, last + 1, CHUNK):
        cases, ids = _case_rows(lo, min(last, lo + CHUNK - 1))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO cases (id, kind, priority, status, requester, requester_name, subject, created_at,"
            " updated_at, closed_at, participants, first_response_due, next_update_due, hold_until,"
            " escalation_level, expedited) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", cases)
        conn.executemany("INSERT INTO thread_ids (message_id, case_id) VALUES (?, ?)", ids)
        conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return time.monotonic() - started


def reply_bytes(n: int, shape: str, reply_to: str) -> tuple[bytes, tuple[str, ...]]:
    msg = EmailMessage()
    msg["From"] = f"Bulk Customer <user{n % 3}@org{n % 500:04d}.example>"
    msg["Subject"] = f"AW: [Case #{n}] Bulk problem {n}" if shape != "reply-address" else f"RES: Bulk problem {n}"
    msg["To"] = reply_to if shape == "reply-address" else "support@example.com"
    msg["Message-ID"] = f"<lookup-{n}-{shape}@org.example>"
    if shape == "references":
        msg["In-Reply-To"] = f"<{_ack_id(n)}>"
        msg["References"] = f"<bulk-{n}@org{n % 500:04d}.example> <{_ack_id(n)}>"
    msg.set_content("Any news?\n")
    return msg.as_bytes(), (reply_to,) if shape == "reply-address" else ("support@example.com",)


def time_lookups(factory: Any, settings: Any, size: int, rng: random.Random) -> dict[str, Any]:
    """Median and p99 of ``find_case`` over replies to random stored cases; every one must match."""
    from maild.db import transaction
    from maild.ingest.parse import parse
    from maild.ingest.raw import RawMail
    from maild.threading import find_case
    from maild.threading.addresses import reply_address

    times: list[float] = []
    misses = 0
    for i in range(LOOKUPS):
        n = rng.randint(1, size)
        shape = ("references", "subject-tag", "reply-address")[i % 3]
        data, rcpts = reply_bytes(n, shape, reply_address(settings.support_address, n, settings.secret_bytes))
        inbound = parse(RawMail(data=data, source="smtp", rcpt_tos=rcpts))
        with transaction(factory) as session:
            started = time.perf_counter()
            match = find_case(session, inbound, settings)
            times.append(time.perf_counter() - started)
            misses += match is None or match.case.id != n
    return {"lookups": LOOKUPS, "misses": misses, "p50_ms": round(percentile(times, 0.5) * 1000, 3),
            "p99_ms": round(percentile(times, 0.99) * 1000, 3)}


def time_tick(factory: Any, settings: Any) -> float:
    from maild.scheduler import tick

    started = time.perf_counter()
    tick(factory, settings, NOW)
    return time.perf_counter() - started


def scale_section(root: Path, sizes: list[int], log: Any = print) -> dict[str, Any]:
    from intake import write_config

    from maild import config as maild_config
    from maild.db import open_store

    root.mkdir(parents=True, exist_ok=True)
    cfg = write_config(root, f"sqlite:///{root}/scale.db", 2, 2)
    settings = maild_config.load(cfg, env={})
    engine, factory = open_store(settings.database_url)
    time_tick(factory, settings)  # imports and template loading happen once, before any figure
    rng = random.Random(8)
    out: dict[str, Any] = {"sizes": {}}
    loaded = 0
    for size in sizes:
        load_s = bulk_load(root / "scale.db", loaded + 1, size)
        loaded = size
        engine.dispose()  # fresh connections see the ANALYZE statistics
        entry = {"load_s": round(load_s, 1), **time_lookups(factory, settings, size, rng),
                 "tick_s": round(time_tick(factory, settings), 3)}
        out["sizes"][str(size)] = entry
        log(f"  {size} cases: loaded in {load_s:.0f} s, lookup p50 {entry['p50_ms']} ms, tick {entry['tick_s']} s")
    engine.dispose()
    first, last = out["sizes"][str(sizes[0])], out["sizes"][str(sizes[-1])]
    out["lookup_ratio_largest_to_smallest"] = round(last["p50_ms"] / first["p50_ms"], 2) if first["p50_ms"] else 0.0
    return out
