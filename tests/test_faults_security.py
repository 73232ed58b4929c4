# SPDX-License-Identifier: MIT
"""Hostile mail (RELIABILITY S3-S10): header injection, ambiguous addresses, ticket hijack, forged
authentication results, HTML, attachment names. Real mail bytes through ``run_ingest`` on SQLite; acks
through the real sender to the CaptureRelay where the question is what goes out on the wire.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from faultlib import check_outbound, crlf
from helpers import Desk, build_mail, mt
from servers import CaptureRelay
from sqlalchemy import select

from maild.db import transaction
from maild.ingest.headers import screen_headers
from maild.ingest.parse import parse
from maild.ingest.raw import RawMail
from maild.models import AttachmentRow, CaseMessage, HeldMessage, RawMessage
from maild.outbound.relay import Relay
from maild.outbound.sender import run_until_empty
from maild.threading.addresses import reply_address

NOW = mt(2026, 11, 20, 10, 5)
ANNA, ERIKA, MALLORY = "anna@acme.example", "erika@acme.example", "mallory@evil.example"
UPSTREAM = "mx.acme.example"  # the MTA whose Authentication-Results maild trusts in these tests


@pytest.fixture
def desk(sqlite_desk: Desk, relay: CaptureRelay) -> Iterator[Desk]:
    s = sqlite_desk.settings
    sqlite_desk.settings = replace(s, relay=replace(s.relay, port=relay.port),
                                   security=replace(s.security, trusted_authserv_ids=[UPSTREAM]))  # fmt: skip
    yield sqlite_desk


def deliver(desk: Desk) -> None:
    run_until_empty(desk.factory, desk.settings, NOW, relay=Relay(desk.settings, connect_wait=0))


def open_case(desk: Desk) -> str:
    """Case 1 by Anna (an MPOC); returns its ack's Message-ID."""
    assert desk.ingest(build_mail(sender=f"Anna <{ANNA}>", message_id="<c1@acme.example>"), now=NOW).case == 1
    (ack,) = [i for i in desk.outbox() if i.template == "ack_new_case"]
    return f"<{ack.message_id}>"


def raw_headers(data: bytes) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


@pytest.mark.parametrize("subject", [
    "=?utf-8?q?hi=0D=0ABcc:_victim@evil.example?=",
    "=?utf-8?b?aGkNCkJjYzogdmljdGltQGV2aWwuZXhhbXBsZQ==?=",  # the same in base64
    "hi\r\n Bcc: victim@evil.example",  # folded: a continuation line, not a header
])
def test_header_injection_through_the_subject_adds_no_header_or_recipient(
        desk: Desk, relay: CaptureRelay, subject: str) -> None:
    # S3: the ack quotes the subject; on the wire it has no Bcc header and no extra RCPT.
    data = crlf(build_mail(sender=f"Anna <{ANNA}>"))
    data = data.replace(b"Subject: Printer on fire", b"Subject: " + subject.encode())
    assert desk.ingest(data, now=NOW).outcome.value == "new-case"
    deliver(desk)
    (ack,) = relay.messages
    assert ack.rcpt_tos == (ANNA,)
    assert b"bcc" not in raw_headers(ack.raw) and len(raw_headers(ack.raw)) == len(set(raw_headers(ack.raw)))
    assert "victim" not in str(ack.message["To"]) and ack.message["Bcc"] is None
    check_outbound(desk.settings.database_url, relay)


def test_crlf_in_a_from_address_never_reaches_an_smtp_command(desk: Desk, relay: CaptureRelay) -> None:
    # S4: a From whose encoded display name carries CR/LF and address syntax is not one readable address:
    # held, no mail to anyone named in it (relay.py refuses CR/LF addresses as well, test_outbound_relay).
    data = crlf(build_mail(sender=f"Anna <{ANNA}>")).replace(
        f"From: Anna <{ANNA}>".encode(),
        f"From: =?utf-8?q?Anna=0D=0ARCPT_TO:<victim@evil.example>?= <{ANNA}>".encode())
    r = desk.ingest(data, now=NOW)
    assert r.outcome.value == "held"
    deliver(desk)
    assert all("victim@evil.example" not in m.rcpt_tos for m in relay.messages)
    assert all(not re.search(r"[\r\n<>]", i.to_addr) for i in desk.outbox())


@pytest.mark.parametrize("sender", [
    "alice@example.org)<bob@example.com>", "a@b@c", f"{ANNA}, {MALLORY}", f"{ANNA} <{MALLORY}>",
    f"=?utf-8?q?{ANNA}?= <{MALLORY}>",
])
def test_ambiguous_from_is_never_read_as_the_mpoc(desk: Desk, sender: str) -> None:
    # S5: every ambiguous From is held (unreadable, or a stranger's address), never Anna's case;
    # the raw bytes are kept unchanged.
    data = crlf(build_mail(sender=f"Anna <{ANNA}>"))
    data = data.replace(f"From: Anna <{ANNA}>".encode(), f"From: {sender}".encode())
    r = desk.ingest(data, now=NOW)
    assert r.outcome.value == "held" and desk.cases() == []
    with transaction(desk.factory) as s:
        (row,) = s.scalars(select(RawMessage))
        assert row.sha256 == hashlib.sha256(data).hexdigest() and row.data == data
        assert s.scalars(select(HeldMessage)).one().sender != ANNA


