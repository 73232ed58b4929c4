# SPDX-License-Identifier: MIT
"""Large mail in pieces, end to end: DATA spooled to a file (``maild.ingest.spool``), the bytes written
to the store in pieces (``maild.blobio``), the big attachment held out of the parse and decoded into
``blobs`` in pieces (``maild.ingest.bigmail``). Real listener and sockets, SQLite and PostgreSQL.

The protocol must stay aiosmtpd 1.4.6's to the byte: dot-unstuffing, 552 for too much data, 500 for a
long line, and only CRLF . CRLF ends the data (the smuggling fix), now also past the spool's memory."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from helpers import Desk, build_mail
from sqlalchemy import select

from maild.db import transaction
from maild.ingest import bigmail, spool
from maild.ingest.smtp_server import make_controller
from maild.models import AttachmentRow, Blob, CaseMessage, RawBody, RawMessage

SENDER = "Peter Gibbons <peter@initech.example>"


def big_mail(payload: bytes, subject: str = "Capture of the outage", mid: str = "<big-1@initech.example>") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = SENDER, "support@example.com", subject, mid
    # Lines that start with a dot: the client stuffs them, the listener must unstuff them.
    msg.set_content("The capture is attached.\n.hidden line one\n..two dots\n.\nend\n")
    msg.add_attachment(payload, maintype="application", subtype="vnd.tcpdump.pcap", filename="outage.pcap")
    return msg.as_bytes(policy=policy.SMTP)


def payload(size: int) -> bytes:
    return hashlib.shake_256(b"capture").digest(size)


def spy_on_split(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many attachments each read of a large message held out, one entry a read."""
    splits: list[int] = []
    real_split = bigmail.split

    def spy(*args: object, **kwargs: object) -> tuple[bytes, bigmail.Whole]:
        skeleton, whole = real_split(*args, **kwargs)  # type: ignore[arg-type]
        splits.append(len(whole.held))
        return skeleton, whole

    monkeypatch.setattr(bigmail, "split", spy)
    return splits


