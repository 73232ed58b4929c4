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
# Where the two readings differ on purpose. m4009's base64 "AAAAAA" lacks its padding: mail-parser
# gives up and keeps the text, the held-out reading decodes what is there, as mail clients do.
KNOWN = {"zbateson-mail-mime-parser/m4009.txt"}


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
    differ, held = [], 0
    for path in corpus_files():
        data = path.read_bytes()
        try:
            whole = parse(RawMail(data=data))
        except Exception:
            continue  # not a mail at all: quarantined either way
        held += len(bigmail.split([data], hold=0)[1].held)
        if reading(read_split(data, 997)) != reading(whole):
            differ.append(str(path.relative_to(CORPUS)))
    assert held > 300  # the check is not vacuous: hundreds of real attachments were held out
    assert set(differ) == KNOWN


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
