# SPDX-License-Identifier: MIT
"""Subject prefixes, the case tag, and outbound subjects (maild.threading.subject)."""

from __future__ import annotations

import pytest

from maild.threading.subject import (
    CASE_TAG_RE,
    find_case_tag,
    format_tag,
    normalized_subject,
    reply_subject,
    strip_prefixes,
    tag_subject,
)

# (subject as a client wrote it, subject without prefixes); client/language in the comment.
PREFIXED = [
    ("Re: Phone offline", "Phone offline"),  # Gmail, Thunderbird (en)
    ("RE: Phone offline", "Phone offline"),  # Outlook (en)
    ("FW: Phone offline", "Phone offline"),  # Outlook forward (en)
    ("Fwd: Phone offline", "Phone offline"),  # Gmail, Apple Mail forward
    ("Fw: Phone offline", "Phone offline"),  # Outlook.com forward
    ("Re: Re: Re: Phone offline", "Phone offline"),  # long thread, repeated prefixes
    ("Re[2]: Phone offline", "Phone offline"),  # The Bat!, counted reply
    ("Re(3): Phone offline", "Phone offline"),  # counted reply, parentheses
    ("Re^2: Phone offline", "Phone offline"),  # old Eudora counter
    ("AW: Telefon gestört", "Telefon gestört"),  # Outlook (de)
    ("WG: Telefon gestört", "Telefon gestört"),  # Outlook forward (de)
    ("AW: WG: AW: Telefon gestört", "Telefon gestört"),  # mixed de thread
    ("Antwort: Telefon gestört", "Telefon gestört"),  # Lotus Notes (de)
    ("Re : Téléphone en panne", "Téléphone en panne"),  # Outlook (fr), space before colon
    ("TR: Téléphone en panne", "Téléphone en panne"),  # Outlook forward (fr)
    ("Réf. : Téléphone en panne", "Téléphone en panne"),  # Lotus Notes (fr)
    ("RE : TR : Téléphone en panne", "Téléphone en panne"),  # mixed fr
    ("Antw: Telefoon storing", "Telefoon storing"),  # Outlook (nl)
    ("Doorst: Telefoon storing", "Telefoon storing"),  # Outlook forward (nl)
    ("Wtr: Telefoon storing", "Telefoon storing"),  # Outlook forward (nl, older)
    ("SV: Telefonen fungerar inte", "Telefonen fungerar inte"),  # Outlook (sv/no/da)
    ("VS: Telefonen virker ikke", "Telefonen virker ikke"),  # Outlook forward (no/da)
    ("VB: Telefonen fungerar inte", "Telefonen fungerar inte"),  # Outlook forward (sv)
    ("Fs: Telefonen virker ikke", "Telefonen virker ikke"),  # forward (no)
    ("VL: Puhelin ei toimi", "Puhelin ei toimi"),  # Outlook forward (fi)
    ("VS: Puhelin ei toimi", "Puhelin ei toimi"),  # Outlook reply (fi)
    ("RES: Telefone sem linha", "Telefone sem linha"),  # Outlook (pt-BR)
    ("ENC: Telefone sem linha", "Telefone sem linha"),  # Outlook forward (pt-BR)
    ("Enc: Re: Telefone sem linha", "Telefone sem linha"),  # mixed pt
    ("RV: Teléfono sin línea", "Teléfono sin línea"),  # Outlook forward (es)
    ("R: Telefono guasto", "Telefono guasto"),  # Outlook (it)
    ("I: Telefono guasto", "Telefono guasto"),  # Outlook forward (it)
    ("RIF: Telefono guasto", "Telefono guasto"),  # Lotus Notes (it)
    ("Odp: Telefon nie działa", "Telefon nie działa"),  # Outlook (pl)
    ("PD: Telefon nie działa", "Telefon nie działa"),  # Outlook forward (pl)
    ("回复：电话无法使用", "电话无法使用"),  # Outlook (zh), full-width colon
    ("Re：電話", "電話"),  # Japanese clients, full-width colon
    ("ΑΠ: Τηλέφωνο", "Τηλέφωνο"),  # Outlook (el)
    ("[EXTERNAL] RE: Phone offline", "Phone offline"),  # gateway banner before the prefix
    ("RE: [EXTERNAL] RE: Phone offline", "Phone offline"),  # banner between prefixes
    ("[Ext] Re: Phone offline", "Phone offline"),  # short banner
    ("*EXTERNAL* Re: Phone offline", "Phone offline"),  # starred banner
    ("re:re:Phone offline", "Phone offline"),  # no spaces at all
    ("  Re:   Phone   offline  ", "Phone offline"),  # folded header whitespace
]