def send(port: int, *messages: bytes) -> list[tuple[int, bytes]]:
    """Each message in turn over one SMTP session; the replies to their DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        replies = []
        for data in messages:
            smtp.mail("peter@initech.example")
            smtp.rcpt("support@example.com")
            replies.append(smtp.data(data))
        return replies


def wait_processed(desk: Desk) -> None:
    deadline = time.monotonic() + 30
    while desk.cli_json("queue")["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert desk.cli_json("queue")["queued"] == 0


@pytest.mark.parametrize("queued", [True, False], ids=["queue", "no-queue"])
def test_a_large_message_is_kept_byte_exact_and_its_attachment_decoded_into_the_case(
        desk: Desk, queued: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = spy_on_split(monkeypatch)
    attachment = payload(4_500_000)
    data = big_mail(attachment)
    assert len(data) > bigmail.LARGE and len(data) > spool.MEMORY
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0", queue=queued).start()
    try:
        replies = send(intake.port, data)
        wait_processed(desk)
    finally:
        intake.stop(grace=10)
    assert [code for code, _ in replies] == [250], replies
    with transaction(desk.factory) as s:
        row = s.scalars(select(RawMessage)).one()
        assert (row.size, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert s.get(RawBody, row.id).data == data  # what the client meant, dots unstuffed
        assert row.outcome == "new-case"
        message = s.scalars(select(CaseMessage).where(CaseMessage.raw_id == row.id)).one()
        assert ".hidden line one\n..two dots\n.\nend" in message.text
        att = s.scalars(select(AttachmentRow)).one()
        assert (att.filename, att.content_type, att.size) == ("outage.pcap", "application/vnd.tcpdump.pcap",
                                                              len(attachment))
        assert att.sha256 == hashlib.sha256(attachment).hexdigest()
        assert s.get(Blob, att.sha256).data == attachment
    assert [c["subject"] for c in desk.cases()] == ["Capture of the outage"]
    assert [i.template for i in desk.outbox()] == ["ack_new_case"]
    # the queue reads it from the store in pieces; without the queue it is read from memory, also held out
    assert splits == [1]


def test_a_large_copy_sent_twice_is_one_message(desk: Desk) -> None:
    data = big_mail(payload(4_500_000))
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0", queue=True).start()
    try:
        replies = send(intake.port, data) + send(intake.port, data)
        wait_processed(desk)
    finally:
        intake.stop(grace=10)
    assert replies[0] == replies[1] and replies[0][0] == 250  # the same "queued as raw-N" twice
    with transaction(desk.factory) as s:
        assert [(r.duplicates, r.outcome) for r in s.scalars(select(RawMessage))] == [(1, "new-case")]
    assert len(desk.cases()) == 1


def test_spooled_data_over_the_limits_is_refused_and_the_session_goes_on(sqlite_desk: Desk) -> None:
    desk = sqlite_desk
    limit = desk.settings.smtp.max_message_size
    too_much = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" + (b"y" * 76 + b"\r\n") * (limit // 78 + 10)
    long_line = b"Subject: long\r\n\r\n" + (b"y" * 76 + b"\r\n") * 30_000 + b"z" * 5000 + b"\r\n"
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0", queue=True).start()
    try:
        replies = send(intake.port, too_much, long_line, build_mail(subject="Still here"))
        wait_processed(desk)
    finally:
        intake.stop(grace=10)
    assert [code for code, _ in replies] == [552, 500, 250]
    assert [c["subject"] for c in desk.cases()] == ["Still here"]


def test_a_bare_lf_dot_in_spooled_data_does_not_end_it(sqlite_desk: Desk) -> None:
    # SMTP smuggling (aiosmtpd 1.4.6): past the spool's memory, "\n.\r\n" is still message text.
    desk = sqlite_desk
    smuggled = b"\n.\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n"
    head = build_mail(subject="Smuggling check", message_id="<sm@initech.example>").rstrip(b"\r\n")
    body = head + b"\r\n" + (b"A" * 76 + b"\r\n") * 20_000 + b"tail" + smuggled + b"Subject: forged\r\n\r\nx\r\n"
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0", queue=True).start()
    try:
        with socket.create_connection(("127.0.0.1", intake.port), timeout=30) as sock:
            f = sock.makefile("rwb")
            f.readline()
            for command in (b"EHLO client.example", b"MAIL FROM:<peter@initech.example>",
                            b"RCPT TO:<support@example.com>", b"DATA"):
                f.write(command + b"\r\n")
                f.flush()
                while f.readline()[3:4] == b"-":  # a multi-line reply goes on
                    pass
            f.write(body + b".\r\nQUIT\r\n")
            f.flush()
            assert f.readline().startswith(b"250")
        wait_processed(desk)
    finally:
        intake.stop(grace=10)
    with transaction(desk.factory) as s:
        rows = s.scalars(select(RawMessage)).all()
        assert len(rows) == 1 and smuggled in rows[0].data
    assert [c["subject"] for c in desk.cases()] == ["Smuggling check"]


def test_a_large_message_the_scan_trips_on_is_read_whole_and_the_queue_goes_on(
        desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    # Review finding: an exception other than Unsplittable out of the scan stalled the queue for good
    # (attempts given back, the same row claimed again). Now the message is read whole instead.
    from helpers import mt

    from maild.ingest.queue import enqueue_batch, process_pending
    from maild.ingest.raw import RawMail

    calls: list[int] = []

    def broken(*args: object, **kwargs: object) -> tuple[bytes, bigmail.Whole]:
        calls.append(1)
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(bigmail, "split", broken)
    big = big_mail(payload(4_500_000))
    raws = [RawMail(data=data, source="smtp", mail_from="peter@initech.example", rcpt_tos=("support@example.com",),
                    received_at=mt(2026, 11, 20, 10, 5)) for data in (big, build_mail(subject="Behind it"))]
    enqueue_batch(desk.factory, raws)
    assert process_pending(desk.factory, desk.settings) == 2
    assert sorted(c["subject"] for c in desk.cases()) == ["Behind it", "Capture of the outage"]
    assert calls == [1]  # read whole once the scan failed, not scanned again from memory
    with transaction(desk.factory) as s:
        assert s.scalars(select(AttachmentRow.size)).all() == [4_500_000]


def test_maild_ingest_of_a_large_file_keeps_it_whole_and_holds_out_its_attachment(
        desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # IMAP and `maild ingest` have the bytes in memory already; the parse still holds the big part out.
    splits = spy_on_split(monkeypatch)
    attachment = payload(4_500_000)
    data = big_mail(attachment, mid="<big-file@initech.example>")
    path = tmp_path / "big.eml"
    path.write_bytes(data)
    code, out, _ = desk.cli("ingest", str(path))
    assert code == 0 and '"outcome": "new-case"' in out
    with transaction(desk.factory) as s:
        row = s.scalars(select(RawMessage)).one()
        assert row.data == data and row.sha256 == hashlib.sha256(data).hexdigest()
        att = s.scalars(select(AttachmentRow)).one()
        assert att.sha256 == hashlib.sha256(attachment).hexdigest() and s.get(Blob, att.sha256).data == attachment
        message = s.scalars(select(CaseMessage).where(CaseMessage.raw_id == row.id)).one()
        assert ".hidden line one" in message.text
    assert splits == [1]


def test_a_spool_that_cannot_be_written_is_a_452_after_the_data_and_the_session_goes_on(
        sqlite_desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk fills while a large message is spooled: the rest of its data is read and dropped (not
    # taken as commands), the client hears 452 (it retries later), and the next message is taken.
    desk = sqlite_desk
    real_write = spool.Spool.write

    def full(self: spool.Spool, data: bytes | bytearray | memoryview) -> None:
        if self.size > spool.MEMORY:
            raise OSError(28, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(spool.Spool, "write", full)
    big = big_mail(payload(3_000_000)).replace(b"\r\n\r\n", b"\r\n\r\nRCPT TO:<evil@attacker.example>\r\n", 2)
    intake = make_controller(desk.factory, desk.settings, listen="127.0.0.1:0", queue=True).start()
    try:
        replies = send(intake.port, big, build_mail(subject="After the full disk"))
        wait_processed(desk)
    finally:
        intake.stop(grace=10)
    assert [code for code, _ in replies] == [452, 250]
    assert [c["subject"] for c in desk.cases()] == ["After the full disk"]


@pytest.mark.parametrize("memory", [1 << 20, 10], ids=["in-memory", "in-a-file"])
def test_a_spool_gives_back_what_was_written(tmp_path: Path, memory: int) -> None:
    lines = [b"Subject: s\r\n", b"\r\n"] + [b"%05d line of the body\r\n" % n for n in range(2000)]
    box = spool.Spool(tmp_path / "spool", memory=memory)
    for line in lines:
        box.write(line)
    data = b"".join(lines)
    assert box.in_memory is (memory > len(data))
    assert (box.size, box.hash.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    assert box.getvalue() == data and b"".join(box.chunks(1000)) == data
    assert data.startswith(box.head()) and len(box.head()) == min(len(data), spool.HEAD)
    # an unnamed file (the directory made only when needed): nothing to clean up after a crash
    assert list((tmp_path / "spool").iterdir()) == [] if memory < len(data) else not (tmp_path / "spool").exists()
    box.close()
