# SPDX-License-Identifier: MIT
"""Split a reply's text into what the sender wrote now, the quoted history, and the signature.

SPEC §3: quoted history and signatures are kept but shown folded. The split is a partition of the
body's lines (new, then signature, then quoted), so nothing the customer wrote can be lost: at worst
a line is folded that should not be. Where the quoted history starts is the earliest of:

* a reply header found by mail-parser-reply (Gmail/Apple "On <date>, <name> wrote:", Outlook
  "From:/Sent:/To:/Subject:" blocks and their translations, "-----Original Message-----");
* a reply header found by our own rules, which add what the library lacks: Portuguese ("Em <data>,
  <nome> escreveu:", "De:/Enviado:/Para:/Assunto:"), attributions wrapped over two lines, Thunderbird's
  bare "<name> wrote:" before ">" lines, and more separator translations;
* the trailing block of ">"-quoted lines (RFC 3676 §4.5), with its attribution line. Interleaved
  answers ("> question" / "answer" / "> question") stay in the new text, unfolded.

The signature starts at the "-- " delimiter (RFC 3676 §4.3; also a bare "--" near the end, since many
clients strip trailing blanks) or at a mobile client's "Sent from my iPhone" line near the end.
Closing words ("Best regards", "Mit freundlichen Grüßen") are left in the new text on purpose: the
library's rule folds everything after them, which hides real text written below a greeting.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailparser_reply import EmailReplyParser

log = logging.getLogger(__name__)

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "nl", "sv", "da", "es", "it", "pt")
_ATTRIBUTION_MAX = 300  # an attribution line is short; a long line ending in ":" is prose

_QUOTE_MARK = r"(?:>\s?)*"
_SEPARATOR_RE = re.compile(
    rf"^{_QUOTE_MARK}[-_=]{{2,}}\s*(?:original message|ursprüngliche nachricht|originalnachricht|"
    r"mensagem original|message d'origine|message original|oorspronkelijk bericht|originalmeddelande|"
    r"oprindelig meddelelse|opprinnelig melding|mensaje original|messaggio originale|"
    r"forwarded message|weitergeleitete nachricht|mensagem encaminhada|message transféré|"
    r"doorgestuurd bericht)\s*[-_=]{2,}$",
    re.IGNORECASE,
)
# Outlook's header block (en/de/pt/fr/nl/es): it always starts with the sender line.
_FROM_LINE_RE = re.compile(rf"^{_QUOTE_MARK}\**\s*(?:from|von|de|van|från|fra|da)\s*\**\s*:\s*\S", re.I)
_HEADER_LINE_RE = re.compile(
    rf"^{_QUOTE_MARK}\**\s*(?:sent|date|to|cc|subject|gesendet|datum|an|betreff|enviado|enviada|data|"
    r"para|assunto|envoyé|à|objet|verzonden|aan|onderwerp|skickat|till|ämne|sendt|til|emne|fecha|"
    r"asunto|inviato|oggetto)\s*\**\s*:",
    re.IGNORECASE,
)
# "On <date>, <name> wrote:" and its translations ("Am <Datum> schrieb <Name>:" puts the name last);
# the leading word keeps prose from matching.
_WROTE_RE = re.compile(
    rf"^{_QUOTE_MARK}(?:on|am|em|le|op|el|il|den|dne|dnia)\s.*\b(?:wrote|schrieb|escreveu|a\s+écrit|"
    r"schreef|escribió|ha\s+scritto|skrev|napsal\(a\)|napisał\(a\)|napisał)(?:\s+[^:]{1,120})?\s*:$",
    re.IGNORECASE,
)
# Thunderbird's bare "<name> wrote:" only counts when ">"-quoted lines follow it.
_BARE_WROTE_RE = re.compile(
    r"\b(?:wrote|schrieb|escreveu|a\s+écrit|schreef|escribió|ha\s+scritto|skrev)\s*:$", re.IGNORECASE
)
_SENT_FROM_RE = re.compile(
    r"^(?:sent from my|sent from outlook|sent from mail for|get outlook for|enviado do meu|"
    r"enviado do (?:outlook|email)|enviado desde mi|von meinem .{1,40} gesendet|gesendet von meinem|"
    r"gesendet mit|envoyé de mon|envoyé depuis|verzonden met mijn|verzonden vanaf mijn|"
    r"skickat från min|sendt fra min|inviato da|wysłane z)\b.{0,60}$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Split:
    """The parts of a body; joined back in the order new, signature, quoted, they are the body."""

    new: str
    quoted: str
    signature: str


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _join(lines: Sequence[str]) -> str:
    return "\n".join(lines).strip()


def split(text: str, languages: Sequence[str] = DEFAULT_LANGUAGES) -> Split:
    """Split a plain-text body into new text, quoted history and signature."""
    lines = _lines(text)
    norm = [line.strip() for line in lines]
    candidates = [
        len(norm),
        _library_header(norm, languages),
        _own_header(norm),
        _trailing_quote(norm),
    ]
    quote_at = min(c for c in candidates if c is not None)
    sig_at = _signature_start(lines, norm, quote_at)
    return Split(
        new=_join(lines[:sig_at]),
        quoted=_join(lines[quote_at:]),
        signature=_join(lines[sig_at:quote_at]),
    )


def _library_header(norm: list[str], languages: Sequence[str]) -> int | None:
    """The line where mail-parser-reply sees the first reply header, or None."""
    norm_text = "\n".join(norm)
    try:
        message = EmailReplyParser(languages=list(languages)).read(norm_text)
        headers = [str(r.headers) for r in message.replies if r.headers]
    except Exception:  # a third-party heuristic must never cost us the message; our rules still run
        log.warning("mail-parser-reply failed; using maild's own quote rules", exc_info=True)
        return None
    if not headers:
        return None
    pos = norm_text.find(headers[0])
    if pos < 0:  # the library rewrites separator lines; fall back to the header's first line
        first = headers[0].split("\n", 1)[0].strip()
        return next((i for i, line in enumerate(norm) if line == first), None)
    return norm_text.count("\n", 0, pos)


def _own_header(norm: list[str]) -> int | None:
    """The first line that starts quoted history by our rules, or None."""
    for i, line in enumerate(norm):
        if not line:
            continue
        if _SEPARATOR_RE.match(line) or _is_wrote(norm, i) or _is_header_block(norm, i):
            return i
        if _BARE_WROTE_RE.search(line) and len(line) <= _ATTRIBUTION_MAX and _next_is_quoted(norm, i):
            return i
    return None


def _is_wrote(norm: list[str], i: int) -> bool:
    line = norm[i]
    if len(line) > _ATTRIBUTION_MAX:
        return False
    if _WROTE_RE.match(line):
        return True
    # Gmail and Apple Mail wrap a long attribution over two lines (the second ends in "wrote:").
    if i + 1 < len(norm) and norm[i + 1] and not line.endswith(":"):
        return bool(_WROTE_RE.match(f"{line} {norm[i + 1]}")) and len(norm[i + 1]) <= _ATTRIBUTION_MAX
    return False


def _is_header_block(norm: list[str], i: int) -> bool:
    """An Outlook-style block: a From/Von/De line followed by at least one more header line."""
    if not _FROM_LINE_RE.match(norm[i]):
        return False
    return i + 1 < len(norm) and bool(_HEADER_LINE_RE.match(norm[i + 1]))


def _next_is_quoted(norm: list[str], i: int) -> bool:
    following = next((line for line in norm[i + 1 :] if line), "")
    return following.startswith(">")


def _trailing_quote(norm: list[str]) -> int | None:
    """Start of the block of ">" lines that runs to the end (blank lines allowed), with attribution."""
    start: int | None = None
    for i in range(len(norm) - 1, -1, -1):
        if not norm[i]:
            continue
        if not norm[i].startswith(">"):
            break
        start = i
    if start is None:
        return None
    prev = next((j for j in range(start - 1, -1, -1) if norm[j]), None)
    if prev is not None and norm[prev].endswith(":") and len(norm[prev]) <= _ATTRIBUTION_MAX:
        return prev  # "<someone> wrote:" in any language, directly above the quote
    return start


def _signature_start(lines: list[str], norm: list[str], end: int) -> int:
    """The line where the signature starts within the new text (``lines[:end]``); ``end`` if none."""
    for i in range(end):
        if lines[i] == "-- ":
            return i  # RFC 3676 §4.3's delimiter, exactly
        if norm[i] == "--" and sum(1 for line in norm[i + 1 : end] if line) <= 12:
            return i  # the same with its blank stripped by the client: trusted only near the end
    tail = [i for i in range(end) if norm[i]][-3:]
    for i in tail:
        if _SENT_FROM_RE.match(norm[i]):
            return i
    return end
