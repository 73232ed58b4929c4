# SPDX-License-Identifier: MIT
"""Read a delivery status notification: which of our mails failed, for whom, and why (pure part).

RFC 3464 DSNs carry a machine-readable ``message/delivery-status`` part (one per-message block, then
one block per recipient with Final-Recipient, Action, Status, Diagnostic-Code) and usually the
returned message (``message/rfc822``) or its headers (``text/rfc822-headers``, RFC 6522), which hold
the Message-ID maild gave the mail. Many MTAs still send free-text bounces (qmail, Exchange 2003,
Domino, Novell), so the text is scanned too: for a quoted ``Message-ID:`` line, for our reply address
(``support+case-N-<token>@``, which the caller verifies) and for ``<address>`` recipient lines.

The message is re-parsed here with the compat32 policy: it never raises on the odd headers DSNs carry
(the default policy's header parser does on some), and the per-recipient blocks need no more.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

from maild.ingest.parse import Inbound

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_RETURNED_TYPES = frozenset({"message/rfc822", "message/global"})
_HEADERS_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
_MSGID_LINE_RE = re.compile(r"^[ \t>]*Message-ID:[ \t]*\n?[ \t]*<([^<>\s]+@[^<>\s]+)>", re.I | re.M)
_REPLY_ADDR_RE = re.compile(r"[a-z0-9._-]+\+case-[1-9][0-9]{0,11}(?:-[a-z0-9]+)?@[a-z0-9.-]+", re.I)
_RECIPIENT_FIELD_RE = re.compile(
    r"^(?:Final|Original)-Recipient:\s*[\w-]+\s*;\s*<?([^\s<>;]+@[^\s<>;]+)>?", re.I | re.M
)
# Free-text bounces list each failed address on a line of its own ("  user@example.net",
# "<user@example.net>:", "* user@example.net", "user@example.net: 550 ...", "user@example.net on <date>").
_LONE_ADDR_RE = re.compile(
    r"^[ \t]*(?:\*[ \t]*)?<?([^\s<>@\"()]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+)>?(?:[ \t]*$|:|[ \t]+on[ \t])",
    re.I | re.M,
)
# Where the returned copy starts inside a free-text bounce: its first header line.
_RETURNED_START_RE = re.compile(
    r"^(?:Return-Path|Received|DKIM-Signature|X-Received|Delivered-To):", re.I | re.M
)
_STATUS_RE = re.compile(r"^Status:\s*([245]\.\d{1,3}\.\d{1,3})", re.I | re.M)
_DIAGNOSTIC_RE = re.compile(r"^Diagnostic-Code:\s*(?:[\w-]+\s*;)?\s*(.+(?:\n[ \t]+.+)*)", re.I | re.M)
_DELAY_RE = re.compile(
    r"\b(?:delayed|will (?:be )?retr(?:y|ied)|still trying|could not send message for past)\b", re.I
)


@dataclass(frozen=True)
class DsnInfo:
    """What a bounce says about the mail it returns."""

    original_message_ids: tuple[str, ...]  # without brackets, most reliable first
    failed_recipients: tuple[str, ...]  # lower-case
    status: str | None  # RFC 3463 enhanced status code of the first failure, e.g. "5.1.1"
    diagnostic: str | None  # the remote server's reply, e.g. "550 5.1.1 User unknown"
    permanent: bool  # a 5.x.x failure (Action: failed), not a delay warning
    reply_addresses: tuple[str, ...] = ()  # our reply addresses seen in the bounce (unverified)


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    try:
        return payload.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # an unknown charset name: the addresses and ids we look for are ASCII
        return payload.decode("utf-8", "replace")


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []


@dataclass
class _Found:
    mids: list[str]
    failed: list[str]
    status: str | None = None
    diagnostic: str | None = None
    permanent: bool = False
    delayed: bool = False


def _read_status_part(part: Message, found: _Found) -> None:
    """The per-recipient blocks of a message/delivery-status part (RFC 3464 §2.3)."""
    blocks = _blocks(part)[1:]
    if not blocks:  # a malformed part (no blank line between blocks): read it as text
        _read_status_text(_text(part) or part.as_string(), found)
        return
    for block in blocks:
        action = str(block.get("Action", "")).strip().lower()
        status = str(block.get("Status", "")).strip().split(" ")[0] or None
        failed = action == "failed" or (not action and bool(status and status.startswith("5")))
        if action == "delayed":
            found.delayed = True
        if not failed:
            continue
        found.permanent = True
        recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
        address = recipient.split(";", 1)[-1].strip().strip("<>").lower()
        if "@" in address:
            found.failed.append(address)
        if found.status is None:
            found.status = status
            diagnostic = str(block.get("Diagnostic-Code", "")).split(";", 1)[-1]
            found.diagnostic = " ".join(diagnostic.split()) or None


def _read_status_text(text: str, found: _Found) -> None:
    found.failed.extend(a.lower() for a in _RECIPIENT_FIELD_RE.findall(text))
    status = _STATUS_RE.search(text)
    if status and found.status is None:
        found.status = status.group(1)
        found.permanent = found.permanent or status.group(1).startswith("5")
    diagnostic = _DIAGNOSTIC_RE.search(text)
    if diagnostic and found.diagnostic is None:
        found.diagnostic = " ".join(diagnostic.group(1).split())


def _returned_ids(part: Message) -> list[str]:
    """Message-IDs of a returned message or of its returned headers."""
    ctype = part.get_content_type()
    if ctype in _RETURNED_TYPES:
        inner = [m for m in _blocks(part) if isinstance(m, Message)]
        return [_clean_id(str(m.get("Message-ID", ""))) for m in inner]
    headers = email.message_from_string(_text(part).lstrip(), policy=email.policy.compat32)
    return [_clean_id(str(headers.get("Message-ID", "")))]


def _clean_id(value: str) -> str:
    match = re.search(r"<([^<>\s]+)>", value)
    return match.group(1) if match else value.strip()


def read_dsn(inbound: Inbound) -> DsnInfo:
    """Read a bounce; every field may be empty when the bounce does not say."""
    msg = email.message_from_bytes(inbound.raw.data, policy=email.policy.compat32)
    found = _Found(mids=[], failed=[])
    texts: list[str] = []
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype in _DSN_TYPES:
            _read_status_part(part, found)
        elif ctype in _RETURNED_TYPES or ctype in _HEADERS_TYPES:
            found.mids.extend(_returned_ids(part))
        elif part.get_content_maintype() == "text":
            texts.append(_text(part))
    body = "\n".join(texts)
    found.mids.extend(_MSGID_LINE_RE.findall(body))
    if not found.failed:
        _read_status_text(body, found)
        human = _RETURNED_START_RE.split(body, maxsplit=1)[0]
        found.failed.extend(a.lower() for a in _LONE_ADDR_RE.findall(human))
    permanent = found.permanent or (not found.delayed and not _DELAY_RE.search(body) and found.status is None)
    # Our reply address may sit in the returned message's headers (Reply-To), which may be encoded.
    scanned = body + "\n" + inbound.raw.data.decode("latin-1")
    return DsnInfo(
        original_message_ids=_unique(found.mids),
        failed_recipients=_unique(found.failed),
        status=found.status,
        diagnostic=found.diagnostic,
        permanent=permanent and not (found.status or "").startswith("4"),
        reply_addresses=_unique([a.lower() for a in _REPLY_ADDR_RE.findall(scanned)]),
    )


def _walk(msg: Message) -> list[Message]:
    """The parts of a bounce, not descending into the returned message (its text is not the bounce's)."""
    parts: list[Message] = []
    stack = [msg]
    while stack:
        part = stack.pop(0)
        parts.append(part)
        ctype = part.get_content_type()
        if part.is_multipart() and ctype not in _RETURNED_TYPES and ctype not in _DSN_TYPES:
            stack.extend(_blocks(part))
    return parts
