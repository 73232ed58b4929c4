# SPDX-License-Identifier: MIT
"""Durable SMTP intake: ``maild run`` and the fsync-append baseline at one concurrency, plus threading.

One phase = a fresh store with the corpus's directory, ``python -m maild run`` pointed at a
``StampedRelay``, then two waves over C connections: every new conversation; then (once maild's
acknowledgements reached the relay, because replies answer them) every reply. The rate counts the
two waves' sending time only, not the wait between them. Afterwards the store says which case each
reply landed in: right, wrong (another existing case), new-case, or held/other.
"""

from __future__ import annotations

import email
import time
from collections.abc import Callable
from email import policy
from pathlib import Path
from typing import Any

from corpus import Ack, Corpus
from servers import free_port
from smtp_load import (
    LoadResult,
    StampedRelay,
    latency_summary,
    percentile,
    send_all,
    start_fsync_server,
    start_maild,
    wait_processed,
)
from sqlalchemy import create_engine, text

ACK_QUIET = 20.0  # no new acknowledgement for this long (4 sender turns): the rest are not coming

CONFIG = """\
[database]
url = "{url}"
[paths]
data = "{data}"
invoices = "{data}/invoices"
[smtp]
listen = "127.0.0.1:{port}"
processes = {processes}
[relay]
host = "127.0.0.1"
port = {relay_port}
timeout = 30
[intake]
address = "support@example.com"
# The benchmark's MPOCs each open many cases in minutes; the per-sender acknowledgement caps
# (5 an hour by default) would suppress most acknowledgements the replies need.
ack_per_sender_per_hour = 1000000
ack_per_sender_per_day = 1000000
[security]
secret = "bench-secret"
"""


def write_config(directory: Path, url: str, port: int, relay_port: int, processes: int = 0) -> Path:
    path = directory / "maild.toml"
    path.write_text(CONFIG.format(url=url, data=directory, port=port, relay_port=relay_port, processes=processes),
                    encoding="utf-8")
    return path


def import_directory(config: Path, corpus: Corpus) -> None:
    from maild import config as maild_config
    from maild.db import open_store, transaction
    from maild.directory import import_records, read_file

    settings = maild_config.load(config, env={})
    engine, factory = open_store(settings.database_url)
    with transaction(factory) as session:
        import_records(session, read_file(corpus.write_directory(config.parent / "directory.toml")))
    engine.dispose()


def read_ack(raw: bytes) -> tuple[str, Ack]:
    """(the Message-ID the ack answers, what a client replying to it sees)."""
    msg = email.message_from_bytes(raw, policy=policy.default)
    answered = str(msg.get("In-Reply-To", "")).strip().strip("<>")
    reply_to = str(msg.get("Reply-To", "support@example.com"))
    reply_to = reply_to[reply_to.find("<") + 1:reply_to.rfind(">")] if "<" in reply_to else reply_to
    return answered, Ack(str(msg["Message-ID"]).strip().strip("<>"), str(msg["Subject"]), reply_to.strip())


def maild_phase(corpus: Corpus, root: Path, url: str, connections: int, processes: int = 0) -> dict[str, Any]:
    """One backend at one concurrency: intake rate and latency, ack delivery times, threading."""
    root.mkdir(parents=True, exist_ok=True)
    relay = StampedRelay()
    relay.start()
    port = free_port()
    config = write_config(root, url, port, relay.port, processes)
    import_directory(config, corpus)
    daemon = start_maild(config, port, root / "maild.log")
    try:
        wave1 = send_all(port, [(c.render(), "support@example.com") for c in corpus.new], connections)
        got = relay.wait_quiet(len(corpus.new), ACK_QUIET)
        acks = {}
        arrived = list(zip(relay.messages, relay.arrived, strict=False))
        for captured, at in arrived:
            answered, ack = read_ack(captured.raw)
            acks[answered] = (ack, at)
        ack_delays = []
        for s in wave1.sent:
            found = acks.get(corpus.new[s.index].message_id.strip("<>"))
            if found is not None:
                ack_delays.append(found[1] - s.done_at)
        wave2 = send_all(port, [r.render(acks.get(r.conversation.message_id.strip("<>"), (None, 0))[0])
                                for r in corpus.replies], connections)
        drain_s = wait_processed(url)  # the case work of the last replies follows their 250s
    finally:
        daemon.stop()
        relay.stop()
    result = latency_summary([wave1, wave2])
    result["acks_at_relay"] = got
    result["processed_after_last_250_s"] = drain_s
    result["ack_delay_p50_s"] = round(percentile(ack_delays, 0.5), 2)
    result["ack_delay_p99_s"] = round(percentile(ack_delays, 0.99), 2)
    result["ack_delay_max_s"] = round(max(ack_delays, default=float("nan")), 2)
    result["threading"] = threading_verdict(url, corpus)
    return result


def baseline_phase(corpus: Corpus, root: Path, connections: int) -> dict[str, Any]:
    """The same messages over the same client to the fsync-append server."""
    root.mkdir(parents=True, exist_ok=True)
    server = start_fsync_server(root, root / "fsync.log")
    try:
        waves: list[LoadResult] = [
            send_all(server.port, [(c.render(), "support@example.com") for c in corpus.new], connections),
            send_all(server.port, [r.render(None) for r in corpus.replies], connections)]
    finally:
        server.stop()
        (root / "spool.mbox").unlink(missing_ok=True)
    return latency_summary(waves)


def threading_verdict(url: str, corpus: Corpus) -> dict[str, int]:
    """Where each reply landed, compared with the case its conversation opened."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, case_id, outcome FROM raw_messages")).all()
    engine.dispose()
    by_mid = {mid: (case_id, outcome) for mid, case_id, outcome in rows}
    verdict = {"replies": len(corpus.replies), "right": 0, "wrong": 0, "new_case": 0, "held_or_other": 0}
    for reply in corpus.replies:
        expected = by_mid.get(reply.conversation.message_id.strip("<>"), (None, None))[0]
        case_id, outcome = by_mid.get(reply.message_id.strip("<>"), (None, None))
        if expected is not None and case_id == expected:
            verdict["right"] += 1
        elif outcome in ("new-case", "new-linked-case"):
            verdict["new_case"] += 1
        elif case_id is not None:
            verdict["wrong"] += 1
        else:
            verdict["held_or_other"] += 1
    return verdict


def intake_section(corpus: Corpus, root: Path, urls: dict[str, Callable[[Path, int], str]], levels: list[int],
                   log: Any = print, processes: int = 0) -> dict[str, Any]:
    """Every backend x concurrency, each beside the baseline at the same concurrency."""
    out: dict[str, Any] = {"messages": len(corpus.new) + len(corpus.replies), "levels": {}}
    for c in levels:
        started = time.monotonic()
        base = baseline_phase(corpus, root / f"fsync-{c}", c)
        level: dict[str, Any] = {"fsync_append": base}
        for backend, make_url in urls.items():
            where = root / f"{backend}-{c}"
            result = maild_phase(corpus, where, make_url(where, c), c, processes)
            result["ratio_to_fsync"] = round(result["rate"] / base["rate"], 3) if base["rate"] else 0.0
            level[backend] = result
        out["levels"][str(c)] = level
        log(f"  intake at {c} connection(s) done in {time.monotonic() - started:.0f} s")
    return out
