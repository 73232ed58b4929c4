# SPDX-License-Identifier: MIT
"""Subjects: reply/forward prefixes, the ``[Case #N]`` tag, and the subjects maild sends.

SPEC §3 rule 2 threads a message by the case tag in its subject "under any reply/forward prefixes in
any language". Mail clients never agreed on those prefixes: RFC 5322 §3.6.5 only suggests "Re: ", and
every localised client added its own word (AW, SV, Antw, RES, Odp, ...), its own counter (Re[2]:,
Re(2):, Re^2:) and its own colon (French "Re :", CJK full-width "："). Corporate gateways then
prepend warning banners such as "[EXTERNAL]". This module removes all of that, finds the tag, and
builds outbound subjects that carry the tag exactly once.
"""

from __future__ import annotations

import re

# The words clients put before a reply or forward, by language. Each is matched only as a whole word
# followed by an optional counter and a colon, so "Reboot needed", "Trouble" or "Antwerp office" keep
# their first word.
_PREFIX_WORDS = (
    "re", "aw", "antw", "antwort", "sv", "vs", "res", "rv", "r", "rif", "ref", "réf", "odp", "ynt",
    "vl", "vb", "wtr", "fwd", "fw", "wg", "tr", "enc", "doorst", "fs", "i", "pd",
    "απ", "σχετ", "πρθ", "回复", "回覆", "答复", "转发", "轉寄", "전달", "회신",
)  # fmt: skip
_PREFIX_ALT = "|".join(sorted({re.escape(w) for w in _PREFIX_WORDS}, key=len, reverse=True))

# Counters: Re[2]:, Re(2):, Re^2:, Re 2: is not a thing, so a counter must be bracketed or ^-marked.
_COUNTER = r"(?:\s*\[\d{1,4}\]|\s*\(\d{1,4}\)|\^\d{1,4})?"
# "：" is the full-width colon of CJK clients; French typography puts a space before the colon, and
# Lotus Notes abbreviates with a dot ("Réf. :").
_ONE_PREFIX = rf"(?:{_PREFIX_ALT})\.?{_COUNTER}\s*[:：]"
# Banners that mail gateways put in front of external mail (Proofpoint, Mimecast, Exchange rules).
_BANNER = (
    r"(?:\[\s*(?:external(?:\s+(?:email|e-mail|mail|sender|message))?|ext|extern|externe?|"
    r"caution(?:\s*[:\-]\s*external)?|suspicious|spam)\s*\]"
    r"|\*\s*external\s*\*|external\s*:)"
)
_LEADING_RE = re.compile(rf"^(?:\s*(?:{_ONE_PREFIX}|{_BANNER}))+\s*", re.IGNORECASE)

# The tag maild writes is ``[Case #N]``; people and translated templates also produce "[case #N]",
# "[Case#N]", "[ Case # N ]", "[Fall #N]" (de) and "[Caso #N]" (pt/es). Case numbers are ASCII digits
# only (\d would also accept other scripts' digits).
CASE_TAG_RE = re.compile(r"\[\s*(?:case|fall|caso)\s*#\s*([0-9]{1,12})\s*\]", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")


def format_tag(number: int) -> str:
    """The case tag maild writes, ``[Case #12345]`` (always English, so replies thread in any locale)."""
    if number < 1:
        raise ValueError(f"case numbers are positive, got {number}")
    return f"[Case #{number}]"


def _clean(subject: str) -> str:
    """Collapse whitespace, including CR/LF and tabs a folded or hostile header left (RELIABILITY 6)."""
    return _WS_RE.sub(" ", subject).strip()


def strip_prefixes(subject: str) -> str:
    """The subject without any leading run of reply/forward prefixes and gateway banners."""
    return _LEADING_RE.sub("", _clean(subject), count=1)


def find_case_tag(subject: str) -> int | None:
    """The case number of the first case tag in the subject, or None.

    The first tag wins: clients keep the original subject (with its tag) at the front and append, so
    the first tag is the one the conversation started with; a second tag usually comes from a person
    pasting another case's subject at the end ("[Case #5] Printer - see also [Case #7]"). Prefixes
    never contain a tag, so the first tag of the stripped subject is the first tag of the subject.
    """
    match = CASE_TAG_RE.search(subject)
    return int(match.group(1)) if match else None


def _base(subject: str) -> str:
    """The subject without prefixes, banners and any case tag (prefixes may sit on both sides of a tag)."""
    return strip_prefixes(CASE_TAG_RE.sub(" ", _clean(subject)))


def tag_subject(subject: str, number: int) -> str:
    """The outbound subject of a case: ``[Case #N] <subject without prefixes and old tags>``.

    Outbound subjects never carry "Re:" from the customer's side nor any other case's tag, so a
    conversation keeps one stable subject; ``reply_subject`` adds the one "Re: " a reply needs.
    """
    base = _base(subject)
    tag = format_tag(number)
    return f"{tag} {base}" if base else tag


def reply_subject(subject: str, number: int) -> str:
    """The subject of a reply on a case: ``Re: [Case #N] <subject>`` (RFC 5322 §3.6.5)."""
    return f"Re: {tag_subject(subject, number)}"


def normalized_subject(subject: str) -> str:
    """A comparison key: no prefixes, banners or case tags, whitespace collapsed, case folded."""
    return _base(subject).casefold()
