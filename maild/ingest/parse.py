# SPDX-License-Identifier: MIT
"""Bytes -> Inbound: the one place a message is parsed.

The bytes are parsed once, by the standard ``email`` package with ``email.policy.compat32`` (structure,
raw headers), fed in chunks so a large mail is never held as one big text copy. The headers maild reads
get policy.default's values (RFC 2047 decoding, unfolding) from parse_headers, computed for those
headers only; the same message object is handed to mail-parser, which is written for compat32 and
walks it for the bodies and attachments (charset recovery, attachment detection). Message-ID,
In-Reply-To and References are normalised here, so threading compares like with like.
"""

from __future__ import annotations

import binascii
import email.policy
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.feedparser import BytesFeedParser
from email.message import Message
from typing import TYPE_CHECKING

import mailparser

from maild.ingest.parse_headers import HeaderIndex, addresses, clean_header_text, unsurrogate
from maild.ingest.raw import RawMail

if TYPE_CHECKING:
    from maild.ingest.bigmail import HeldPart

__all__ = ["Attachment", "Inbound", "ParseError", "clean_header_text", "html_to_text", "msgids", "parse",
           "safe_filename", "unsurrogate"]

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
    data: bytes  # empty for a held-out part: its bytes are in ``held``
    held: HeldPart | None = None  # a big attachment of a large message, decoded to a file (bigmail)

    @property
    def size(self) -> int:
        return self.held.size if self.held is not None else len(self.data)

    def read(self) -> bytes:
        return self.held.read() if self.held is not None else self.data


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


def msgids(value: str | None) -> tuple[str, ...]:
    """All ``<id>`` tokens of a Message-ID style header, brackets removed, in order."""
    if not value:
        return ()
    found = _MSGID_RE.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]
    return tuple(dict.fromkeys(m for m in found if m))


def _bodies(msg: Message) -> tuple[str, str | None, tuple[Attachment, ...], tuple[str, ...]]:
    parsed = mailparser.MailParser(msg)
    text = "\n".join(parsed.text_plain)
    html = "\n".join(parsed.text_html) or None
    attachments: list[Attachment] = []
    for att in parsed.attachments:
        payload = att.get("payload") or ""
        try:
            # mail-parser hands a binary attachment over as base64 text (for a base64 part, the part's own
            # payload string). a2b_base64 reads an ASCII str in place, where b64decode would first copy it
            # to bytes; it is the same decoder, lenient about line breaks and junk (validate=False).
            data = binascii.a2b_base64(payload) if att.get("binary") else str(payload).encode("utf-8")
        except (ValueError, TypeError):
            data = str(payload).encode("utf-8", "replace")
        name = att.get("safe_filename") or "attachment"
        attachments.append(
            Attachment(
                filename=safe_filename(str(name)),
                # One clean token: a folded part header must not carry CR/LF into a staff reply's MIME.
                content_type=" ".join(clean_header_text(str(att.get("mail_content_type") or "")).split())
                or "application/octet-stream",
                data=data,
            )
        )
    defects = tuple(sorted(str(d) for d in parsed.defects_categories))
    return text, html, tuple(attachments), defects


def safe_filename(name: str) -> str:
    """A display name for an attachment: no path parts, no control characters, bounded length."""
    name = _CTL_RE.sub("", name).replace("\\", "/").split("/")[-1].strip().lstrip(".")
    return (name or "attachment")[:200]


# Bytes handed to the parser at a time. Parser.parse() reads a text copy of the whole mail through
# StringIO (4 bytes a character once it is read in pieces); feeding slices of the bytes gives the same
# message (the feed parser keeps a partial line across feeds) without that copy.
_FEED_CHUNK = 1 << 16


