# SPDX-License-Identifier: MIT
"""Every real-world mail in ../shared/corpus goes through intake without a crash, with sensible outcomes."""

from __future__ import annotations

import mailbox
from collections import Counter

import pytest
from helpers import CORPUS, Desk, corpus, mt

from maild.ingest.pipeline import IngestResult


def _index() -> list[tuple[str, set[str]]]:
    rows = []
    for line in (CORPUS / "INDEX.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        cols = line.split("\t")
        rows.append((cols[0], set(cols[4].split(",")) if len(cols) > 4 and cols[4] else set()))
    return rows


def _messages(ident: str) -> bytes:
    path, _, n = ident.partition("#")
    if not n:
        return (CORPUS / path).read_bytes()
    box = mailbox.mbox(str(CORPUS / path), create=False)
    try:
        return box.get_bytes(list(box.iterkeys())[int(n)])  # INDEX counts from 0
    finally:
        box.close()


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[IngestResult, set[str]]]:
    if not (CORPUS / "INDEX.tsv").exists():
        corpus()
    from conftest import REPO
    from helpers import write_config

    tmp = tmp_path_factory.mktemp("corpus")
    desk = Desk(write_config(tmp, database_url=f"sqlite:///{tmp}/maild.db"))
    desk.import_directory(REPO / "examples" / "directory.toml")
    results = {}
    for ident, flags in _index():
        results[ident] = (desk.ingest(_messages(ident), now=mt(2026, 11, 20, 12, 0), source="file"), flags)
    desk.close()
    return results


def test_no_corpus_message_crashes_intake(corpus_results: dict[str, tuple[IngestResult, set[str]]]) -> None:
    # No message ends in quarantine: each one was read and given an outcome by the rules.
    crashed = {k: r.reason for k, (r, _) in corpus_results.items() if "unprocessable" in r.reason}
    assert crashed == {}
    assert len(corpus_results) >= 300


def test_bounces_and_auto_replies_never_open_cases(corpus_results: dict[str, tuple[IngestResult, set[str]]]) -> None:
    # Mail the index flags as bounce or auto-submitted comes out as bounce or ignored, never a case.
    wrong = {}
    for ident, (r, flags) in corpus_results.items():
        automatic = flags & {"bounce", "bounce_dsn", "auto_submitted", "auto_reply", "precedence_bulk", "list"}
        if automatic and r.outcome.value not in ("bounce", "ignored", "duplicate"):
            wrong[ident] = (r.outcome.value, r.reason)
    assert wrong == {}


def test_outcome_counts_are_stable(corpus_results: dict[str, tuple[IngestResult, set[str]]]) -> None:
    # The outcome mix of the corpus; a change here is a behaviour change to look at.
    counts = Counter(r.outcome.value for r, _ in corpus_results.values())
    print(dict(counts))
    # The corpus senders are strangers to our example directory: none may open a case.
    assert counts["new-case"] == 0
    # Duplicates: the corpus repeats messages (sisimai's dos/ copies, test fixtures sharing Message-IDs).
    assert counts == {"ignored": 23, "bounce": 58, "held": 205, "duplicate": 29}
