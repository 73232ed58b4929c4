# SPDX-License-Identifier: MIT
"""Bytes -> Inbound: the one place a message is parsed.

The bytes are parsed once, by the standard ``email`` package with ``email.policy.default`` (headers,
addresses, structure). That same message object is handed to mail-parser, which walks it for the
bodies and attachments (charset recovery, attachment detection). Nothing is decoded before parsing.
Message-ID, In-Reply-To and References are normalised here, so threading compares like with like.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message

import mailparser

from maild.ingest.raw import RawMail

log = logging.getLogger(__name__)

# mail-parser logs every part at DEBUG and charset trouble at WARNING; our own log says what matters.
logging.getLogger("mailparser").setLevel(logging.ERROR)

_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")


class ParseError(Exception):
    """The bytes cannot be read as a mail at all (kept and reported by the caller)."""


@dataclass(frozen=True)
class Attachment:
    filename: str  # display name, sanitised: never used as a path
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Inbound:
    """Everything intake needs to know about one message, read once from its bytes."""

    raw: RawMail
    message_id: str  # without angle brackets
    message_id_generated: bool
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_addr: str | None  # lower-cased addr-spec, None when absent or unparseable
    from_name: str
    from_count: int  # how many addresses the From header named
    reply_to: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: datetime | None
    content_type: str
    headers: tuple[tuple[str, str], ...]  # (lower-case name, unfolded value), in order
    text: str
    html: str | None
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        """First value of a header, or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Message-IDs this message says it answers: In-Reply-To first, then References newest first."""
        seen: dict[str, None] = {}
        for mid in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(mid, None)
        return tuple(seen)

    @property
    def recipients(self) -> tuple[str, ...]:
        """Envelope recipients when known, else To and Cc."""
        if self.raw.rcpt_tos:
            return tuple(r.lower() for r in self.raw.rcpt_tos)
        return self.to + self.cc


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


def msgids(value: str | None) -> tuple[str, ...]:
    """All ``<id>`` tokens of a Message-ID style header, brackets removed, in order."""
    if not value:
        return ()
    found = _MSGID_RE.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]
    return tuple(dict.fromkeys(m for m in found if m))


def _raw_headers(msg: Message) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for name, value in msg.raw_items():
        text = str(value)
        if isinstance(value, str) and ("=?" in text):
            text = _decode_words(text)
        out.append((name.lower(), clean_header_text(text)))
    return tuple(out)


def _decode_words(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # a broken encoded word stays as it was written
        return value


def _header_str(msg: Message, name: str) -> str | None:
    """A header's decoded value under policy.default, falling back to its raw text."""
    try:
        value = msg.get(name)
    except Exception:  # defective header: policy.default may raise while parsing it
        value = None
        for key, raw in msg.raw_items():
            if key.lower() == name.lower():
                value = _decode_words(str(raw))
                break
    return None if value is None else clean_header_text(str(value))


def _addresses(msg: Message, name: str) -> tuple[list[tuple[str, str]], bool]:
    """(display name, lower-case address) pairs of an address header; strict, so junk is dropped.

    Returns also whether anything in the header could not be read as an address.
    """
    # Addresses are parsed from the header as written; only display names are decoded afterwards, so an
    # encoded word (RFC 2047) can never inject address syntax such as "<evil@x>" or a comma.
    values = [str(raw) for key, raw in msg.raw_items() if key.lower() == name.lower()]
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
        good.append((clean_header_text(_decode_words(disp)), unsurrogate(addr).lower()))
    return good, bad


