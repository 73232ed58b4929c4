# SPDX-License-Identifier: MIT
"""``maild.ingest.bigmail``: a large message read as a skeleton plus held-out attachments must read
the same as the whole message. Checked over the whole real-mail corpus with every attachment held out,
whatever the chunking, and for each transfer encoding against the standard library's decoding."""

from __future__ import annotations

import hashlib
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import REPO

from maild.ingest import bigmail, limits
from maild.ingest.parse import Inbound, parse
from maild.ingest.raw import RawMail

CORPUS = REPO.parent / "shared" / "corpus"
# Messages the scan declines (the queue then reads them whole, as any small message is read). m4009's
# base64 "AAAAAA" lacks its padding: mail-parser keeps the text, which a piecewise decode cannot match.
UNSPLITTABLE = ["zbateson-mail-mime-parser/m4009.txt"]


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"the corpus is not at {CORPUS}")
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("SOURCES.md", "INDEX.tsv"))


def read_split(data: bytes, chunk: int, hold: int = 0) -> Inbound:
    skeleton, whole = bigmail.split([data[i:i + chunk] for i in range(0, len(data), chunk)], hold=hold)
    return parse(RawMail(data=skeleton, whole=whole, digests=(hashlib.sha256(data).hexdigest(), "")))


def reading(inbound: Inbound) -> tuple[object, ...]:
    # mail-parser names an unnamed message/rfc822 attachment at random: compare those by content only
    attachments = tuple(sorted(("" if a.content_type == "message/rfc822" else a.filename, a.content_type,
                                hashlib.sha256(a.read()).hexdigest()) for a in inbound.attachments))
    return (inbound.message_id, inbound.subject, inbound.from_addr, inbound.text, inbound.html, attachments)


def test_every_corpus_message_reads_the_same_with_its_attachments_held_out() -> None:
    differ, unsplittable, held = [], [], 0
    for path in corpus_files():
        data = path.read_bytes()
        try:
            whole = parse(RawMail(data=data))
        except Exception:
            continue  # not a mail at all: quarantined either way
        try:
            held += len(bigmail.split([data], hold=0)[1].held)
            split = read_split(data, 997)
        except bigmail.Unsplittable:
            unsplittable.append(str(path.relative_to(CORPUS)))  # the queue reads these whole
            continue
        if reading(split) != reading(whole):
            differ.append(str(path.relative_to(CORPUS)))
    assert held > 300  # the check is not vacuous: hundreds of real attachments were held out
    assert differ == []
    assert sorted(unsplittable) == UNSPLITTABLE


def test_chunking_does_not_change_the_reading() -> None:
    # a real Outlook mail (multipart/related in a multipart, trailing blanks, an inline image) and ours
    for data in ((CORPUS / "kix-backend" / "EmailParser" / "Win7SnippingTool.box").read_bytes(),
                 attached(bytes(range(256)) * 100, "base64")):
        readings = {reading(read_split(data, chunk)) for chunk in (1, 7, 76, 4096, len(data))}
        assert len(readings) == 1 and readings.pop()[-1]


def attached(content: bytes, cte: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@b.example", "support@example.com", "files"
    msg["Message-ID"] = "<files@b.example>"
    msg.set_content("see attached\n")
    msg.add_attachment(content, maintype="application", subtype="octet-stream", filename="f.bin", cte=cte)
    return msg.as_bytes(policy=policy.SMTP)


@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "7bit", "8bit"])
def test_a_held_part_decodes_as_the_standard_library_does(cte: str) -> None:
    text = b"line one = with =3D signs\r\n" + b"a long line " * 20 + b"\r\n.dot\r\nlast line"
    content = text if cte in ("7bit", "quoted-printable") else bytes(range(256)) * 300 if cte == "base64" else \
        "Grüße aus Köln\r\n".encode() * 300
    data = attached(content, cte)
    from email import message_from_bytes

    expected = [p.get_payload(decode=True) for p in message_from_bytes(data).walk() if p.get_filename()]
    skeleton, whole = bigmail.split([data], hold=16)
    assert [h.read() for h in whole.held] == expected
    assert [h.sha256 for h in whole.held] == [hashlib.sha256(e).hexdigest() for e in expected]
    assert b"f.bin" not in skeleton and b"see attached" in skeleton


def test_a_small_attachment_stays_in_the_skeleton() -> None:
    data = attached(b"tiny", "base64")
    skeleton, whole = bigmail.split([data])
    assert skeleton == data and whole.held == () and whole.size == len(data)


def test_a_header_block_too_long_to_follow_is_read_whole() -> None:
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + b"X-Junk: y\r\n" * 200_000
            + b"\r\nz\r\n--b--\r\n")
    with pytest.raises(bigmail.Unsplittable):
        bigmail.split([data])


