# SPDX-License-Identifier: MIT
"""Turning a rendered mail into the exact bytes maild hands to the relay.

What the headers are for:
- ``Subject`` carries the case tag (SPEC §3 rule 2), ``Message-ID`` is fixed when the mail is queued
  so a retried send is the same message (STYLE §5), and ``In-Reply-To``/``References`` (RFC 5322
  §3.6.4) plus ``Reply-To`` (the case's reply address) make replies thread back.
- ``Auto-Submitted`` (RFC 3834 §5) marks automatic replies and notices so well-behaved responders do
  not answer them; ``X-Auto-Response-Suppress: All`` asks Exchange for the same. A human staff reply
  carries neither, because people are expected to answer it.
- ``X-Maild-Loop`` is an HMAC of the mail domain: maild's own mail coming back in is recognised even
  after a forwarder rewrote Message-ID or From (RELIABILITY L4).
- ``Thread-Topic``/``Thread-Index`` let Outlook group a case's mail into one conversation.

Every header value is stripped of control characters first (RELIABILITY rule 6, S3), so a customer's
subject such as ``"hi\\r\\nBcc: victim@evil"`` stays one harmless line of one Subject header. The
message is serialised with ``email.policy.SMTP``: CRLF line ends, bodies with long lines become
quoted-printable (no line over 998 octets, RFC 5322 §2.1.1), non-ASCII words RFC 2047.

A ``Draft`` is compose's inputs as JSON-able data: the outbox stores it when a mail is queued and
``compose_draft`` turns it into exactly the bytes ``serialize(compose(...))`` gives for those inputs,
later, when the sender claims the row (maild.outbound.outbox). The one part that differs from one
composition to the next is the random MIME boundary, which is why the bytes are composed only once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from maild.config import Settings
from maild.outbound.render import Rendered, scrub
from maild.threading.subject import tag_subject

# Generation policy. ``refold_source="none"`` keeps the References/In-Reply-To lines exactly as
# ``_set_id_list`` folded them: the default refolding would turn a long Message-ID into RFC 2047
# encoded words, which no client matches against its own ids (CPython's unstructured folding).
SMTP_POLICY = policy.SMTP.clone(refold_source="none")

MAX_REFERENCES = 20  # RFC 5322 §3.6.4 lets us trim; keep the first (thread root) and the newest
MAX_ID_LENGTH = 250  # longer "ids" are junk; they would also break the 998-octet line limit
AUTO_KINDS = ("auto-replied", "auto-generated")

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_MSG_ID_RE = re.compile(r"<?([^<>\s@]+@[^<>\s@]+)>?")
# Windows FILETIME counts 100 ns ticks from 1601-01-01 (MS-DTYP §2.3.3).
_FILETIME_EPOCH_OFFSET = 11_644_473_600


def clean_header(value: str) -> str:
    """One line of text: every control character (CR, LF, NUL, TAB, ...) becomes a space."""
    return " ".join(_CONTROL_RE.sub(" ", scrub(value)).split())


def clean_address(address: str) -> str:
    """An address with nothing an SMTP command or header could be split on; ValueError otherwise."""
    if _CONTROL_RE.search(address) or any(c in address for c in " <>,;"):
        raise ValueError(f"refusing an address with control characters or separators: {address!r}")
    if address.count("@") != 1 or address.startswith("@") or address.endswith("@"):
        raise ValueError(f"not an email address: {address!r}")
    return address


def normalize_message_id(value: str) -> str | None:
    """``<local@domain>`` for a plausible Message-ID, None for junk (spaces, controls, no ``@``)."""
    match = _MSG_ID_RE.fullmatch(clean_header(value))
    if match is None or len(match.group(1)) > MAX_ID_LENGTH:
        return None
    return f"<{match.group(1)}>"


def loop_token(settings: Settings) -> str:
    """The ``X-Maild-Loop`` value: ``Settings.loop_token``, an HMAC of the mail domain (the same value
    ``maild.ingest.screen`` compares inbound mail against)."""
    return settings.loop_token


def thread_index(settings: Settings, thread_key: str, started: datetime) -> str:
    """Outlook's ``Thread-Index``: base64 of the 22-byte conversation-index header block.

    Layout (MS-OXOMSG §2.2.1.3, PidTagConversationIndex): bytes 0-5 are the six most significant
    bytes of the big-endian FILETIME of the conversation's start (byte 0 is the "reserved" 0x01 for
    any date after 1601+~900 years), bytes 6-21 a 16-byte conversation GUID. Both are derived from
    the case (its number and creation time), so every mail of a case carries the same header block
    and Outlook shows them as one conversation. Child blocks (5 bytes per reply) are not appended:
    Outlook groups by the header block alone.
    """
    ticks = int((started.astimezone(UTC).timestamp() + _FILETIME_EPOCH_OFFSET) * 10_000_000)
    filetime = struct.pack(">Q", ticks)[:6]
    guid = hmac.new(settings.secret_bytes, f"thread:{thread_key}".encode(), hashlib.sha256).digest()[:16]
    return base64.b64encode(filetime + guid).decode("ascii")


def reference_chain(references: Sequence[str], in_reply_to: str | None) -> list[str]:
    """The References of a reply: the parent's References plus the parent's Message-ID, trimmed."""
    ids: list[str] = []
    for raw in [*references, *([in_reply_to] if in_reply_to else [])]:
        mid = normalize_message_id(raw)
        if mid is not None and mid not in ids:
            ids.append(mid)
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids


def _cte(text: str) -> str:
    # 7-bit clean always: the relay need not offer 8BITMIME (RFC 6152), and quoted-printable keeps
    # every line short (RFC 2045 §6.7: at most 76 characters) whatever a customer or staff typed.
    if text.isascii() and all(len(line) <= 78 for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


def _set_id_list(msg: EmailMessage, name: str, ids: Sequence[str]) -> None:
    # One id per line, folded by us (RFC 5322 §2.2.3); every id was normalised, so no CR/LF inside.
    if ids:
        msg.set_raw(name, "\n ".join(ids))


def subject_line(subject: str, case_number: int | None) -> str:
    """The Subject compose sets: one clean line, tagged when the mail belongs to a case."""
    line = clean_header(subject)
    return line if case_number is None else tag_subject(line, case_number)


def subject_text(subject: str, case_number: int | None) -> str:
    """``str(msg["Subject"])`` of the composed mail, without composing it: the header parser's reading
    of ``subject_line`` (which, for one, decodes anything that looks like an RFC 2047 encoded word)."""
    line = subject_line(subject, case_number)
    if "=?" not in line:
        return line  # the parser returns every other clean line as it is, and it costs ~0.1 ms
    return str(policy.default.header_factory("Subject", line))


def compose(
    settings: Settings,
    rendered: Rendered,
    *,
    to: str,
    to_name: str,
    message_id: str,
    case_number: int | None,
    in_reply_to: str | None,
    references: Sequence[str],
    automatic: bool,
    auto_kind: str = "auto-replied",
    attachments: Sequence[tuple[str, str, bytes]] = (),
    reply_to: str | None,
    now: datetime,
    thread_topic: str | None = None,
    thread_started: datetime | None = None,
    from_name: str | None = None,
) -> EmailMessage:
    """The outbound message. ``attachments`` are (filename, content type, bytes); ``from_name`` is the
    desk's name as it was when the mail was queued (default: ``settings.desk.name``)."""
    if auto_kind not in AUTO_KINDS:
        raise ValueError(f"auto_kind must be one of {AUTO_KINDS}, got {auto_kind!r}")
    mid = normalize_message_id(message_id)
    if mid is None:
        raise ValueError(f"not a Message-ID: {message_id!r}")
    subject = subject_line(rendered.subject, case_number)
    desk_name = clean_header(settings.desk.name if from_name is None else from_name)
    msg = EmailMessage()
    msg["From"] = Address(display_name=desk_name, addr_spec=settings.support_address)
    msg["To"] = Address(display_name=clean_header(to_name), addr_spec=clean_address(to))
    if reply_to:
        msg["Reply-To"] = Address(display_name=desk_name, addr_spec=clean_address(reply_to))
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now.astimezone(UTC))
    msg.set_raw("Message-ID", mid)  # unfolded: some parsers keep a folded id's leading space
    parent = normalize_message_id(in_reply_to) if in_reply_to else None
    _set_id_list(msg, "In-Reply-To", [parent] if parent else [])
    _set_id_list(msg, "References", reference_chain(references, parent))
    if automatic:
        msg["Auto-Submitted"] = auto_kind  # RFC 3834 §5.1
        msg["X-Auto-Response-Suppress"] = "All"  # Exchange: no OOF/read receipts back to us
    msg["X-Maild-Loop"] = loop_token(settings)
    key = f"case:{case_number}" if case_number is not None else f"mid:{mid}"
    msg["Thread-Topic"] = clean_header(thread_topic or subject)
    msg["Thread-Index"] = thread_index(settings, key, thread_started or now)
    text = scrub(rendered.text)
    msg.set_content(text, cte=_cte(text))
    if rendered.html is not None:
        html = scrub(rendered.html)
        msg.add_alternative(html, subtype="html", cte=_cte(html))
    for filename, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        msg.add_attachment(
            data, maintype=maintype or "application", subtype=subtype or "octet-stream",
            filename=clean_header(filename) or "attachment",
        )  # fmt: skip
    # After the body: set_content()/add_alternative() drop or move every Content-* header.
    msg["Content-Language"] = rendered.locale  # RFC 3282
    return msg


