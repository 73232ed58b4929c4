# SPDX-License-Identifier: MIT
"""Reply addresses (``support+case-N-<token>@``) and maild's own Message-IDs, both HMAC-stamped.

SPEC §3 rule 3 threads a message by the case's reply address. A bare ``support+case-12345@`` can be
guessed by anyone, so maild writes a token next to the number (RELIABILITY S6): an HMAC-SHA256 of the
case number under the deployment's secret, cut to 10 base32 characters (50 bits). Base32 in lower
case uses only ``a-z2-7``: no character that a mail system folds, quotes or treats specially in a
local part (RFC 5321 §4.1.2 dot-atom; some MTAs lower-case local parts, which is why it is lower case).

Outbound Message-IDs carry a longer token the same way, so maild can tell its own mail when it comes
back (RELIABILITY L4) and can trust an In-Reply-To that names one of its ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

REPLY_TOKEN_LENGTH = 10  # 50 bits: a guessed address threads nothing (S6)
MID_TOKEN_LENGTH = 16  # 80 bits: Message-IDs are long-lived and seen by every recipient

_CASE_PART_RE = re.compile(r"case-([1-9][0-9]{0,11})(?:-([a-z0-9]+))?")
_MID_PART_RE = re.compile(r"[a-z0-9_-]+", re.IGNORECASE)
_MID_RE = re.compile(
    r"maild\.([a-z0-9_-]+)\.([a-z0-9_-]+)\.([a-z2-7]+)@([^@\s<>]+)", re.IGNORECASE
)


@dataclass(frozen=True)
class ReplyTarget:
    """What a reply address says: the case number, and whether its token checked out.

    ``token_valid`` is None when the address carried no token (the plain ``support+case-N@`` form),
    False when a token was present but wrong (tampered or guessed), True when it is ours.
    """

    case_number: int
    token_valid: bool | None


def _token(secret: bytes, message: bytes, length: int) -> str:
    if not secret:
        raise ValueError("an empty HMAC secret would make every token guessable")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:length]


def case_token(case_number: int, secret: bytes) -> str:
    """The token of a case's reply address."""
    return _token(secret, f"case:{case_number}".encode("ascii"), REPLY_TOKEN_LENGTH)


def _split(address: str) -> tuple[str, str] | None:
    address = address.strip().strip("<>").strip().lower()
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        return None
    return local, domain.rstrip(".")


def reply_address(support_address: str, case_number: int, secret: bytes) -> str:
    """``support+case-12345-<token>@example.com`` for the intake address ``support@example.com``."""
    parts = _split(support_address)
    if parts is None:
        raise ValueError(f"not an address: {support_address!r}")
    if case_number < 1:
        raise ValueError(f"case numbers are positive, got {case_number}")
    local, domain = parts
    base = local.split("+", 1)[0]
    return f"{base}+case-{case_number}-{case_token(case_number, secret)}@{domain}"


def parse_reply_address(
    address: str, support_addresses: Iterable[str], secret: bytes
) -> ReplyTarget | None:
    """The case a reply address names, or None when it is not one of our reply addresses.

    Only ``<base>+case-N[-token]@<domain>`` where ``<base>@<domain>`` is one of our intake addresses
    counts; comparison ignores case (local parts are case-sensitive in RFC 5321 §2.4, but ours are
    written in lower case and some relays change case on the way back).
    """
    parts = _split(address)
    if parts is None:
        return None
    local, domain = parts
    base, plus, detail = local.partition("+")
    if not plus:
        return None
    ours = {p for p in (_split(a) for a in support_addresses) if p is not None}
    if (base, domain) not in {(loc.split("+", 1)[0], dom) for loc, dom in ours}:
        return None
    match = _CASE_PART_RE.fullmatch(detail)
    if match is None:
        return None
    number = int(match.group(1))
    token = match.group(2)
    if token is None:
        return ReplyTarget(case_number=number, token_valid=None)
    valid = hmac.compare_digest(token, case_token(number, secret))
    return ReplyTarget(case_number=number, token_valid=valid)


def _mid_token(kind: str, key: str, domain: str, secret: bytes) -> str:
    message = f"mid:{kind}\0{key}\0{domain.lower()}".encode()
    return _token(secret, message, MID_TOKEN_LENGTH)


def message_id_for(kind: str, key: str, domain: str, secret: bytes) -> str:
    """A stable Message-ID for an outbound mail, without angle brackets.

    ``maild.<kind>.<key>.<token>@<domain>``: the same (kind, key) always gives the same id, so a
    re-sent outbox row keeps its Message-ID and receivers can de-duplicate (STYLE §5). ``kind`` and
    ``key`` may use letters, digits, ``_`` and ``-`` only (RFC 5322 §3.6.4 dot-atom-text, with the
    dot reserved as our separator).
    """
    for name, value in (("kind", kind), ("key", key)):
        if not _MID_PART_RE.fullmatch(value):
            raise ValueError(f"Message-ID {name} must match [A-Za-z0-9_-]+, got {value!r}")
    domain = domain.strip().lower()
    if not domain or not re.fullmatch(r"[a-z0-9.-]+", domain):
        raise ValueError(f"not a domain: {domain!r}")
    return f"maild.{kind}.{key}.{_mid_token(kind, key, domain, secret)}@{domain}"


def is_our_message_id(mid: str, domain: str, secret: bytes) -> bool:
    """Whether a Message-ID (with or without brackets) was made by ``message_id_for`` with our secret."""
    match = _MID_RE.fullmatch(mid.strip().strip("<>").strip())
    if match is None:
        return False
    kind, key, token, mid_domain = match.groups()
    domain = domain.strip().lower()
    if mid_domain.lower() != domain:
        return False
    return hmac.compare_digest(token.lower(), _mid_token(kind, key, domain, secret))
