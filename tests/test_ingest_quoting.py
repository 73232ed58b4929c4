# SPDX-License-Identifier: MIT
"""Splitting reply bodies into new text, quoted history and signature (maild.ingest.quoting)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild.ingest.quoting import split

GMAIL_EN = """Thanks, that fixed it.

On Mon, Jan 8, 2024 at 10:02 AM Support Desk <support@example.com> wrote:

> Please restart the phone.
>
> Regards, CSS
"""

GMAIL_EN_WRAPPED = """Still broken after the restart.

On Mon, Jan 8, 2024 at 10:02 AM Customer Services Support Desk <support@example.com>
wrote:

> Please restart the phone.
"""

OUTLOOK_EN = """Hi,

the phone in room 4 is still offline.

Regards
Jane

From: Support <support@example.com>
Sent: Monday, January 8, 2024 10:02 AM
To: Jane Roe <jane@customer.example>
Subject: [Case #5] Phone offline

Please restart the phone.
"""

OUTLOOK_OLD_EN = """Works now, thanks.

-----Original Message-----
From: Support [mailto:support@example.com]
Sent: Monday, January 08, 2024 10:02
To: Jane Roe
Subject: RE: [Case #5] Phone offline

Please restart the phone.
"""

OUTLOOK_DE = """Hallo,

das Problem besteht weiterhin.

Mit freundlichen Grüßen
Hans Meier

Von: Support <support@example.com>
Gesendet: Montag, 8. Januar 2024 10:02
An: Hans Meier <hans@kunde.example>
Betreff: [Case #5] Telefon gestört

Bitte starten Sie das Telefon neu.
"""

OUTLOOK_DE_OLD = """Geht wieder.

-----Ursprüngliche Nachricht-----
Von: Support
Gesendet: Montag, 8. Januar 2024 10:02
An: Hans Meier
Betreff: AW: [Case #5] Telefon gestört

Bitte neu starten.
"""

THUNDERBIRD_DE = """Danke, erledigt.

Am 08.01.2024 um 10:02 schrieb Support:
> Bitte starten Sie das Telefon neu.
"""

THUNDERBIRD_BARE = """Still offline.

Support Desk wrote:
> Please restart the phone.
"""

APPLE_PT = """Olá,

O problema continua.

Enviado do meu iPhone

Em 8 de jan. de 2024, à(s) 10:02, Suporte <support@example.com> escreveu:

> Por favor reinicie o telefone.
"""

GMAIL_PT = """Obrigado, resolvido.

Em seg., 8 de jan. de 2024 às 10:02, Suporte <support@example.com>
escreveu:

> Por favor reinicie o telefone.
"""

OUTLOOK_PT = """Bom dia,

o telefone continua sem linha.

De: Suporte <support@example.com>
Enviado: segunda-feira, 8 de janeiro de 2024 10:02
Para: João Silva <joao@cliente.example>
Assunto: RES: [Case #5] Telefone sem linha

Reinicie o telefone.
"""


@pytest.mark.parametrize(
    ("body", "new", "quoted_starts"),
    [
        (GMAIL_EN, "Thanks, that fixed it.", "On Mon, Jan 8, 2024"),
        (GMAIL_EN_WRAPPED, "Still broken after the restart.", "On Mon, Jan 8, 2024"),
        (OUTLOOK_EN, "Hi,\n\nthe phone in room 4 is still offline.\n\nRegards\nJane", "From: Support"),
        (OUTLOOK_OLD_EN, "Works now, thanks.", "-----Original Message-----"),
        (OUTLOOK_DE, "Hallo,\n\ndas Problem besteht weiterhin.\n\nMit freundlichen Grüßen\nHans Meier", "Von: "),
        (OUTLOOK_DE_OLD, "Geht wieder.", "-----Ursprüngliche Nachricht-----"),
        (THUNDERBIRD_DE, "Danke, erledigt.", "Am 08.01.2024 um 10:02 schrieb Support:"),
        (THUNDERBIRD_BARE, "Still offline.", "Support Desk wrote:"),
        (GMAIL_PT, "Obrigado, resolvido.", "Em seg., 8 de jan."),
        (OUTLOOK_PT, "Bom dia,\n\no telefone continua sem linha.", "De: Suporte"),
    ],
)
def test_real_reply_shapes_split_at_the_quote(body: str, new: str, quoted_starts: str) -> None:
    # Each client's reply header starts the quoted part; the text above it is the new text.
    parts = split(body)
    assert parts.new == new
    assert parts.quoted.startswith(quoted_starts)
    assert parts.signature == ""


def test_mobile_signature_and_portuguese_header() -> None:
    # Apple Mail (pt): "Enviado do meu iPhone" is the signature, "Em ..., escreveu:" starts the quote.
    parts = split(APPLE_PT)
    assert parts.new == "Olá,\n\nO problema continua."
    assert parts.signature == "Enviado do meu iPhone"
    assert parts.quoted.startswith("Em 8 de jan. de 2024")
    assert parts.quoted.endswith("> Por favor reinicie o telefone.")


def test_dash_dash_space_signature_before_quote() -> None:
    # RFC 3676 "-- " starts the signature; the quote after it stays quoted.
    body = "Works now.\n-- \nJohn Doe\nACME Corp\n\n-----Original Message-----\nFrom: Support\nSent: Monday\n"
    parts = split(body)
    assert parts.new == "Works now."
    assert parts.signature == "-- \nJohn Doe\nACME Corp"
    assert parts.quoted.startswith("-----Original Message-----")


def test_bare_dash_dash_far_from_the_end_is_not_a_signature() -> None:
    # A "--" used as a divider mid-text, with much text after it, is not a signature delimiter.
    body = "Part one\n--\n" + "\n".join(f"line {i}" for i in range(20))
    assert split(body).signature == ""
    assert split(body).new == body


def test_interleaved_answers_stay_new() -> None:
    # Inline answers between quoted lines are the customer's text: nothing is folded.
    body = "Answers inline:\n> Which model?\nYealink T46\n> Since when?\nMonday\n"
    parts = split(body)
    assert parts.new == body.strip()
    assert parts.quoted == ""


def test_trailing_quote_block_with_attribution() -> None:
    # A bottom ">" block and its attribution line (any language) are quoted.
    body = "Sim, funciona.\n\nJoão Silva escreveu:\n> Funciona?\n>\n> Obrigado\n"
    parts = split(body)
    assert parts.new == "Sim, funciona."
    assert parts.quoted == "João Silva escreveu:\n> Funciona?\n>\n> Obrigado"


def test_no_quote_no_signature_keeps_everything_new() -> None:
    # A fresh mail is all new text; CRLF line ends are handled.
    body = "Hello,\r\n\r\nour trunk is down since 9:00.\r\n\r\nBest regards,\r\nJane\r\n"
    parts = split(body)
    assert parts.new == "Hello,\n\nour trunk is down since 9:00.\n\nBest regards,\nJane"
    assert (parts.quoted, parts.signature) == ("", "")


def test_prose_mentioning_wrote_is_not_a_header() -> None:
    # "My colleague wrote:" without a quote under it is prose, not an attribution.
    body = "My colleague wrote:\nthe phone rings twice and stops.\nPlease check."
    assert split(body).new == body


def _content(text: str) -> Counter[str]:
    return Counter(ch for ch in text if not ch.isspace())


_LINE = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "-- ", "--", "> quoted", ">", "From: a@b.c", "Sent: today", "Von: x", "Gesendet: y", "De: z",
            "Enviado: w", "On Mon, Jan 8, 2024 at 10:02 AM X <x@y.z> wrote:", "Em 8 de jan., X escreveu:",
            "-----Original Message-----", "Sent from my iPhone", "Enviado do meu iPhone", "John wrote:", "",
        ]
    ),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=25), st.sampled_from(["\n", "\r\n", "\r"]))
def test_nothing_is_lost(lines: list[str], newline: str) -> None:
    # Property: new + signature + quoted hold exactly the non-whitespace content of the input.
    text = newline.join(lines)
    parts = split(text)
    assert _content(parts.new + parts.signature + parts.quoted) == _content(text)


def test_library_failure_falls_back_to_own_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    # If mail-parser-reply raises, our own rules still find the German and Portuguese headers.
    import maild.ingest.quoting as quoting

    class Broken:
        def __init__(self, **kwargs: object) -> None:
            raise RuntimeError("library bug")

    monkeypatch.setattr(quoting, "EmailReplyParser", Broken)
    assert split(THUNDERBIRD_DE).new == "Danke, erledigt."
    assert split(OUTLOOK_DE).quoted.startswith("Von: Support")
    assert split(GMAIL_EN_WRAPPED).quoted.startswith("On Mon, Jan 8, 2024")