def test_a_malformed_recipient_does_not_empty_the_list() -> None:
    # S5: one bad entry among good ones in To/Cc drops only itself.
    data = (b"From: anna@acme.example\r\nTo: support@example.com, bad@@, good@acme.example\r\n"
            b"Cc: ,,x@acme.example\r\n\r\nb\r\n")
    inbound = parse(RawMail(data))
    assert {"support@example.com", "good@acme.example"} <= set(inbound.to) and inbound.cc == ("x@acme.example",)


def hijack(desk: Desk, ack: str, variant: str) -> bytes:
    tagged = "Re: [Case #1] Printer on fire"
    token_addr = reply_address("support@example.com", 1, desk.settings.secret_bytes)
    tampered = re.sub(r"-[A-Za-z0-9_]+@", "-AAAAAAAAAAAAAAAA@", token_addr)
    mails = {
        "stranger-tag": build_mail(sender=MALLORY, subject=tagged, message_id="<h1@evil.example>"),
        "stranger-guessed-address": build_mail(sender=MALLORY, to="support+case-1@example.com", subject="hello",
                                               message_id="<h2@evil.example>"),
        "stranger-forged-references": build_mail(sender=MALLORY, subject="hello", references=ack, in_reply_to=ack,
                                                 message_id="<h3@evil.example>"),
        "stranger-tampered-token": build_mail(sender=MALLORY, to=tampered, subject="hi", message_id="<h4@evil>"),
        "participant-dmarc-fail": build_mail(sender=ERIKA, subject=tagged, message_id="<h5@acme.example>",
                                             headers={"Authentication-Results": f"{UPSTREAM}; dmarc=fail"}),
        "staff-address-dmarc-fail": build_mail(sender="tom@support.example.com", subject=tagged,
                                               message_id="<h6@x>",
                                               headers={"Authentication-Results": f"{UPSTREAM}; dmarc=fail"}),
    }  # fmt: skip
    return mails[variant]


@pytest.mark.parametrize("variant", ["stranger-tag", "stranger-guessed-address", "stranger-forged-references",
                                     "stranger-tampered-token", "participant-dmarc-fail", "staff-address-dmarc-fail"])
def test_hijack_attempts_do_not_touch_the_case(desk: Desk, relay: CaptureRelay, variant: str) -> None:
    # S6 (a, b, d) and S7: not appended, no participant added, no reopen, no mail to the attacker; held, kept.
    ack = open_case(desk)
    desk.cli_json("cases", "set", "1", "--status", "closed", "--now", "2026-11-20T11:00")
    before = desk.case(1)
    data = hijack(desk, ack, variant)
    rcpt = (re.search(rb"^To: (.*)$", data, re.M).group(1).decode().strip(),)  # type: ignore[union-attr]
    r = desk.ingest(data, now=mt(2026, 11, 20, 12, 0), rcpt=rcpt)
    assert r.case != 1
    after = desk.case(1)
    assert (after["messages"], after["status"]) == (before["messages"], before["status"])
    assert desk.case_row(1).participants == [] or MALLORY not in desk.case_row(1).participants
    deliver(desk)
    assert all(MALLORY not in m.rcpt_tos and ERIKA not in m.rcpt_tos for m in relay.messages)
    if variant != "stranger-tampered-token":  # that one is an unknown sender's new mail: held as well
        assert r.outcome.value == "held"


def test_participant_with_a_pass_is_appended(desk: Desk) -> None:
    # S6 (c): a colleague of the requester whose upstream DMARC passed threads into the case.
    open_case(desk)
    data = build_mail(sender=ERIKA, subject="Re: [Case #1] Printer", message_id="<ok@acme.example>",
                      headers={"Authentication-Results": f"{UPSTREAM}; spf=pass; dmarc=pass header.from=acme.example"})
    assert desk.ingest(data, now=NOW).case == 1


@pytest.mark.parametrize("own_id", ["maild", "maild.", "MAILD"])
def test_forged_results_and_control_headers_are_stripped_before_policy(desk: Desk, own_id: str) -> None:
    # S7: A-R with our authserv-id (any case, trailing dot) and X-Maild-* are gone from what policy reads;
    # a stranger claiming "dmarc=pass" from us is still held; X-Maild-Priority changes nothing.
    forged = {"Authentication-Results": f"{own_id}; dmarc=pass header.from=acme.example",
              "X-Maild-Priority": "P1", "X-Maild-Queue": "major-cases"}
    data = build_mail(sender=MALLORY, headers=forged)
    screened = screen_headers(parse(RawMail(data)), desk.settings.security)
    assert screened.stripped == ("authentication-results", "x-maild-priority", "x-maild-queue")
    assert not [n for n, _ in screened.inbound.headers if n.startswith("x-maild") or n == "authentication-results"]
    assert desk.ingest(data, now=NOW).outcome.value == "held"
    r = desk.ingest(build_mail(sender=ANNA, message_id="<p@acme.example>", headers=forged), now=NOW)
    assert r.outcome.value == "new-case" and desk.case(r.case or 0)["priority"] == "P4"


