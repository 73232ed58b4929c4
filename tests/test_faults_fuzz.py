# SPDX-License-Identifier: MIT
"""Fuzzed intake (RELIABILITY rule 7, "Hypothesis for MIME and header fuzz"): mutated real mail never
crashes ``run_ingest``; every input is stored with an outcome and a reason, or refused with one.

Seeds are a few messages of ../shared/corpus (bounces, MIME trees, broken headers) plus a plain
customer mail; hypothesis mutates bytes and headers. Derandomized and bounded (200 examples), so the
run is reproducible and takes seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from conftest import REPO
from helpers import CORPUS, Desk, build_mail, corpus, mt, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from maild.db import transaction
from maild.ingest.pipeline import run_ingest
from maild.ingest.raw import RawMail
from maild.models import RawMessage

SEEDS = ["bounceparser/aol-vacation.msg", "request-tracker/emails/nested-mime-sample", "django-helpdesk/pgp.eml",
         "mimekit/messages/issue358.txt", "mikel-mail/error_emails/new_line_in_to_header.eml"]
TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b"\r\n\r\n", b"\r\n--", b"--\r\n", b"=?utf-8?q?=0D=0ABcc:_x@y?=",
          b"Content-Type: multipart/mixed; boundary=x\r\n", b"\r\n--x\r\n", b"Content-Transfer-Encoding: base64\r\n",
          b"(((((", b"<<<>>>", b"@", b",", b";", b"\xff\xfe", b"\xe2\x80\xae", b"Message-ID: <\r\n>\r\n",
          b"From: a@b@c, <>\r\n", b"Received: x\r\n", b"Auto-Submitted: auto-replied\r\n",
          b"Authentication-Results: maild; dmarc=pass\r\n", b"X-Maild-Priority: P1\r\n"]  # fmt: skip


def seeds() -> list[bytes]:
    found = [(CORPUS / s).read_bytes() for s in SEEDS if (CORPUS / s).exists()]
    return [build_mail(sender="Anna <anna@acme.example>"), *found]


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["token", "flip", "cut", "repeat", "header"]))
        if kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 200))]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 300))] * draw(st.integers(1, 50))
        else:
            name = draw(st.sampled_from([b"From", b"To", b"Cc", b"Subject", b"Content-Type", b"References"]))
            data[0:0] = name + b": " + draw(st.binary(max_size=200)) + b"\r\n"
    return bytes(data)


def test_mutated_mail_never_crashes_intake_and_is_always_kept() -> None:
    # No input makes run_ingest raise; each is a raw row with an outcome and a reason (or a case).
    pool = seeds()
    if len(pool) < 3:
        corpus()
    tmp = Path(tempfile.mkdtemp(prefix="maild-fuzz-"))
    desk = Desk(write_config(tmp, database_url=f"sqlite:///{tmp}/maild.db"))
    desk.import_directory(REPO / "examples" / "directory.toml")
    outcomes: dict[str, int] = {}

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(mutated(pool))
    def run(data: bytes) -> None:
        raw = RawMail(data=data, source="file", rcpt_tos=("support@example.com",))
        result = run_ingest(desk.factory, desk.settings, raw, now=mt(2026, 11, 20, 10, 5))
        outcomes[result.outcome.value] = outcomes.get(result.outcome.value, 0) + 1
        with transaction(desk.factory) as s:
            row = s.scalars(select(RawMessage).where(RawMessage.envelope_key == raw.envelope_key)).one()
            assert row.data == data and row.outcome is not None
            assert row.case_id is not None or row.reason

    try:
        run()
    finally:
        desk.close()
    print(f"\nfuzz: {sum(outcomes.values())} mutated mails -> {dict(sorted(outcomes.items()))}")
    assert sum(outcomes.values()) >= 200
