# SPDX-License-Identifier: MIT
"""A large stored message read in pieces: the skeleton the parser sees, and the attachments held out.

``email``'s parser keeps every line of a part in a list and then joins them, and mail-parser hands
attachments back as one string: together about five copies of a big attachment. For a message over
``LARGE`` bytes the queue (``maild.ingest.queue``) reads the stored bytes in chunks (``maild.blobio``)
through ``split`` instead. Each attachment part whose body passes ``HOLD`` bytes is decoded as it
streams by (base64, quoted-printable, or as it is) into an unnamed file in the spool directory,
hashed on the way, and left out of the skeleton: the message with that part's delimiter, headers
and body removed. The rest of intake reads the skeleton as the message, and ``parse`` adds the held
parts to its attachments; ``cases.store_attachment`` copies them into ``blobs`` in pieces.

Only attachments are held out: a part with a filename or ``Content-Disposition: attachment`` below a
multipart. A huge text body, or a message that is one big part, is read whole as before. The
boundary scan is the one ``limits.mime_shape`` does; anything it cannot follow (a header block over
``MAX_HEADER``) is read whole too.
"""

from __future__ import annotations

import binascii
import email.policy
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from pathlib import Path
from typing import IO

from maild.ingest.parse_headers import clean_header_text, decode_words, unsurrogate
from maild.ingest.spool import temp_file

LARGE = 4 << 20  # stored messages bigger than this are read through ``split``
HOLD = 256 << 10  # an attachment body longer than this is held out of the skeleton
MAX_HEADER = 1 << 20  # a part header block longer than this: the message is read whole
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/=]")
_ENCODINGS = ("base64", "quoted-printable", "7bit", "8bit", "binary", "")
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")  # email.feedparser's headerRE


class Unsplittable(Exception):
    """The scan cannot follow this message; read it whole."""


class HeldPart:
    """One held-out attachment: its decoded bytes in an unnamed file, their size and SHA-256."""

    def __init__(self, filename: str, content_type: str, file: IO[bytes], size: int, sha256: str) -> None:
        self.filename = filename
        self.content_type = content_type
        self.size = size
        self.sha256 = sha256
        self._file = file

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        self._file.seek(0)
        while piece := self._file.read(size):
            yield piece

    def read(self) -> bytes:
        """All of it at once, for the rare use that needs it whole (a staff reply relaying it)."""
        return b"".join(self.chunks())

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Whole:
    """What the skeleton leaves out, for the checks that must see the whole message (``limits``)."""

    size: int
    longest_line: int
    held: tuple[HeldPart, ...]


class _Decoder:
    """A part's body, line by line, decoded into a temporary file.

    Each line is decoded when the next one arrives: the line break before the next delimiter
    belongs to the delimiter (RFC 2046 §5.1.1), so the last line is decoded without it. Base64 that
    mail-parser would read differently (padding inside the data, a missing padding) raises
    Unsplittable, and the message is read whole instead.
    """

    def __init__(self, encoding: str, directory: Path | None) -> None:
        self.encoding = encoding
        self.file = temp_file(directory)
        self.hash = hashlib.sha256()
        self.size = 0
        self._pending: bytes | None = None
        self._tail = b""  # base64 characters not yet a multiple of four
        self._padded = False

    def feed(self, line: bytes) -> None:
        if self._pending is not None:
            self._out(self._decode(self._pending))
        self._pending = line

    def finish(self) -> tuple[int, str]:
        if self._pending is not None:
            last = self._pending
            self._out(self._decode(last[:-2] if last.endswith(b"\r\n") else last.removesuffix(b"\n")))
        if self._tail:
            raise Unsplittable("base64 that does not end on a whole quantum")
        self.file.flush()
        return self.size, self.hash.hexdigest()

    def _decode(self, line: bytes) -> bytes:
        if self.encoding == "quoted-printable":
            return binascii.a2b_qp(line)  # line by line is the same: a soft break ends its own line
        if self.encoding != "base64":
            return line
        chars = _NOT_B64.sub(b"", line)
        pad = chars.find(b"=")
        if self._padded and chars.strip(b"="):
            raise Unsplittable("base64 data after its padding")
        if pad >= 0:
            if chars[pad:].strip(b"="):
                raise Unsplittable("base64 padding inside the data")
            self._padded = True
        chars = self._tail + chars
        cut = len(chars) // 4 * 4
        self._tail = chars[cut:]
        try:
            return binascii.a2b_base64(chars[:cut])
        except binascii.Error as exc:
            raise Unsplittable(f"base64 the parser reads otherwise: {exc}") from exc

    def _out(self, data: bytes) -> None:
        if data:
            self.hash.update(data)
            self.size += len(data)
            self.file.write(data)