def serialize(msg: EmailMessage) -> bytes:
    """The wire form: CRLF, 7-bit clean, no line over 998 octets (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6)."""
    return msg.as_bytes(policy=SMTP_POLICY)


@dataclass(frozen=True)
class Draft:
    """Every input of ``compose`` that is not Settings or attachments: the outbox stores it as JSON
    (``OutboxItem.pending``) and the sender composes the bytes from it when it claims the row."""

    rendered: Rendered
    to: str
    to_name: str
    message_id: str
    case_number: int | None
    in_reply_to: str | None
    references: tuple[str, ...]
    automatic: bool
    auto_kind: str
    reply_to: str | None
    now: datetime
    thread_topic: str | None
    thread_started: datetime | None
    from_name: str

    def __post_init__(self) -> None:
        # What compose would refuse, refused when the mail is queued rather than when it is sent.
        if self.auto_kind not in AUTO_KINDS:
            raise ValueError(f"auto_kind must be one of {AUTO_KINDS}, got {self.auto_kind!r}")
        if normalize_message_id(self.message_id) is None:
            raise ValueError(f"not a Message-ID: {self.message_id!r}")

    def to_json(self) -> dict[str, Any]:
        r = self.rendered
        return {
            "v": 1, "subject": r.subject, "text": r.text, "html": r.html, "locale": r.locale,
            "to": self.to, "to_name": self.to_name, "message_id": self.message_id,
            "case_number": self.case_number, "in_reply_to": self.in_reply_to, "references": list(self.references),
            "automatic": self.automatic, "auto_kind": self.auto_kind, "reply_to": self.reply_to,
            "now": _instant(self.now), "thread_topic": self.thread_topic,
            "thread_started": None if self.thread_started is None else _instant(self.thread_started),
            "from_name": self.from_name,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Draft:
        if data.get("v") != 1:
            raise ValueError(f"unknown draft version {data.get('v')!r}")
        started = data["thread_started"]
        return cls(
            rendered=Rendered(data["subject"], data["text"], data["html"], data["locale"]),
            to=data["to"], to_name=data["to_name"], message_id=data["message_id"],
            case_number=data["case_number"], in_reply_to=data["in_reply_to"], references=tuple(data["references"]),
            automatic=data["automatic"], auto_kind=data["auto_kind"], reply_to=data["reply_to"],
            now=datetime.fromisoformat(data["now"]), thread_topic=data["thread_topic"],
            thread_started=None if started is None else datetime.fromisoformat(started), from_name=data["from_name"],
        )  # fmt: skip


def _instant(when: datetime) -> str:
    # UTC with microseconds: compose reads the Date to the second, Thread-Index to the 100 ns tick.
    return when.astimezone(UTC).isoformat()


def compose_draft(settings: Settings, draft: Draft, attachments: Sequence[tuple[str, str, bytes]] = ()) -> bytes:
    """The wire bytes of ``draft``: ``serialize(compose(...))`` with the draft's inputs."""
    msg = compose(
        settings, draft.rendered, to=draft.to, to_name=draft.to_name, message_id=draft.message_id,
        case_number=draft.case_number, in_reply_to=draft.in_reply_to, references=draft.references,
        automatic=draft.automatic, auto_kind=draft.auto_kind, attachments=attachments, reply_to=draft.reply_to,
        now=draft.now, thread_topic=draft.thread_topic, thread_started=draft.thread_started,
        from_name=draft.from_name,
    )  # fmt: skip
    return serialize(msg)
