# SPDX-License-Identifier: MIT
"""Screens for bounces, auto-replies, bulk/list mail, own mail and loops (maild.ingest.screen)."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
from helpers import CORPUS, corpus

from maild.ingest.parse import Inbound, parse
from maild.ingest.raw import RawMail
from maild.ingest.screen import SCREENS, ScreenContext, Skip, no_ack_reason, screen
from maild.threading.addresses import message_id_for

SECRET = b"screen-test-secret-0123456789abc"
CTX = ScreenContext(
    own_addresses=frozenset({"support@example.com", "macd@example.com"}),
    own_domains=frozenset({"mail.example.com"}),
    loop_token="loop-7f3a",
    secret=SECRET,
)


def mail(
    headers: str = "",
    *,
    sender: str = "Jane Roe <jane@customer.example>",
    subject: str = "Phone offline",
    body: str = "Our phone in room 4 is offline.\n",
    mail_from: str | None = "jane@customer.example",
    content_type: str = "text/plain; charset=utf-8",
) -> Inbound:
    data = (
        f"From: {sender}\nTo: support@example.com\nSubject: {subject}\n"
        f"Message-ID: <abc123@customer.example>\nDate: Mon, 08 Jan 2024 10:00:00 +0000\n"
        f"MIME-Version: 1.0\nContent-Type: {content_type}\n{headers}\n{body}"
    )
    return parse(RawMail(data=data.encode("utf-8"), mail_from=mail_from))


def test_ordinary_customer_mail_passes_every_screen() -> None:
    # A plain customer request is not screened and gets an acknowledgement.
    inbound = mail()
    assert screen(inbound, CTX) is None
    assert no_ack_reason(inbound) is None


def test_screens_run_in_documented_order() -> None:
    # Loop/own-mail first, then bounce, auto-reply, bulk.
    names = [s.__name__ for s in SCREENS]
    assert names == ["own_mail", "loop_header", "too_many_hops", "bounce", "auto_reply", "bulk"]


# --- own mail and loops (L4, L5) ---------------------------------------------------------------


def test_from_own_address_is_a_loop() -> None:
    # Mail From one of our addresses (case-insensitive) never becomes a case.
    assert screen(mail(sender="CSS <Support@Example.com>"), CTX) == Skip("loop", "own address")


def test_own_loop_header_with_token_is_a_loop_but_forged_value_is_not() -> None:
    # Our loop header counts only with our token (S7: forged X-Maild-* means nothing).
    assert screen(mail("X-Maild-Loop: loop-7f3a\n"), CTX) == Skip("loop", "loop: X-Maild-Loop")
    assert screen(mail("X-Maild-Loop: guessed\n"), CTX) is None


def test_own_message_id_is_a_loop() -> None:
    # Our own ack coming back (a forwarder) is recognised by its HMAC-stamped Message-ID.
    mid = message_id_for("ack", "42", "mail.example.com", SECRET)
    raw = mail().raw.data.replace(b"<abc123@customer.example>", f"<{mid}>".encode())
    inbound = parse(RawMail(data=raw, mail_from="fwd@customer.example"))
    assert screen(inbound, CTX) == Skip("loop", "loop: own Message-ID")
    forged = raw.replace(mid.encode(), b"maild.ack.42.aaaaaaaaaaaaaaaa@mail.example.com")
    assert screen(parse(RawMail(data=forged)), CTX) is None


@pytest.mark.parametrize(("hops", "looped"), [(49, False), (50, False), (51, True), (101, True)])
def test_received_header_threshold(hops: int, looped: bool) -> None:
    # L5: up to 50 Received headers is fine, more is a loop.
    received = "".join(f"Received: from hop{i}.example by hop{i + 1}.example; Mon, 8 Jan 2024\n" for i in range(hops))
    result = screen(mail(received), CTX)
    assert result == (Skip("loop", f"loop: {hops} Received headers") if looped else None)


# --- bounces (L2) ------------------------------------------------------------------------------

DSN_BODY = """--b1
Content-Type: text/plain

Your message could not be delivered.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.example

Final-Recipient: rfc822; gone@customer.example
Action: failed
Status: 5.1.1