@pytest.mark.parametrize(("subject", "expected"), PREFIXED)
def test_strip_prefixes_removes_real_client_prefixes(subject: str, expected: str) -> None:
    # Every prefix shape real clients produce is removed, leaving the original subject.
    assert strip_prefixes(subject) == expected


@pytest.mark.parametrize(
    "subject",
    [
        "Reboot needed",
        "Trouble with trunk",
        "Antwerp office down",
        "Swedish office",
        "Fwdport issue",
        "Research: call quality",
        "Ireland: no dial tone",
        "Enclosure replaced",
        "Trunk: SIP 503",
        "Odpowiedź w sprawie",
        "Re-provisioning request",
        "RES-ID 5 not reachable",
    ],
)
def test_strip_prefixes_keeps_words_that_merely_start_like_prefixes(subject: str) -> None:
    # A word that begins with prefix letters but is not a prefix stays.
    assert strip_prefixes(subject) == subject


def test_strip_prefixes_leaves_tag_and_later_prefixes_alone() -> None:
    # Only the leading run goes; the tag and what follows it stay.
    assert strip_prefixes("Re: [Case #5] Re: Printer") == "[Case #5] Re: Printer"


@pytest.mark.parametrize(
    ("subject", "number"),
    [
        ("[Case #12345] Phone offline", 12345),
        ("RE: AW: [Case #12345] Phone offline", 12345),
        ("Re: [case #7] lower case", 7),
        ("Re: [Case#7] no space", 7),
        ("Re: [ Case # 7 ] spaced", 7),
        ("AW: [Fall #42] Telefon", 42),
        ("RES: [Caso #43] Telefone", 43),
        ("Phone offline [Case #99]", 99),
        ("[EXTERNAL] RE: [Case #8] x", 8),
        ("Re: [Case #5] Printer, see also [Case #7]", 5),
    ],
)
def test_find_case_tag_finds_first_tag_in_tolerant_forms(subject: str, number: int) -> None:
    # The tag is found under prefixes, in tolerant and translated forms; the first one wins.
    assert find_case_tag(subject) == number


@pytest.mark.parametrize(
    "subject",
    ["Case 12345 phone", "Case #12345 without brackets", "[Case #] empty", "[Case #abc]", "[Ticket #5] other",
     "[Case #١٢] arabic digits", ""],
)
def test_find_case_tag_ignores_non_tags(subject: str) -> None:
    # Text that only resembles a tag threads nothing.
    assert find_case_tag(subject) is None


def test_format_tag_and_regex_agree() -> None:
    # What maild writes is what it reads back.
    tag = format_tag(12345)
    assert tag == "[Case #12345]"
    match = CASE_TAG_RE.search(tag)
    assert match is not None and match.group(1) == "12345"
    with pytest.raises(ValueError):
        format_tag(0)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer", "[Case #5] Printer"),
        ("Re: [Case #5] Printer", "[Case #5] Printer"),
        ("RE: AW: [Case #5] Re: Printer", "[Case #5] Printer"),
        ("[Case #5] [Case #5] Printer", "[Case #5] Printer"),
        ("Fwd: [Case #3] Printer", "[Case #5] Printer"),
        ("", "[Case #5]"),
        ("Re:", "[Case #5]"),
        ("Printer\r\nBcc: victim@example.org", "[Case #5] Printer Bcc: victim@example.org"),
    ],
)
def test_tag_subject_puts_tag_exactly_once_without_prefixes(subject: str, expected: str) -> None:
    # Outbound subjects carry our tag once, no customer prefix, no old tag, no CR/LF.
    assert tag_subject(subject, 5) == expected


def test_tag_subject_is_idempotent_and_reply_adds_one_re() -> None:
    # Tagging a tagged subject changes nothing; a reply gets exactly one "Re: ".
    once = tag_subject("AW: Telefon gestört", 77)
    assert tag_subject(once, 77) == once == "[Case #77] Telefon gestört"
    assert reply_subject("Re: Re: [Case #77] Telefon gestört", 77) == "Re: [Case #77] Telefon gestört"


def test_normalized_subject_compares_like_with_like() -> None:
    # Different prefixes, tags, spacing and case give the same comparison key.
    assert normalized_subject("RE: [Case #5]  Phone   OFFLINE") == "phone offline"
    assert normalized_subject("AW: WG: phone offline") == normalized_subject("Phone Offline")
    assert normalized_subject("Straße") == normalized_subject("STRASSE")
