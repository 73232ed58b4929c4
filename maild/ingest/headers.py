# SPDX-License-Identifier: MIT
"""Header hygiene before policy runs (RELIABILITY rule 6, S7; RFC 8601 §5).

Two things happen to every parsed message before screening, threading and authorisation read it:

* Headers nobody outside may set are stripped from the ``Inbound`` the policy sees: every
  ``X-Maild-*`` header (maild's own control namespace; RT CVE-2023-41259 was such a header honoured
  from outside) and every ``Authentication-Results`` that claims *our* authserv-id
  (``[security] authserv_id``, also written with a trailing dot), which only maild itself may add
  (RFC 8601 §5). ``X-Maild-Loop`` is kept: it is the loop screen's input, it grants nothing, and a
  forged value does not match the HMAC token the screen compares it with. The raw bytes stay as
  received; only the policy's view changes.
* The verdict of a *trusted* upstream MTA (``[security] trusted_authserv_ids``) is read: when its
  ``Authentication-Results`` says ``dmarc=fail``, the From address is not the sender's, so the sender
  is unverified and may neither open a case nor add to one (``authorize``). A DMARC pass never grants
  anything (a forged pass in the header must not help an attacker), so only failures are read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

from maild.config import SecuritySettings
from maild.ingest.parse import Inbound

OWN_PREFIX = "x-maild-"
KEPT = frozenset({"x-maild-loop"})
_COMMENT = re.compile(r"\([^()]*\)")


@dataclass(frozen=True)
class Screened:
    inbound: Inbound  # the message as policy may see it
    stripped: tuple[str, ...]  # names of the headers removed, in order
    unverified: str | None  # why the sender is unverified, or None


def _normal_id(value: str) -> str:
    return value.strip().lower().rstrip(".")


def _without_comments(value: str) -> str:
    for _ in range(10):  # nested comments come off one level per round
        stripped = _COMMENT.sub(" ", value)
        if stripped == value:
            break
        value = stripped
    return value


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 §2.2), lower-case, no final dot."""
    head = _without_comments(value).split(";", 1)[0].split()
    return _normal_id(head[0]) if head else ""


def results(value: str) -> dict[str, str]:
    """``method -> result`` of an Authentication-Results value, e.g. ``{"dmarc": "fail"}``."""
    found: dict[str, str] = {}
    for clause in _without_comments(value).split(";")[1:]:
        method, sep, rest = clause.strip().partition("=")
        if not sep or not rest.split():
            continue
        found.setdefault(method.split("/")[0].strip().lower(), rest.split()[0].strip().lower())
    return found


def _is_ours(name: str, value: str, own_id: str) -> bool:
    if name.startswith(OWN_PREFIX):
        return name not in KEPT
    return name == "authentication-results" and bool(own_id) and authserv_id(value) == own_id


def dmarc_failure(headers: Iterable[tuple[str, str]], trusted: Iterable[str]) -> str | None:
    """The reason a trusted upstream verdict makes the sender unverified, or None."""
    trusted_ids = {_normal_id(t) for t in trusted if t.strip()}
    for name, value in headers:
        if name != "authentication-results":
            continue
        server = authserv_id(value)
        if server in trusted_ids and results(value).get("dmarc") == "fail":
            return f"upstream Authentication-Results of {server} say dmarc=fail"
    return None


def screen_headers(inbound: Inbound, security: SecuritySettings) -> Screened:
    """Strip the headers only maild may write, then read the trusted upstream DMARC verdict."""
    own_id = _normal_id(security.authserv_id)
    kept = tuple((n, v) for n, v in inbound.headers if not _is_ours(n, v, own_id))
    stripped = tuple(n for n, v in inbound.headers if _is_ours(n, v, own_id))
    if stripped:
        inbound = dataclasses.replace(inbound, headers=kept)
    return Screened(inbound, stripped, dmarc_failure(kept, security.trusted_authserv_ids))
