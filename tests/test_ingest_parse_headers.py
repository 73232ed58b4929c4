# SPDX-License-Identifier: MIT
"""The parser's header shortcuts give exactly what email.policy.default gives for the headers maild reads."""

from __future__ import annotations

import email.policy
from datetime import timedelta
from email.message import Message

from hypothesis import given, settings
from hypothesis import strategies as st

from maild.ingest.parse_headers import HeaderIndex, clean_header_text, decode_words

# Pieces that exercise every shortcut's edge: msg-id syntax, folding, comments, quotes, encoded words,
# raw 8-bit bytes (surrogate escapes), dates good and bad.
_PIECES = ["<", ">", "@", ".", " ", "\t", "\r\n ", "\n", "(", ")", '"', "\\", ";", "=", "/", "?", "a", "b-c",
           "é", "\udce9", ",", ":", "[", "]", "text/plain", "=?utf-8?q?caf=C3=A9?=", "=?iso-8859-1?b?5A==?=",
           "<id.1@host.example>", "Mon, 02 Mar 2026 15:00:00 +0000", "-0000", "31 Feb 2026 25:61:00", "2 Mar 26"]
_VALUES = st.lists(st.sampled_from(_PIECES), max_size=10).map("".join)


def _policy_default_text(name: str, raw: str) -> str:
    """What parse() read before the shortcuts: msg.get() under policy.default, raw words on failure."""
    try:
        value = str(email.policy.default.header_fetch_parse(name, raw))
    except Exception:
        value = decode_words(raw)
    return clean_header_text(value)


@settings(deadline=None, max_examples=400)
@given(name=st.sampled_from(["Subject", "In-Reply-To", "References", "Message-ID", "Date"]), raw=_VALUES)
def test_header_text_matches_policy_default(name: str, raw: str) -> None:
    # Each header maild reads comes out as policy.default's decoded, unfolded value, shortcut or not.
    assert HeaderIndex([(name, raw)]).text(name.lower()) == _policy_default_text(name, raw)


@settings(deadline=None, max_examples=400)
@given(raw=_VALUES)
def test_content_type_matches_policy_default(raw: str) -> None:
    # The top-level type is policy.default's reading; where policy.default cannot read it, compat32's.
    compat = Message()
    compat.set_raw("Content-Type", raw)
    try:
        value = str(email.policy.default.header_fetch_parse("Content-Type", raw))
        ctype = value.partition(";")[0].strip().lower()
        expected = ctype if ctype.count("/") == 1 else "text/plain"
    except Exception:
        expected = compat.get_content_type()
    assert HeaderIndex([("Content-Type", raw)]).content_type(compat) == expected


def test_encoded_subject_and_folding_are_decoded() -> None:
    # RFC 2047: adjacent encoded words join without the space between them; folding CRLFs are removed.
    headers = HeaderIndex([("Subject", "=?utf-8?q?Caf=C3=A9?=\r\n =?utf-8?q?_kaputt?= in\r\n\tK\u00f6ln")])
    assert headers.text("subject") == "Café kaputt in Köln"  # a tab, like any control character, is a space


def test_first_header_wins_and_absent_is_none() -> None:
    # Like Message.get(): the first occurrence of a repeated header, None when there is none.
    headers = HeaderIndex([("Subject", "one"), ("subject", "two")])
    assert headers.text("subject") == "one"
    assert headers.values("subject") == ["one", "two"]
    assert headers.text("message-id") is None


def test_date_keeps_its_offset() -> None:
    # The Date header is read as policy.default normalises it: same instant, same UTC offset.
    date = HeaderIndex([("Date", "Mon, 2 Mar 2026 15:00:00 +0100 (CET)")]).date()
    assert date is not None and date.utcoffset() == timedelta(hours=1) and (date.hour, date.day) == (15, 2)
    assert HeaderIndex([("Date", "yesterday")]).date() is None