--b1--
"""


def test_multipart_report_dsn_is_a_bounce() -> None:
    # RFC 3464 DSN: multipart/report; report-type=delivery-status.
    inbound = mail(
        sender="Mail Delivery System <MAILER-DAEMON@mx.customer.example>",
        subject="Undelivered Mail Returned to Sender",
        content_type='multipart/report; report-type=delivery-status; boundary="b1"',
        body=DSN_BODY,
        mail_from="",
    )
    assert screen(inbound, CTX) == Skip("bounce", "bounce: multipart/report")


def test_feedback_report_and_read_receipt_are_ignored() -> None:
    # ARF (RFC 5965) and MDN (RFC 8098) reports are not bounces of ours: kind "ignored".
    arf = mail(content_type='multipart/report; report-type=feedback-report; boundary="b1"', body="--b1--\n")
    mdn = mail(content_type='multipart/report; report-type=disposition-notification; boundary="b1"', body="--b1--\n")
    assert screen(arf, CTX) == Skip("ignored", "feedback report: multipart/report; report-type=feedback-report")
    result = screen(mdn, CTX)
    assert result is not None and result.kind == "ignored" and "disposition-notification" in result.reason


def test_empty_return_path_is_a_bounce() -> None:
    # MAIL FROM:<> (envelope) or Return-Path: <> (header) mark a notification.
    assert screen(mail(mail_from=""), CTX) == Skip("bounce", "bounce: empty return path")
    assert screen(mail("Return-Path: <>\n", mail_from=None), CTX) == Skip("bounce", "bounce: empty return path")


def test_empty_return_path_auto_reply_is_named_as_auto_reply() -> None:
    # RFC 3834 §3.3 auto-replies also use <>; they are reported as auto-replies, not bounces.
    inbound = mail("Auto-Submitted: auto-replied\n", subject="Away", mail_from="")
    assert screen(inbound, CTX) == Skip("ignored", "auto-reply: Auto-Submitted: auto-replied")


def test_mailer_daemon_sender_is_a_bounce() -> None:
    # From MAILER-DAEMON@ is a bounce whatever the subject says.
    inbound = mail(sender="MAILER-DAEMON@mx.customer.example", subject="failure notice")
    assert screen(inbound, CTX) == Skip("bounce", "bounce: From mailer-daemon@mx.customer.example")


@pytest.mark.parametrize(
    "subject",
    [
        "Undeliverable: Phone offline",
        "Undelivered Mail Returned to Sender",
        "Delivery Status Notification (Failure)",
        "Returned mail: see transcript for details",
        "Mail delivery failed: returning message to sender",
        "DELIVERY FAILURE: User x not listed",
        "Message status - undeliverable",
        "failure notice",
    ],
)
def test_bounce_subject_with_system_sender_is_a_bounce(subject: str) -> None:
    # Non-RFC bounces: the subject plus a system sender (postmaster) is enough.
    inbound = mail(sender="System Administrator <postmaster@customer.example>", subject=subject)
    result = screen(inbound, CTX)
    assert result is not None and result.kind == "bounce"


def test_customer_writing_undeliverable_is_not_a_bounce() -> None:
    # A person's subject mentioning delivery failures, or forwarding a bounce, is a request.
    assert screen(mail(subject="Undeliverable voicemails since Monday"), CTX) is None
    assert screen(mail(subject="Fwd: Undeliverable: Phone offline"), CTX) is None
    assert screen(mail(subject="Returned mail problem on our side"), CTX) is None


def test_bounce_subject_with_attached_message_is_a_bounce() -> None:
    # A bounce subject plus a returned message/rfc822 part is a non-RFC bounce (Exchange 2003 style).
    body = (
        "--b2\nContent-Type: text/plain\n\nDid not reach the following recipient(s)\n\n"
        "--b2\nContent-Type: message/rfc822\n\nFrom: a@b.example\nSubject: x\n\nhello\n--b2--\n"
    )
    inbound = mail(subject="Undeliverable: x", content_type='multipart/mixed; boundary="b2"', body=body)
    result = screen(inbound, CTX)
    assert result is not None and result.kind == "bounce"


# --- auto-replies (L1, RFC 3834) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Auto-Submitted: auto-replied", "auto-reply: Auto-Submitted: auto-replied"),
        ("Auto-Submitted: auto-generated", "auto-reply: Auto-Submitted: auto-generated"),
        ("Auto-Submitted: auto-notified", "auto-reply: Auto-Submitted: auto-notified"),
        ("Auto-Submitted: auto-generated (failure)", "auto-reply: Auto-Submitted: auto-generated (failure)"),
        ("X-Autoreply: yes", "auto-reply: x-autoreply"),
        ("X-Autorespond: Phone offline", "auto-reply: x-autorespond"),
        ("Precedence: auto_reply", "auto-reply: Precedence: auto_reply"),
    ],
)
def test_auto_reply_headers_are_ignored(header: str, reason: str) -> None:
    # Each RFC 3834 / de-facto auto-reply header screens the message.
    assert screen(mail(header + "\n"), CTX) == Skip("ignored", reason)


def test_auto_submitted_no_is_a_person() -> None:
    # RFC 3834 §5: "Auto-Submitted: no" means a person sent it.
    assert screen(mail("Auto-Submitted: no\n"), CTX) is None
    assert screen(mail("X-Autoreply: no\n"), CTX) is None


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: Phone offline",
        "Out of Office AutoReply: Phone offline",
        "Automatic reply: Phone offline",
        "Auto reply: Phone offline",
        "Autoreply: Phone offline",
        "Abwesenheitsnotiz: Telefon",
        "Automatische Antwort: Telefon",
        "Réponse automatique : Téléphone",
        "Resposta automática: Telefone",
        "Ausência temporária: Telefone",
        "Automatyczna odpowiedź: Telefon",
        "[Automatyczna odpowiedź] test",
        "Afwezigheidsassistent: Telefoon",
        "Automatisch antwoord: Telefoon",
        "Re: Phone offline (Automatic Response)",
        "Out of office",
    ],
)
def test_out_of_office_subjects_are_ignored(subject: str) -> None:
    # Vacation replies in en/de/fr/pt/pl/nl are recognised by subject alone.
    result = screen(mail(subject=subject), CTX)
    assert result is not None and result.kind == "ignored" and result.reason.startswith("auto-reply: subject")


@pytest.mark.parametrize(
    "subject",
    ["Out of office greeting not playing", "Automatic replies stopped working in Teams", "Re: autoreply setup"],
)
def test_subjects_about_out_of_office_features_are_requests(subject: str) -> None:
    # A UC customer asking about their out-of-office feature is not an auto-reply.
    assert screen(mail(subject=subject), CTX) is None


def test_x_auto_response_suppress_only_suppresses_the_ack() -> None:
    # Outlook's X-Auto-Response-Suppress asks for no auto-reply: the mail is a case, the ack is skipped.
    inbound = mail("X-Auto-Response-Suppress: All\n")
    assert screen(inbound, CTX) is None
    assert no_ack_reason(inbound) == "X-Auto-Response-Suppress: all"
    assert no_ack_reason(mail("X-Auto-Response-Suppress: OOF, AutoReply\n")) is not None
    assert no_ack_reason(mail("X-Auto-Response-Suppress: DR, RN, NRN\n")) is None


# --- bulk and lists ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Precedence: bulk", "bulk: Precedence: bulk"),
        ("Precedence: list", "bulk: Precedence: list"),
        ("Precedence: junk", "bulk: Precedence: junk"),
        ("List-Id: Users <users.lists.example>", "list: List-Id"),
        ("Mailing-List: contact users-help@lists.example; run by ezmlm", "list: Mailing-List"),
    ],
)
def test_bulk_and_list_mail_is_ignored(header: str, reason: str) -> None:
    # Precedence bulk/list/junk and list headers screen the message.
    assert screen(mail(header + "\n"), CTX) == Skip("ignored", reason)


def test_list_unsubscribe_alone_only_suppresses_the_ack() -> None:
    # List-Unsubscribe appears on mail people send through CRMs: a case, but no ack.
    inbound = mail("List-Unsubscribe: <mailto:unsub@customer.example>\n")
    assert screen(inbound, CTX) is None
    assert no_ack_reason(inbound) == "List-Unsubscribe"


# --- the real-world corpus --------------------------------------------------------------------

_IGNORED_FLAGS = {"auto_reply", "auto_submitted", "precedence_bulk", "list_mail", "arf", "mdn"}


def test_corpus_screens(capsys: pytest.CaptureFixture[str]) -> None:
    # Every corpus bounce screens as a bounce, every auto-reply/auto-submitted one as ignored or bounce.
    index = CORPUS / "INDEX.tsv"
    if not index.exists():
        corpus()
    counts: Counter[str] = Counter()
    wrong: list[str] = []
    with index.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if "#" in row["id"]:  # messages inside mbox files: the file rows cover them
                counts["skipped-mbox-row"] += 1
                continue
            flags = set(row["flags"].split(","))
            try:
                inbound = parse(RawMail(data=(CORPUS / row["id"]).read_bytes()))
            except Exception:  # parse failures are the quarantine's business (RELIABILITY D5)
                counts["unparseable"] += 1
                continue
            result = screen(inbound, CTX)
            got = result.kind if result else "case"
            counts[got] += 1
            if "bounce" in flags and got != "bounce":
                wrong.append(f"{row['id']}: bounce screened as {got}")
            elif flags & {"auto_reply", "auto_submitted"} and got not in ("ignored", "bounce"):
                wrong.append(f"{row['id']}: auto-reply screened as {got}")
            elif flags & _IGNORED_FLAGS and got == "case":
                wrong.append(f"{row['id']}: {sorted(flags & _IGNORED_FLAGS)} screened as a case")
    print(f"corpus screen outcomes: {dict(sorted(counts.items()))}")
    assert wrong == []
    # Exact counts so that a change in any rule shows up here (and in the report above).
    assert counts == Counter(
        {"case": 229, "bounce": 62, "ignored": 22, "skipped-mbox-row": 2}
    ), capsys.readouterr().out