def test_trusted_upstream_dmarc_fail_holds_without_a_reply(desk: Desk, relay: CaptureRelay) -> None:
    # S7: an MPOC's address with a failed DMARC verdict from the trusted MTA opens nothing and gets no
    # reply (a forged From must not make us mail the real owner); an untrusted server's verdict is ignored.
    failed = build_mail(sender=ANNA, headers={"Authentication-Results": f"{UPSTREAM}; dmarc=fail (p=reject)"})
    r = desk.ingest(failed, now=NOW)
    assert r.outcome.value == "held" and "unverified" in r.reason
    deliver(desk)
    assert relay.messages == []
    other = build_mail(sender=ANNA, message_id="<o@acme.example>",
                       headers={"Authentication-Results": "mx.evil.example; dmarc=fail"})
    assert desk.ingest(other, now=NOW).outcome.value == "new-case"


def test_html_is_sanitised_where_shown_and_raw_bytes_kept(desk: Desk, relay: CaptureRelay) -> None:
    # S8: script, event handlers, javascript: links and CSS expressions are gone from the stored HTML;
    # an HTML subject is escaped in the ack's HTML part; the raw sha256 is unchanged.
    html = ('<p>hi</p><script>alert(1)</script><img src=x onerror="alert(2)">'
            '<a href="javascript:alert(3)">x</a><div style="width: expression(alert(4))">y</div>'
            '<svg><script>alert(5)</script></svg>')  # fmt: skip
    data = (f"From: Anna <{ANNA}>\r\nTo: support@example.com\r\nSubject: <script>alert(6)</script>\r\n"
            "Message-ID: <x@acme.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            f"{html}\r\n").encode()  # fmt: skip
    assert desk.ingest(data, now=NOW).outcome.value == "new-case"
    with transaction(desk.factory) as s:
        stored = s.scalars(select(CaseMessage).where(CaseMessage.direction == "in")).one().html or ""
        assert s.scalars(select(RawMessage)).one().sha256 == hashlib.sha256(data).hexdigest()
    assert "<p>hi</p>" in stored
    for bad in ("<script", "onerror", "javascript:", "expression(", "<svg"):
        assert bad not in stored.lower()
    deliver(desk)
    (ack,) = relay.messages
    ack_html = next(p for p in ack.message.walk() if p.get_content_type() == "text/html").get_content()
    assert "<script>alert(6)" not in ack_html


NAMES = ["../../etc/cron.d/x", "..\\..\\x", "/abs/path", "nul\x00byte.txt", "a" * 5000 + ".pdf", "winmail.dat"]


def attachment_mail(names: list[str], n: int) -> bytes:
    parts = [f'--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; '
             f'filename="{name}"\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8{i}\r\n'
             for i, name in enumerate(names)]  # fmt: skip
    return (f"From: {ANNA}\r\nTo: support@example.com\r\nSubject: files\r\nMessage-ID: <f{n}@acme.example>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" + "".join(parts) + "--B--\r\n").encode()


def test_attachment_names_never_become_paths(desk: Desk, tmp_path: Path) -> None:
    # S9: every hostile name (one per mail) becomes a sanitised display name; the mail is stored (raw
    # bytes in the database) and no file appears under the data directory except the database's own.
    before = set(tmp_path.rglob("*"))
    mails = [attachment_mail([name], n) for n, name in enumerate(NAMES)]
    mails.append(mails[0].replace(b'filename="../../etc/cron.d/x"',
                                  b"filename*=utf-8''%2e%2e%2f%2e%2e%2fetc%2fpasswd").replace(b"<f0@", b"<f9@"))
    for data in mails:
        (attachment,) = parse(RawMail(data)).attachments
        name = attachment.filename
        assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
        assert 0 < len(name) <= 255
        assert desk.ingest(data, now=NOW).outcome.value == "new-case"
    with transaction(desk.factory) as s:
        assert [r.data for r in s.scalars(select(RawMessage).order_by(RawMessage.id))] == mails
    new = set(tmp_path.rglob("*")) - before
    assert {p.name for p in new} <= {"maild.db-journal", "maild.db-wal", "maild.db-shm"}
    assert not Path("/etc/cron.d/x").exists() and not Path("/abs/path").exists()


def test_attachments_are_stored_under_their_hash_with_unguessable_tokens(desk: Desk) -> None:
    # S9/S10: one row per MIME attachment part, bytes under their sha256, a distinct unguessable token each.
    assert desk.ingest(attachment_mail(NAMES, 0), now=NOW).outcome.value == "new-case"
    with transaction(desk.factory) as s:
        rows = list(s.scalars(select(AttachmentRow)))
    assert len(rows) == len(NAMES)
    tokens = [r.token for r in rows]
    assert len(set(tokens)) == len(tokens) and all(len(t) >= 32 for t in tokens)