def test_the_limits_see_the_whole_message_not_the_skeleton() -> None:
    data = attached(b"x" * 200_000, "base64")
    skeleton, whole = bigmail.split([data], hold=16)
    assert len(skeleton) < 1000 and whole.size == len(data)
    assert limits.check(skeleton, limits.Limits(max_size=len(data) - 1), whole) == \
        f"limit: message of {len(data)} bytes exceeds {len(data) - 1}"
    assert limits.check(skeleton, limits.Limits(max_parts=1), whole) == "limit: more than 1 MIME parts"
    assert limits.check(skeleton, limits.Limits(), whole) is None


def mime(*parts: bytes, boundary: bytes = b"b1", head: bytes = b"") -> bytes:
    top = (b"From: a@b.example\r\nTo: support@example.com\r\nSubject: shapes\r\nMessage-ID: <s@b.example>\r\n"
           + head + b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n")
    return top + b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"


TEXT = b"Content-Type: text/plain\r\n\r\nhello\r\n"
B64 = b"".join(b"QUJDRA==" if i == 99 else b"QUJD" * 19 + b"\r\n" for i in range(100))


def pdf(body: bytes = B64, extra: bytes = b"") -> bytes:
    return (b"Content-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n" + extra + b"\r\n" + body)


SHAPES = {
    # a forwarded message (mail-parser extracts it whole, its big PDF inside): nothing held below it
    "forwarded .eml": (mime(TEXT, b"Content-Type: message/rfc822\r\nContent-Disposition: attachment; "
                                  b"filename=fwd.eml\r\n\r\n" + mime(TEXT, pdf(), boundary=b"in")), 0),
    "attached multipart": (mime(TEXT, b"Content-Type: multipart/mixed; boundary=in\r\nContent-Disposition: "
                                      b"attachment; filename=bundle\r\n\r\n--in\r\n" + pdf() + b"\r\n--in--"), 0),
    "plain big attachment": (mime(TEXT, pdf()), 1),
    "nested multipart": (mime(b"Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\n" + TEXT
                              + b"\r\n--alt--", pdf()), 1),
    "no closing boundary": (mime(TEXT, pdf())[: -len(b"--b1--\r\n")], 1),
    "boundaries prefixes of each other": (mime(b"Content-Type: multipart/related; boundary=b1x\r\n\r\n--b1x\r\n"
                                               + pdf() + b"\r\n--b1x--", TEXT), 1),
    "LF line ends": (mime(TEXT, pdf()).replace(b"\r\n", b"\n"), 1),
    "delimiter padded past 1000 octets": (mime(TEXT, pdf() + b"\r\n--b1" + b" " * 1000 + b"\r\n" + TEXT), 1),
    "boundary with a colon, part ending in its headers": (
        mime(TEXT, b"Content-Type: text/plain", pdf(), boundary=b"x:y"), 1),
    "x-uuencode is left to mail-parser": (mime(TEXT, pdf().replace(b"base64", b"x-uuencode")), 0),
    "quoted-printable with soft breaks": (mime(TEXT, b"Content-Type: application/octet-stream; name=q.bin\r\n"
                                               b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                                               + b"a=3Db=\r\nc==\r\n=\r\nd \r\n" * 200), 1),
}


@pytest.mark.parametrize("name", SHAPES)
def test_mime_shapes_read_the_same_held_out_or_whole(name: str) -> None:
    data, expected_held = SHAPES[name]
    whole = bigmail.split([data], hold=64)[1]
    assert len(whole.held) == expected_held
    assert reading(read_split(data, 13, hold=64)) == reading(parse(RawMail(data=data)))


@pytest.mark.parametrize("name, data", [
    ("padding inside the data", mime(TEXT, pdf(B64.replace(b"QUJDQUJD", b"QUJ=QUJD", 1)))),
    ("data after the padding", mime(TEXT, pdf(B64 + b"QUJD\r\n"))),
    ("a lone CR", mime(TEXT, pdf(B64 + b"\r--b1\r" + TEXT))),
    ("a boundary that is not text", mime(TEXT, pdf()).replace(b'boundary="b1"', b"boundary*=unicode_escape''%5Cud800")),
])
def test_what_the_scan_cannot_read_as_the_parser_does_is_declined(name: str, data: bytes) -> None:
    with pytest.raises(bigmail.Unsplittable):
        bigmail.split([data], hold=64)


def test_the_limits_read_a_large_message_line_by_line_with_the_same_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Over 1 MiB the limits walk the lines one at a time instead of splitting them all at once.
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=d%d\r\n\r\n--d%d\r\n" % (i, i) for i in range(30))
    data = b"Subject: x\r\n" + deep + TEXT + b"y" * 2_000_000 + b"\r\n" + pdf()
    tight = limits.Limits(max_depth=20, max_line=1_999_999)
    assert len(data) > limits._SPLIT_AT_ONCE
    one_by_one = (limits.check(data, tight), limits.mime_shape(data, 100, 1000))
    monkeypatch.setattr(limits, "_SPLIT_AT_ONCE", len(data))
    assert one_by_one == (limits.check(data, tight), limits.mime_shape(data, 100, 1000))
    assert one_by_one[0] == "limit: a line of 2000001 octets exceeds 1999999"
    assert one_by_one[1][0] == 30
