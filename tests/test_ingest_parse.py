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


def _mime(body: bytes, ctype: str = "text/plain; charset=utf-8", extra: bytes = b"") -> RawMail:
    return RawMail(b"From: a@example.com\r\nTo: support@example.com\r\nSubject: x\r\nMessage-ID: <m@x>\r\n"
                   b"MIME-Version: 1.0\r\nContent-Type: " + ctype.encode() + b"\r\n" + extra + b"\r\n" + body)


def test_encoded_subject_and_folded_references_are_read() -> None:
    # RFC 2047 subject decoded (adjacent words joined); a References header folded over lines keeps every id.
    msg = parse(RawMail(b"From: a@example.com\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\n =?utf-8?q?_aus_K=C3=B6ln?=\r\n"
                        b"References: <r1@x.example>\r\n\t<r2@x.example>\r\n <r3@x.example>\r\n"
                        b"In-Reply-To:\r\n <r3@x.example>\r\n\r\nbody\r\n"))
    assert msg.subject == "Grüße aus Köln"
    assert msg.references == ("r1@x.example", "r2@x.example", "r3@x.example")
    assert msg.in_reply_to == ("r3@x.example",)


def test_windows_1252_body_is_decoded() -> None:
    # A quoted-printable windows-1252 body (0x80 is the euro sign there, a control character in latin-1).
    msg = parse(_mime(b"Preis: 5 =80, Gr=FC=DFe\r\n", "text/plain; charset=windows-1252",
                      b"Content-Transfer-Encoding: quoted-printable\r\n"))
    assert msg.text == "Preis: 5 €, Grüße\r\n"
    assert msg.content_type == "text/plain"


def test_attachment_bytes_survive_every_transfer_encoding() -> None:
    # Binary attachments come back byte for byte, whether sent as base64 or quoted-printable.
    from email.message import EmailMessage

    payload = bytes(range(256)) * 300  # crosses the parser's feed chunks
    mail = EmailMessage()
    mail["From"], mail["Subject"] = "a@example.com", "files"
    mail.set_content("see attached\n")
    mail.add_attachment(payload, maintype="application", subtype="octet-stream", filename="a.bin")
    mail.add_attachment(payload[:1000], maintype="application", subtype="octet-stream", filename="../b.bin",
                        cte="quoted-printable")
    msg = parse(RawMail(mail.as_bytes()))
    assert [(a.filename, a.content_type, a.data) for a in msg.attachments] == [
        ("a.bin", "application/octet-stream", payload), ("b.bin", "application/octet-stream", payload[:1000])]
    assert msg.text == "see attached\n"


def test_line_ends_split_across_feed_chunks_are_kept() -> None:
    # The bytes are fed to the parser in pieces; a CRLF cut in two must not become two line ends.
    head = b"From: a@example.com\r\nSubject: long\r\n\r\n"
    line = b"x" * 98 + b"\r\n"
    body = line * (70_000 // len(line))
    split = 65_536 - len(head)
    body = body[:split - 1] + b"\r\n" + body[split + 1:]  # a CRLF straddles the 64 KiB boundary
    msg = parse(RawMail(head + body))
    assert msg.text == body.decode()


def test_unquoted_boundary_with_equals_sign_is_read_as_sent() -> None:
    # Outlook Express wrote boundary=----=_NextPart... unquoted (not an RFC 2045 token); the parts are found.
    raw = _mime(b"--=_B=1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--=_B=1\r\nContent-Type: text/html\r\n\r\n"
                b"<p>hi</p>\r\n--=_B=1--\r\n", "multipart/alternative; boundary==_B=1")
    msg = parse(raw)
    assert (msg.text, msg.html, msg.content_type) == ("hello", "<p>hi</p>", "multipart/alternative")


def test_empty_or_headerless_bytes_are_parse_errors() -> None:
    # Only whitespace, or no header section at all, is not a mail.
    import pytest

    from maild.ingest.parse import ParseError

    for data in (b"", b" \r\n\t\x0b\x0c\r\n", b"\r\n\r\njust a body\r\n"):
        with pytest.raises(ParseError):
            parse(RawMail(data))


def test_a_folded_attachment_content_type_arrives_as_one_clean_line() -> None:
    # A part header folded across lines: the attachment's type keeps no CR/LF (it may be re-sent by staff).
    data = (b"From: a@b.example\r\nTo: support@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
            b"--b1\r\nContent-Type: application/x\r\n evil\r\nContent-Disposition: attachment; filename=a.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b1--\r\n")
    (att,) = parse(RawMail(data)).attachments
    assert "\r" not in att.content_type and "\n" not in att.content_type
    assert att.content_type.startswith("application/x") and att.data == b"hello"