class _Part:
    """A part below a multipart, from its delimiter line on, while it is a candidate to hold out."""

    def __init__(self, lead: list[bytes], headers: Message) -> None:
        self.lead = lead  # delimiter line, header lines, blank line: written only if the part stays
        self.headers = headers
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.decoder: _Decoder | None = None


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines with their line breaks, from chunks cut anywhere."""
    rest: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if rest:
                rest.append(chunk[start:end + 1])
                yield b"".join(rest)
                rest = []
            else:
                yield chunk[start:end + 1]
            start = end + 1
        if start < len(chunk):
            rest.append(chunk[start:])
    if rest:
        yield b"".join(rest)


def _filename(block: bytes) -> str:
    """The part's file name as mail-parser reads it: 8-bit header bytes as UTF-8 (compat32 would turn
    them into U+FFFD), RFC 2231 and RFC 2047 decoded."""
    headers = HeaderParser(policy=email.policy.compat32).parsestr(block.decode("utf-8", "replace"))
    return decode_words(unsurrogate(str(headers.get_filename() or ""))) or "attachment"


def _holdable(headers: Message) -> bool:
    """What mail-parser also takes as an attachment (an inline text part with a file name is body
    text), in a transfer encoding decoded here."""
    if str(headers.get("content-transfer-encoding", "")).strip().lower() not in _ENCODINGS:
        return False  # x-uuencode and the like: mail-parser's reading stays
    if headers.get_content_disposition() == "attachment":
        return True
    return bool(headers.get_filename()) and headers.get_content_maintype() != "text"


def _attached(headers: Message) -> bool:
    """A container mail-parser extracts whole, children and all (its ``blocks_inline``)."""
    disposition = headers.get_content_disposition()
    return disposition not in (None, "inline") or (disposition != "inline" and bool(headers.get_filename()))


def split(chunks: Iterable[bytes], directory: Path | None = None, hold: int = HOLD) -> tuple[bytes, Whole]:
    """The skeleton of the message in ``chunks``, and what it leaves out. Raises Unsplittable."""
    splitter = _Splitter(directory, hold)
    try:
        for line in _lines(chunks):
            splitter.line(line)
        return splitter.finish()
    except BaseException:
        splitter.discard()
        raise


class _Splitter:
    def __init__(self, directory: Path | None, hold: int) -> None:
        self.directory = directory
        self.hold = hold
        self.out = bytearray()
        self.stack: list[bytes | None] = []  # open multiparts' boundaries; None: an enclosed message
        self.in_headers = True
        self.header: list[bytes] = []
        self.header_bytes = 0
        self.lead: list[bytes] = []  # the delimiter line of the part whose headers are being read
        self.part: _Part | None = None
        self.held: list[HeldPart] = []
        self.size = 0
        self.longest = 0
        # Nothing is held out below an attached container or an enclosed message: mail-parser
        # extracts those whole, held-out children included. The stack depth at which that began.
        self.frozen_at: int | None = None

    def line(self, line: bytes) -> None:
        self.size += len(line)
        self.longest = max(self.longest, len(line.rstrip(b"\r\n")))
        cr = line.find(b"\r")
        if cr >= 0 and not (cr == len(line) - 2 and line.endswith(b"\n")):
            raise Unsplittable("a lone CR, which the parser takes as a line break")
        if self.in_headers:
            if self.stack and self._match(line) is not None:  # a part that ends inside its headers
                self._end_headers(b"")
                self._delimiter(line)
                return
            self._header_line(line)
        elif not self._delimiter(line):
            self._body_line(line)

    def _header_line(self, line: bytes) -> None:
        blank = not line.strip(b"\r\n")
        if not blank and _HEADER_LINE.match(line):
            self.header.append(line)
            self.header_bytes += len(line)
            if self.header_bytes > MAX_HEADER:
                raise Unsplittable("a header block too long to follow")
            return
        # A blank line ends the header block; so does a line that is no header, which the parser
        # then reads as the first line of the body (email.feedparser does the same).
        self._end_headers(line if blank else b"")
        if blank:
            return
        if self.in_headers:  # an enclosed message/rfc822 starts here
            self._header_line(line)
        elif not self._delimiter(line):
            self._body_line(line)

    def _end_headers(self, line: bytes) -> None:
        block, self.header, self.header_bytes = b"".join(self.header), [], 0
        headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
        self.in_headers = False
        kind = headers.get_content_type()
        container = kind.split("/")[0] in ("multipart", "message")
        if self.lead and not container and self.frozen_at is None and _holdable(headers):
            self.part = _Part([*self.lead, block, line], headers)
            self.lead = []
            return
        self.out += b"".join(self.lead) + block + line
        self.lead = []
        if self.frozen_at is None and container and (kind.startswith("message/") or _attached(headers)):
            self.frozen_at = len(self.stack)
        boundary = headers.get_boundary()
        if kind.startswith("multipart/") and boundary:
            try:
                self.stack.append(boundary.encode("utf-8", "surrogateescape").rstrip())
            except UnicodeEncodeError as exc:
                raise Unsplittable("a boundary that is not text") from exc
        elif kind in ("message/rfc822", "message/global"):
            self.stack.append(None)
            self.in_headers = True  # the enclosed message's own header block follows

    def _match(self, line: bytes) -> tuple[int, bool] | None:
        """(stack index, closing) of the open boundary ``line`` delimits, as email.feedparser's
        boundary pattern matches it; None when it is no delimiter."""
        if not line.startswith(b"--") or not self.stack:
            return None
        marker = line[2:].rstrip(b"\r\n").rstrip(b" \t")
        for i in range(len(self.stack) - 1, -1, -1):
            boundary = self.stack[i]
            if boundary is not None and marker.startswith(boundary) and marker[len(boundary):] in (b"", b"--"):
                return i, marker[len(boundary):] == b"--"
        return None

    def _delimiter(self, line: bytes) -> bool:
        found = self._match(line)
        if found is None:
            return False
        index, closing = found
        self._end_part()
        del self.stack[index + 1:]
        if closing:
            self.stack.pop()
            self.out += line
        else:
            self.lead = [line]
            self.in_headers = True
        if self.frozen_at is not None and len(self.stack) <= self.frozen_at:
            self.frozen_at = None
        return True

    def _body_line(self, line: bytes) -> None:
        part = self.part
        if part is None:
            self.out += line
        elif part.decoder is not None:
            part.decoder.feed(line)
        else:
            part.body.append(line)
            part.body_bytes += len(line)
            if part.body_bytes > self.hold:
                encoding = str(part.headers.get("content-transfer-encoding", "")).strip().lower()
                part.decoder = _Decoder(encoding, self.directory)
                for earlier in part.body:
                    part.decoder.feed(earlier)
                part.body = []

    def _end_part(self) -> None:
        part, self.part = self.part, None
        if part is None:
            return
        if part.decoder is None:  # small after all: it stays in the skeleton
            self.out += b"".join(part.lead) + b"".join(part.body)
            return
        size, digest = part.decoder.finish()
        filename = _filename(part.lead[1])
        ctype = " ".join(clean_header_text(part.headers.get_content_type()).split()) or "application/octet-stream"
        self.held.append(HeldPart(filename, ctype, part.decoder.file, size, digest))

    def finish(self) -> tuple[bytes, Whole]:
        if self.in_headers:
            self.out += b"".join(self.lead) + b"".join(self.header)
        self._end_part()
        return bytes(self.out), Whole(self.size, self.longest, tuple(self.held))

    def discard(self) -> None:
        for part in self.held:
            part.close()
        if self.part is not None and self.part.decoder is not None:
            self.part.decoder.file.close()