def _message(data: bytes) -> Message:
    """The message as compat32 reads it (raw headers; never raises on a bad header)."""
    parser: BytesFeedParser[Message] = BytesFeedParser(policy=email.policy.compat32)
    view = memoryview(data)
    for pos in range(_readable_start(data), len(data), _FEED_CHUNK):
        parser.feed(bytes(view[pos:pos + _FEED_CHUNK]))
    return parser.close()


def _readable_start(data: bytes) -> int:
    """Where the parser should start reading: after a UTF-8 BOM and any junk lines before the first header.

    Only the parser's view is changed; the stored raw bytes stay as received. Lines are matched in
    place (no slicing), so a huge one-line message is not copied.
    """
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    pos = start
    for _ in range(40):
        end = data.find(b"\n", pos)
        stop = len(data) if end < 0 else end
        if _HEADER_START.match(data, pos, stop):
            return pos
        if _BLANK.fullmatch(data, pos, stop) or end < 0:
            break
        pos = end + 1
    return start


_HEADER_START = re.compile(rb"[!-9;-~]+:")  # an RFC 5322 field name and its colon
_BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*")  # what bytes.strip() removes


def parse(raw: RawMail) -> Inbound:
    """Read a RawMail. Raises ParseError only when the bytes are not a mail at all."""
    if raw.spool is not None:
        raise TypeError("a spooled message is read from the store, or after RawMail.loaded()")
    if not raw.data or raw.data.isspace():  # bytes.isspace() is bytes.strip()'s set, without the copy
        raise ParseError("empty message")
    msg = _message(raw.data)
    headers = HeaderIndex(msg.raw_items())
    if not headers.items:
        raise ParseError("no header section")

    mids = msgids(headers.text("message-id"))
    generated = not mids
    message_id = mids[0] if mids else _derived_message_id(raw)

    froms, _ = addresses(headers, "from")
    text, html, attachments, defects = _bodies_any(msg)
    if raw.whole is not None:  # a large message's big attachments, held out of the skeleton
        attachments += tuple(Attachment(safe_filename(h.filename), h.content_type, b"", h) for h in raw.whole.held)
    text, html = unsurrogate(text), unsurrogate(html) if html else None
    if not text and html:
        text = html_to_text(html)
    return Inbound(
        raw=raw,
        message_id=message_id,
        message_id_generated=generated,
        in_reply_to=msgids(headers.text("in-reply-to")),
        references=msgids(headers.text("references")),
        subject=headers.text("subject") or "",
        from_addr=froms[0][1] if len(froms) == 1 else None,
        from_name=froms[0][0] if len(froms) == 1 else "",
        from_count=len(froms),
        reply_to=tuple(a for _, a in addresses(headers, "reply-to")[0]),
        to=tuple(a for _, a in addresses(headers, "to")[0]),
        cc=tuple(a for _, a in addresses(headers, "cc")[0]),
        date=headers.date(),
        content_type=headers.content_type(msg),
        headers=headers.raw_headers(),
        text=text,
        html=html,
        attachments=attachments,
        defects=defects,
    )


def _bodies_any(msg: Message) -> tuple[str, str | None, tuple[Attachment, ...], tuple[str, ...]]:
    """mail-parser's reading; on its failure, the standard library alone."""
    try:
        return _bodies(msg)
    except Exception:  # mail-parser's epilogue recovery fails on some malformed multiparts
        log.info("mail-parser could not read the bodies; using the standard library's reading")
    return _stdlib_bodies(msg)


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


def _derived_message_id(raw: RawMail) -> str:
    """A stable Message-ID for a message that has none: the same bytes always get the same one."""
    return f"{raw.sha256[:32]}@derived.maild.invalid"


_TAG_RE = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.S | re.I)


def html_to_text(html: str) -> str:
    """Plain text of an HTML body, for mail that has no text/plain part."""
    import html as htmlmod

    text = re.sub(r"<br\s*/?>|</p>|</div>|</tr>", "\n", html, flags=re.I)
    text = _TAG_RE.sub("", text)
    text = htmlmod.unescape(text)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()
