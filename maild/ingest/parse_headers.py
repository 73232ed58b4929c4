# SPDX-License-Identifier: MIT
"""The header reading behind parse.py: policy.default's values, computed only for the headers maild reads.

parse.py parses with ``email.policy.compat32``, which keeps every header as the raw string from the
wire and builds no header objects. ``policy.default`` built a ``headerregistry`` object on every fetch
(mail-parser alone fetched each header several times), which was most of the cost of reading a mail.
Here the few headers maild reads are given the value ``str(policy.default.header_fetch_parse(...))``
would give: computed directly where that is provably the same string (no RFC 2047 encoded word, a
plain RFC 5322 msg-id, a date ``parsedate_to_datetime`` reads), and by policy.default itself otherwise.
"""

from __future__ import annotations

import email.header
import email.policy
import email.utils
import re
from collections.abc import Iterable
from datetime import datetime
from email.message import Message
from typing import Final

_CTL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
# policy.default unfolds a fetched header by deleting every CR and LF (email.policy.linesep_splitter).
_LINESEP_RE: Final = re.compile(r"\n|\r")
# RFC 5322 section 3.6.4 msg-id with dot-atom-text on both sides: get_msg_id reads it as written.
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_MSGID_RE: Final = re.compile(rf"[ \t]*<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>[ \t]*")
# Unstructured headers: policy.default returns the unfolded input unless an encoded word is decoded.
# RFC 2045 section 5.1 type "/" subtype (tokens), then parameters or nothing.
_TOKEN: Final = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_SIMPLE_CTYPE_RE: Final = re.compile(rf"[ \t]*({_TOKEN}/{_TOKEN})[ \t]*(?:;|$)")
_UNSTRUCTURED: Final = frozenset({"subject", "in-reply-to", "references"})


def unsurrogate(value: str) -> str:
    """Text without lone surrogates: undecodable 8-bit bytes (kept by the parser as surrogate escapes)
    are read as UTF-8 where they are, and as U+FFFD where they are not. Stores and JSON need this."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode(
            "utf-8", "replace").decode("utf-8")


def clean_header_text(value: str) -> str:
    """Unfold and drop control characters (CR/LF never survive into anything we re-emit)."""
    return _CTL_RE.sub(" ", unsurrogate(value)).strip()


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded the compat32 way (email.header), as mail clients expect."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # a broken encoded word stays as it was written
        return value


class HeaderIndex:
    """A message's raw header fields, indexed once by lower-case name (first value, all values)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self.items: list[tuple[str, str]] = [(name, str(value)) for name, value in items]
        self._all: dict[str, list[tuple[str, str]]] = {}
        for name, value in self.items:
            self._all.setdefault(name.lower(), []).append((name, value))

    def values(self, name: str) -> list[str]:
        """Every raw value of a header, in order."""
        return [value for _, value in self._all.get(name, ())]

    def text(self, name: str) -> str | None:
        """A header's value as ``msg.get(name)`` gives it under policy.default, cleaned; on a value
        policy.default cannot read, the raw text with its encoded words decoded. None when absent."""
        first = self._all.get(name)
        if not first:
            return None
        key, raw = first[0]
        try:
            value = default_value(key, raw)
        except Exception:  # defective header: policy.default may raise while parsing it
            value = decode_words(raw)
        return clean_header_text(value)

    def content_type(self, msg: Message) -> str:
        """``msg.get_content_type()`` as policy.default reads it: the Content-Type header unfolded first."""
        first = self._all.get("content-type")
        if not first:
            return msg.get_content_type()  # the default type (RFC 2045 section 5.2)
        key, raw = first[0]
        simple = _SIMPLE_CTYPE_RE.match("".join(_LINESEP_RE.split(raw)))
        if simple:  # a plain type/subtype comes out of ContentTypeHeader as written
            return simple.group(1).lower()
        try:
            value = str(email.policy.default.header_fetch_parse(key, raw))
        except Exception:  # what policy.default cannot read, compat32 reads as written
            return msg.get_content_type()
        ctype = value.partition(";")[0].strip().lower()
        return ctype if ctype.count("/") == 1 else "text/plain"  # RFC 2045 section 5.2

    def date(self) -> datetime | None:
        value = self.text("date")
        if not value:
            return None
        try:
            return email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None

    def raw_headers(self) -> tuple[tuple[str, str], ...]:
        """(lower-case name, unfolded value) of every header, encoded words decoded, in order."""
        return tuple((name.lower(), clean_header_text(decode_words(value) if "=?" in value else value))
                     for name, value in self.items)


def default_value(name: str, raw: str) -> str:
    """``str(email.policy.default.header_fetch_parse(name, raw))`` for the headers parse.py reads.

    Raises what policy.default raises. The shortcuts apply only where the header class is known to
    return its unfolded input unchanged (surrogate escapes are left for clean_header_text, which
    resolves them the same way headerregistry's ``_sanitize`` does).
    """
    lname = name.lower()
    value = "".join(_LINESEP_RE.split(raw))
    if lname in _UNSTRUCTURED and "=?" not in value:
        return value
    if lname == "message-id" and _PLAIN_MSGID_RE.fullmatch(value) and "=?" not in value:
        return value
    if lname == "date" and value:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except Exception:  # policy.default's own handling of a bad date below
            pass
        else:
            return email.utils.format_datetime(parsed)  # DateHeader's normalised value
    return str(email.policy.default.header_fetch_parse(name, raw))


def addresses(headers: HeaderIndex, name: str) -> tuple[list[tuple[str, str]], bool]:
    """(display name, lower-case address) pairs of an address header; strict, so junk is dropped.

    Returns also whether anything in the header could not be read as an address.
    """
    # Addresses are parsed from the header as written; only display names are decoded afterwards, so an
    # encoded word (RFC 2047) can never inject address syntax such as "<evil@x>" or a comma.
    values = headers.values(name)
    if not values:
        return [], False
    try:
        try:
            pairs = email.utils.getaddresses(values, strict=True)
        except TypeError:  # strict= exists from 3.11.10 on (gh-102988); older 3.11 patch releases lack it
            pairs = email.utils.getaddresses(values)
    except (RecursionError, ValueError, IndexError):  # hostile address lists (mimekit stack-overflow.txt)
        return [], True
    good: list[tuple[str, str]] = []
    bad = False
    for disp, addr in pairs:
        addr = addr.strip()
        local, _, domain = addr.partition("@")
        if not local or not domain or "@" in domain or _CTL_RE.search(addr) or " " in addr:
            bad = True  # e.g. "a@b@c", which Python before 3.11.10 reads as "@c"
            continue
        good.append((clean_header_text(decode_words(disp)), unsurrogate(addr).lower()))
    return good, bad