def _date(msg: Message) -> datetime | None:
    value = _header_str(msg, "date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def _bodies(msg: Message) -> tuple[str, str | None, tuple[Attachment, ...], tuple[str, ...]]:
    parsed = mailparser.MailParser(msg)
    text = "\n".join(parsed.text_plain)
    html = "\n".join(parsed.text_html) or None
    attachments: list[Attachment] = []
    for att in parsed.attachments:
        payload = att.get("payload") or ""
        try:
            data = base64.b64decode(payload) if att.get("binary") else str(payload).encode("utf-8")
        except (ValueError, TypeError):
            data = str(payload).encode("utf-8", "replace")
        name = att.get("safe_filename") or "attachment"
        attachments.append(
            Attachment(
                filename=safe_filename(str(name)),
                content_type=str(att.get("mail_content_type") or "application/octet-stream"),
                data=data,
            )
        )
    defects = tuple(sorted(str(d) for d in parsed.defects_categories))
    return text, html, tuple(attachments), defects


def safe_filename(name: str) -> str:
    """A display name for an attachment: no path parts, no control characters, bounded length."""
    name = _CTL_RE.sub("", name).replace("\\", "/").split("/")[-1].strip().lstrip(".")
    return (name or "attachment")[:200]


def _message(data: bytes) -> Message:
    """policy.default where it copes; compat32 (never raises on bad headers) where it does not."""
    try:
        return email.message_from_bytes(data, policy=email.policy.default)
    except Exception:  # e.g. UnicodeDecodeError from a broken iso-2022-jp header (kix corpus)
        return email.message_from_bytes(data, policy=email.policy.compat32)


def _readable(data: bytes) -> bytes:
    """The bytes as the parser should see them: no UTF-8 BOM, no junk lines before the first header.

    Only the parser's copy is changed; the stored raw bytes stay as received.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n", 40)
    for i, line in enumerate(lines[:40]):
        if _HEADER_START.match(line):
            return data if i == 0 else b"\n".join(lines[i:])
        if not line.strip():
            break
    return data


_HEADER_START = re.compile(rb"^[!-9;-~]+:")


def parse(raw: RawMail) -> Inbound:
    """Read a RawMail. Raises ParseError only when the bytes are not a mail at all."""
    if not raw.data.strip():
        raise ParseError("empty message")
    msg = _message(_readable(raw.data))
    if not list(msg.raw_items()):
        raise ParseError("no header section")

    mids = msgids(_header_str(msg, "message-id"))
    generated = not mids
    message_id = mids[0] if mids else _derived_message_id(raw.data)

    froms, _ = _addresses(msg, "from")
    text, html, attachments, defects = _bodies_any(msg, raw.data)
    text, html = unsurrogate(text), unsurrogate(html) if html else None
    if not text and html:
        text = html_to_text(html)
    return Inbound(
        raw=raw,
        message_id=message_id,
        message_id_generated=generated,
        in_reply_to=msgids(_header_str(msg, "in-reply-to")),
        references=msgids(_header_str(msg, "references")),
        subject=_header_str(msg, "subject") or "",
        from_addr=froms[0][1] if len(froms) == 1 else None,
        from_name=froms[0][0] if len(froms) == 1 else "",
        from_count=len(froms),
        reply_to=tuple(a for _, a in _addresses(msg, "reply-to")[0]),
        to=tuple(a for _, a in _addresses(msg, "to")[0]),
        cc=tuple(a for _, a in _addresses(msg, "cc")[0]),
        date=_date(msg),
        content_type=msg.get_content_type(),
        headers=_raw_headers(msg),
        text=text,
        html=html,
        attachments=attachments,
        defects=defects,
    )


def _bodies_any(msg: Message, data: bytes) -> tuple[str, str | None, tuple[Attachment, ...], tuple[str, ...]]:
    """mail-parser's reading; on its failure, again over compat32; then the standard library alone."""
    try:
        return _bodies(msg)
    except Exception:
        # policy.default's header parser crashes on some legal headers (e.g. on 3.11.7 a group with a
        # comment, `To: unlisted-recipients:; (no To-header on input)`); mail-parser only needs compat32.
        pass
    compat = email.message_from_bytes(_readable(data), policy=email.policy.compat32)
    try:
        return _bodies(compat)
    except Exception:  # mail-parser's epilogue recovery fails on some malformed multiparts
        log.info("mail-parser could not read the bodies; using the standard library's reading")
    return _stdlib_bodies(compat)


def _stdlib_bodies(msg: Message) -> tuple[str, str | None, tuple[Attachment, ...], tuple[str, ...]]:
    texts: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        ctype = part.get_content_type()
        if filename or part.get_content_disposition() == "attachment":
            attachments.append(Attachment(safe_filename(str(filename or "attachment")), ctype, data))
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = data.decode(charset, "replace")
        except LookupError:
            text = data.decode("utf-8", "replace")
        (htmls if ctype == "text/html" else texts).append(text)
    return "\n".join(texts), "\n".join(htmls) or None, tuple(attachments), ("StdlibFallback",)


def _derived_message_id(data: bytes) -> str:
    """A stable Message-ID for a message that has none: the same bytes always get the same one."""
    return f"{hashlib.sha256(data).hexdigest()[:32]}@derived.maild.invalid"


_TAG_RE = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.S | re.I)


def html_to_text(html: str) -> str:
    """Plain text of an HTML body, for mail that has no text/plain part."""
    import html as htmlmod

    text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>", "\n", html, flags=re.I)
    text = _TAG_RE.sub("", text)
    text = htmlmod.unescape(text)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()
