# SPDX-License-Identifier: MIT
"""Reading delivery status notifications (maild.ingest.bounces.read_dsn)."""

from __future__ import annotations

import pytest
from helpers import CORPUS, corpus

from maild.ingest.bounces import DsnInfo, read_dsn
from maild.ingest.parse import parse
from maild.ingest.raw import RawMail
from maild.threading.addresses import parse_reply_address, reply_address


def _read(relative: str) -> DsnInfo:
    path = CORPUS / relative
    if not path.exists():
        corpus(str(path.relative_to(CORPUS)))
    return read_dsn(parse(RawMail(data=path.read_bytes())))


@pytest.mark.parametrize(
    ("relative", "recipient", "message_id", "status"),
    [
        (
            "sisimai-set-of-emails/bsd/rfc3464-01.eml",
            "userunknown@bouncehammer.jp",
            "E1C50F1B-1C83-4820-BC36-AC6FBFBE8568@example.org",
            "5.1.1",
        ),
        (
            "sisimai-set-of-emails/bsd/lhost-postfix-48.eml",
            "neko-nyaan@ntt.example.net",
            "20160429233445.8FDCD7D68ECB@mail.example.com",
            "5.0.0",
        ),
        (
            "bounceparser/hotmail-via-sendmail.unknown.msg",
            "recipient@example.net",
            "200608282012.k7SKChA2006269@somehost.example.com",
            "5.1.1",
        ),
        (
            "bounceparser/spam-rejection.msg",
            "exampleuser@exampledomain.co.uk",
            "20091104221004.0EDE91658210@server4.example.co.uk",
            "5.7.1",
        ),
        (
            "bounceparser/message-too-large.msg",
            "john.smith@eu.a.b.c",
            "20100629141825.BC9AC16586D3@server4.example.co.uk",
            "5.2.3",
        ),
        (
            "request-tracker/emails/multipart-report",
            "jesmund@mailbox.other.example.com",
            "200308221615.h7MGFGac020135@mx12.other.example.com",
            "5.1.1",
        ),
        (
            "sisimai-set-of-emails/bsd/rhost-apple-01.eml",
            "kijitora@example.jp",
            "c15e793e1c6acf9fbc39d1547bbd98b4@example.com",
            "5.1.6",
        ),
    ],
)
def test_rfc3464_dsn_yields_recipient_message_id_and_status(
    relative: str, recipient: str, message_id: str, status: str
) -> None:
    # Standard DSNs: the per-recipient block and the returned message give all three.
    info = _read(relative)
    assert recipient in info.failed_recipients
    assert info.original_message_ids[0] == message_id
    assert info.status == status
    assert info.permanent is True


def test_dsn_with_several_failed_recipients() -> None:
    # Every failed recipient block is read, in order (IIS bounce with four recipients).
    info = _read("bounceparser/iis-multiple-bounce.msg")
    assert info.failed_recipients == tuple(f"bounced{i}@example.net" for i in range(1, 5))
    assert info.original_message_ids == ("CNISERVERTrpwACkWHZ00000098@smtp.example.com",)


def test_diagnostic_code_is_read_without_its_type() -> None:
    # Diagnostic-Code "smtp; 550 ..." becomes the server's reply text.
    info = _read("sisimai-set-of-emails/bsd/rfc3464-01.eml")
    assert info.diagnostic is not None and info.diagnostic.startswith("550 5.1.1 <userunknown@bouncehammer.jp>")


def test_delay_warning_is_not_permanent() -> None:
    # Sendmail's "could not send message for past 8 hours" is a delay, not a failure.
    info = _read("mikel-mail/multipart_report_emails/report_422.eml")
    assert info.permanent is False


@pytest.mark.parametrize(
    ("relative", "recipient", "message_id"),
    [
        ("sisimai-set-of-emails/bsd/lhost-qmail-01.eml", "kijitora@example.ne.jp", None),
        ("sisimai-set-of-emails/bsd/lhost-gmail-01.eml", None, "D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com"),
        ("sisimai-set-of-emails/bsd/lhost-exchange2003-01.eml", "kijitora@example.jp", None),
        ("sisimai-set-of-emails/bsd/lhost-opensmtpd-01.eml", "apdugoaidugoaidugoaeiudggadi@gmail.com", None),
        ("bounceparser/domino.unknown.msg", "recipient@example.net", None),
        ("bounceparser/exchange.unknown.msg", None, "200602150853.k1F8rvvX006268@somehost.example.com"),
    ],
)
def test_free_text_bounces_are_scanned(relative: str, recipient: str | None, message_id: str | None) -> None:
    # Non-RFC bounces: recipients from address lines, Message-IDs from the returned copy's text.
    info = _read(relative)
    if recipient is not None:
        assert recipient in info.failed_recipients
    if message_id is not None:
        assert message_id in info.original_message_ids


SECRET = b"bounce-test-secret-0123456789abc"


def test_reply_address_in_returned_headers_is_found() -> None:
    # Our reply address in the returned message's Reply-To lets the caller find the case.
    ours = reply_address("support@example.com", 4242, SECRET)
    data = (
        "From: MAILER-DAEMON@mx.customer.example\nTo: support@example.com\nSubject: failure notice\n"
        "Message-ID: <b1@mx.customer.example>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nSorry.\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.customer.example\n\n"
        "Final-Recipient: rfc822; Gone@Customer.example\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\n\n"
        "--b\nContent-Type: text/rfc822-headers\n\n"
        f"From: CSS <support@example.com>\nReply-To: {ours}\n"
        "Message-ID: <maild.ack.7.abcdefghijklmnop@mail.example.com>\nSubject: [Case #4242] x\n\n--b--\n"
    ).encode()
    info = read_dsn(parse(RawMail(data=data, mail_from="")))
    assert info == DsnInfo(
        original_message_ids=("maild.ack.7.abcdefghijklmnop@mail.example.com",),
        failed_recipients=("gone@customer.example",),
        status="5.1.1",
        diagnostic="550 5.1.1 no such user",
        permanent=True,
        reply_addresses=(ours,),
    )
    target = parse_reply_address(info.reply_addresses[0], ["support@example.com"], SECRET)
    assert target is not None and (target.case_number, target.token_valid) == (4242, True)


def test_non_bounce_reads_empty() -> None:
    # A plain mail yields no recipients, ids or status (the caller records "no match").
    data = b"From: a@b.example\nTo: support@example.com\nSubject: hi\n\nhello\n"
    info = read_dsn(parse(RawMail(data=data)))
    assert (info.failed_recipients, info.original_message_ids, info.status) == ((), (), None)
