# SPDX-License-Identifier: MIT
"""Tests for maild.outbound.compose: the headers and bytes of the mail the relay receives."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from maild.config import SecuritySettings, Settings
from maild.outbound.compose import compose, reference_chain, serialize, thread_index
from maild.outbound.render import Rendered

NOW = datetime(2026, 11, 20, 17, 0, tzinfo=UTC)
SETTINGS = Settings(security=SecuritySettings(secret="test-secret"))
MID = "maild.ack-new-case.abc123.tokentokentoken0@example.com"
REPLY_TO = "support+case-42-abcdefghij@example.com"


def build(rendered: Rendered | None = None, **overrides: Any) -> tuple[bytes, EmailMessage]:
    kwargs: dict[str, Any] = dict(
        to="anna@acme.example", to_name="Anna Admin", message_id=MID, case_number=42,
        in_reply_to="<cust-1@acme.example>", references=["<root@acme.example>"], automatic=True,
        reply_to=REPLY_TO, now=NOW,
    )  # fmt: skip
    kwargs.update(overrides)
    msg = compose(SETTINGS, rendered or Rendered("Printer broken", "Hello\n", None), **kwargs)
    raw = serialize(msg)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return raw, parsed


def test_case_mail_headers_thread_back_to_the_case() -> None:
    # An ack carries the tag, its own Message-ID, the customer's ids, the reply address and RFC 3834 marks.
    _, msg = build()
    assert msg["Subject"] == "[Case #42] Printer broken"
    assert msg["Message-ID"] == f"<{MID}>"
    assert msg["In-Reply-To"] == "<cust-1@acme.example>"
    assert msg["References"].split() == ["<root@acme.example>", "<cust-1@acme.example>"]
    assert msg["Reply-To"].addresses[0].addr_spec == REPLY_TO
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert msg["From"].addresses[0].display_name == "Client Services Support"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["X-Maild-Loop"] == SETTINGS.loop_token
    assert msg["Date"] == "Fri, 20 Nov 2026 17:00:00 +0000"
    assert msg["Thread-Topic"]
    assert len(base64.b64decode(msg["Thread-Index"])) == 22


def test_notice_is_auto_generated_and_staff_reply_is_not_automatic() -> None:
    # Scheduled notices say auto-generated; a human staff reply has no Auto-Submitted at all.
    _, notice = build(auto_kind="auto-generated", in_reply_to=None, references=[])
    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["In-Reply-To"] is None and notice["References"] is None
    _, human = build(automatic=False)
    assert human["Auto-Submitted"] is None and human["X-Auto-Response-Suppress"] is None


def test_thread_index_is_the_same_for_every_mail_of_a_case() -> None:
    # Outlook groups by the 22-byte header block: same case and start -> same block; other case differs.
    start = datetime(2026, 11, 1, tzinfo=UTC)
    a = base64.b64decode(thread_index(SETTINGS, "case:42", start))
    assert a == base64.b64decode(thread_index(SETTINGS, "case:42", start))
    assert a[6:] != base64.b64decode(thread_index(SETTINGS, "case:43", start))[6:]
    assert a[0] == 0x01  # FILETIME's top byte for any present-day date


def test_wire_form_is_crlf_and_long_lines_are_encoded() -> None:
    # A 2,000-char line, bare LFs and a lone CR leave as CRLF-only lines of at most 998 octets.
    body = "x" * 2000 + "\nsecond line\n\n.leading dot\r\nend\n"
    raw, msg = build(Rendered("Long", body, "<p>" + "y" * 2000 + "</p>"))
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", raw) is None
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    text = msg.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n").startswith("x" * 2000 + "\nsecond line\n\n.leading dot")
    assert msg.get_content_type() == "multipart/alternative"


def test_header_injection_through_the_subject_adds_no_header() -> None:
    # RELIABILITY S3: CR/LF in a customer's subject or name never becomes a Bcc (or any) header.
    evil = Rendered("hi\r\nBcc: victim@evil.example\r\nX-Injected: 1", "Hello\n", None)
    raw, msg = build(evil, to_name="Eve\r\nCc: other@evil.example")
    assert msg["Bcc"] is None and msg["Cc"] is None and msg["X-Injected"] is None
    assert b"\r\nBcc:" not in raw and b"\r\nCc:" not in raw
    assert msg["Subject"] == "[Case #42] hi Bcc: victim@evil.example X-Injected: 1"
    assert [a.addr_spec for a in msg["To"].addresses] == ["anna@acme.example"]


def test_non_ascii_subject_is_rfc2047_encoded() -> None:
    # A German subject travels as ASCII encoded-words and decodes back exactly.
    raw, msg = build(Rendered("Störung: Telefone außer Betrieb – dringend", "Grüße\n", None, "de"))
    assert raw.isascii()
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n", 1)[0]
    assert msg["Subject"] == "[Case #42] Störung: Telefone außer Betrieb – dringend"
    assert msg["Content-Language"] == "de"
    assert msg.get_content().strip() == "Grüße"


def test_long_message_ids_stay_unencoded_and_references_are_capped() -> None:
    # Outlook/Exchange ids can be long: they must survive verbatim (no RFC 2047), at most 20 kept.
    long_id = "<" + "a" * 120 + "@EXCH.example.com>"
    refs = [f"<r{i}@acme.example>" for i in range(30)]
    raw, msg = build(in_reply_to=long_id, references=[*refs, "junk without at", "<a b@c>"])
    assert msg["In-Reply-To"] == long_id
    chain = msg["References"].split()
    assert len(chain) == 20 and chain[0] == "<r0@acme.example>" and chain[-1] == long_id
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[0].split(b"Subject:")[0]
    assert reference_chain(["<x@y>", "<x@y>"], "<x@y>") == ["<x@y>"]


def test_attachment_is_sent_as_pdf() -> None:
    # An invoice PDF is a named application/pdf part next to the text and HTML.
    _, msg = build(Rendered("Invoice", "See attached\n", "<p>See attached</p>"), case_number=None,
                   attachments=[("acme-2026-11.pdf", "application/pdf", b"%PDF-1.4 test")])  # fmt: skip
    parts = list(msg.iter_attachments())
    assert [(p.get_content_type(), p.get_filename()) for p in parts] == [("application/pdf", "acme-2026-11.pdf")]
    assert parts[0].get_content() == b"%PDF-1.4 test"
    assert msg["Subject"] == "Invoice"


def test_undecodable_customer_bytes_do_not_break_composing() -> None:
    # A subject kept with surrogateescape (bad bytes in a customer's mail) becomes "?" instead of crashing.
    raw, msg = build(Rendered("caf\udce9 down", "Body \udce9\n", "<p>\udce9</p>"), to_name="Jos\udce9")
    assert msg["Subject"] == "[Case #42] caf? down"
    assert raw.isascii()
