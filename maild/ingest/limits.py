# SPDX-License-Identifier: MIT
"""Bounds checked on the raw bytes before the full parse (RELIABILITY rule 7, R3-R6).

CPython's ``email`` package is measured to stall or crash on some shapes: 32,000 addresses in one To
header take 13.8 s to parse, MIME nesting 1,000 deep raises RecursionError, 10,000 parts keep
mail-parser busy for seconds. ``check`` finds these with a few linear scans of the bytes (no parser,
no decoding) and returns the reason; the pipeline then quarantines the message, whose raw bytes are
already committed, so staff see it and nothing is lost (the SMTP 250 stays true).

What SMTP refuses earlier, in ``maild.ingest.smtp``: SIZE over the limit (552 at MAIL), a body over
the limit (552 after DATA), a DATA line over 1,000 octets (aiosmtpd's 500), a header block over
1 MB (552) and more than 50 Received headers (554). The same size and header bounds are checked here
again because IMAP and ``maild ingest`` bypass SMTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from maild.config import Settings

if TYPE_CHECKING:
    from maild.ingest.bigmail import Whole

# Address headers the parser reads (parse_headers.addresses): each address costs the parser real time.
_ADDRESS_HEADER = re.compile(rb"^(?:to|cc|bcc|from|reply-to)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]*)"|([^;\s]+))', re.I)
_FIELD_START = re.compile(rb"^[^ \t\r\n]", re.M)
_SPLIT_AT_ONCE = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The bounds; the defaults are far above anything in the real-mail corpus (../shared/corpus)."""

    max_size: int = 25 * 1024 * 1024  # [smtp] max_message_size
    max_line: int = 1_000_000  # octets in one line (base64 without line breaks exists in the wild)
    max_header_bytes: int = 1024 * 1024  # the same cap as SMTP's (smtp.MAX_HEADER_BYTES)
    max_headers: int = 2_000  # header fields in the top-level header block
    max_addresses: int = 1_000  # "@" in To/Cc/Bcc/From/Reply-To together
    max_depth: int = 100  # nested multiparts and message/rfc822 parts
    max_parts: int = 1_000  # MIME parts in the whole message


def limits_for(settings: Settings) -> Limits:
    return Limits(max_size=settings.smtp.max_message_size)


def header_end(data: bytes) -> int:
    """Where the top-level header block ends (the first empty line), or len(data)."""
    if data.startswith((b"\r\n", b"\n")):
        return 0
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(data)


def check(data: bytes, limits: Limits, whole: Whole | None = None) -> str | None:
    """The first bound ``data`` exceeds, as a reason for staff; None when it is within all of them.

    With ``whole``, ``data`` is a large message's skeleton (``maild.ingest.bigmail``): its size, its
    longest line and the parts held out of it count too.
    """
    size = whole.size if whole is not None else len(data)
    if size > limits.max_size:
        return f"limit: message of {size} bytes exceeds {limits.max_size}"
    longest = max(map(len, _lines(data)), default=0)
    if whole is not None:
        longest = max(longest, whole.longest_line)
    if longest > limits.max_line:
        return f"limit: a line of {longest} octets exceeds {limits.max_line}"
    header = data[: header_end(data)]
    if len(header) > limits.max_header_bytes:
        return f"limit: header block of {len(header)} bytes exceeds {limits.max_header_bytes}"
    fields = len(_FIELD_START.findall(header))
    if fields > limits.max_headers:
        return f"limit: {fields} header fields exceed {limits.max_headers}"
    addresses = sum(m.group(1).count(b"@") for m in _ADDRESS_HEADER.finditer(header))
    if addresses > limits.max_addresses:
        return f"limit: {addresses} addresses in the address headers exceed {limits.max_addresses}"
    depth, parts = mime_shape(data, limits.max_depth, limits.max_parts)
    parts += len(whole.held) if whole is not None else 0
    if depth > limits.max_depth:
        return f"limit: MIME nesting deeper than {limits.max_depth}"
    if parts > limits.max_parts:
        return f"limit: more than {limits.max_parts} MIME parts"
    return None


def _lines(data: bytes) -> Iterable[bytes]:
    """The lines of ``data`` without their LF: a list for ordinary mail (fastest), one at a time for a
    large message, whose list of lines would cost about 1.4× the message (IMAP, ``maild ingest``)."""
    if len(data) <= _SPLIT_AT_ONCE:
        return data.split(b"\n")
    return _each_line(data)


def _each_line(data: bytes) -> Iterator[bytes]:
    pos = 0
    while (end := data.find(b"\n", pos)) >= 0:
        yield data[pos:end]
        pos = end + 1
    yield data[pos:]


def _boundary(content_type: bytes) -> bytes | None:
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    return (found.group(1) if found.group(1) is not None else found.group(2)).rstrip()


def mime_shape(data: bytes, max_depth: int, max_parts: int) -> tuple[int, int]:
    """(nesting depth, part count) by scanning boundary lines; stops as soon as a bound is passed.

    A stack holds the open multiparts' boundaries (``None`` for an enclosed message/rfc822); a
    delimiter line closes everything opened inside the part it ends. An approximation of what the
    parser will do, erring towards counting more, never a parse.
    """
    stack: list[bytes | None] = []
    depth = parts = 0
    in_headers, content_type = True, b""
    collecting = False
    for raw_line in _lines(data):
        line = raw_line.rstrip(b"\r")
        if in_headers:
            if line.strip():
                if line[:1] in (b" ", b"\t"):
                    content_type += line if collecting else b""
                else:
                    collecting = line[:13].lower() == b"content-type:"
                    content_type = line[13:] if collecting else content_type
                continue
            in_headers, collecting = False, False
            kind = content_type.strip().lower()
            if kind.startswith(b"multipart/"):
                stack.append(_boundary(content_type))
            elif kind.startswith((b"message/rfc822", b"message/global")):
                stack.append(None)
                in_headers = True  # the enclosed message's own header block follows
            content_type = b""
            depth = max(depth, len(stack))
            if depth > max_depth:
                return depth, parts
            continue
        if not line.startswith(b"--") or not stack:
            continue
        marker = line[2:].rstrip(b" \t")
        for i in range(len(stack) - 1, -1, -1):
            boundary = stack[i]
            if boundary is None or not marker.startswith(boundary):
                continue
            rest = marker[len(boundary):]
            if rest not in (b"", b"--"):
                continue
            del stack[i + 1 :]
            if rest == b"--":
                stack.pop()
            else:
                parts += 1
                if parts > max_parts:
                    return depth, parts
                in_headers, content_type = True, b""
            break
    return depth, parts
