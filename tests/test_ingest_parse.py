# SPDX-License-Identifier: MIT
"""Reading a message's bytes once: addresses, Message-IDs, damaged and hostile headers."""

from __future__ import annotations

from maild.ingest.parse import msgids, parse
from maild.ingest.raw import RawMail


def _parse(head: str, body: str = "hello\r\n") -> object:
    return parse(RawMail((head + "\r\n" + body).encode("utf-8", "surrogateescape")))


def test_encoded_display_name_cannot_inject_an_address() -> None:
    # RFC 2047 text is decoded only after the address is read: "=?utf-8?q?<evil@x>?=" stays a name.
    msg = parse(RawMail(b"From: =?utf-8?q?Boss_=3Cboss=40corp.example=3E=2C?= <mallory@evil.example>\r\n"
                        b"To: support@example.com\r\nSubject: x\r\n\r\nbody\r\n"))
    assert msg.from_addr == "mallory@evil.example" and msg.from_count == 1
    assert "boss@corp.example" in msg.from_name


def test_double_at_and_empty_local_part_are_not_addresses() -> None:
    # "a@b@c" must not be read as "@c" (older Pythons' lenient parser); the From is then unreadable.
    msg = parse(RawMail(b"From: a@b@c\r\nTo: ok@example.com, @x\r\nSubject: x\r\n\r\nbody\r\n"))
    assert msg.from_addr is None
    assert msg.to == ("ok@example.com",)


def test_bom_and_junk_before_the_headers_are_tolerated() -> None:
    # A UTF-8 BOM or a garbled first line do not make the headers disappear; the stored bytes are untouched.
    data = b"\xef\xbb\xbfFrom: a@example.com\r\nSubject: with BOM\r\nMessage-ID: <bom@x>\r\n\r\nbody\r\n"
    msg = parse(RawMail(data))
    assert (msg.from_addr, msg.subject, msg.message_id) == ("a@example.com", "with BOM", "bom@x")
    assert msg.raw.data == data
    junk = parse(RawMail(b"Fro :uMmlti junk\r\nTo: b@example.com\r\nSubject: kept\r\n\r\nbody\r\n"))
    assert (junk.to, junk.subject) == (("b@example.com",), "kept")


def test_undecodable_8bit_header_becomes_text_without_surrogates() -> None:
    # Raw Latin-1 bytes in a header (no encoded word) come out as text a database and JSON can hold.
    msg = parse(RawMail(b"From: a@example.com\r\nSubject: Gr\xfc\xdfe\r\n\r\nK\xe4se\r\n"))
    msg.subject.encode("utf-8")
    msg.text.encode("utf-8")
    assert msg.subject.startswith("Gr")


def test_message_ids_are_normalised_without_brackets() -> None:
    # Message-ID, In-Reply-To and References are compared without angle brackets, in order, deduplicated.
    assert msgids(" <a@x>  <b@y>\r\n <a@x>") == ("a@x", "b@y")
    assert msgids("bare@id") == ("bare@id",)
    assert msgids("") == ()
    msg = parse(RawMail(b"From: a@example.com\r\nIn-Reply-To: <p@x>\r\nReferences: <r1@x> <p@x>\r\n\r\nb\r\n"))
    assert msg.thread_ids == ("p@x", "r1@x")
    assert msg.message_id_generated and msg.message_id.endswith("@derived.maild.invalid")
