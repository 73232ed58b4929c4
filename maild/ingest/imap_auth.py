# SPDX-License-Identifier: MIT
"""IMAP connection set-up for the poller: the mailbox URL, TLS policy, login or XOAUTH2, and guards.

``imaps://`` is implicit TLS; ``imap://`` upgrades with STARTTLS (RFC 3501 §6.2.1) whenever the server
offers it, and otherwise talks in clear only to a loopback host; ``?tls=starttls`` demands STARTTLS and
``?tls=none`` (loopback only, for tests) skips it. A failed TLS set-up is an error, never a silent
downgrade (STYLE §4). Certificates are verified against the system store or ``[imap] ca_file``.

Everything that ends up in an IMAP command (user, password, token, folder names) is checked for CR,
LF and NUL first: imapclient quotes strings but does not refuse line breaks, so a crafted value could
smuggle a second command (RELIABILITY S4; imapclient #657, CVE-2025-15366).
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import ipaddress
import logging
import shlex
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from imapclient import IMAPClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.db import transaction
from maild.mail import alert_staff, staff_recipients
from maild.models import ImapState
from maild.scheduler import Action, mark_once

log = logging.getLogger(__name__)

TIMEOUT = 60.0  # seconds for connect and for each read (IDLE sets its own)
TOKEN_TTL = 300.0  # an OAuth token is re-read after this long; access tokens usually live an hour
TOKEN_COMMAND_TIMEOUT = 30.0
LITERAL_SLACK = 64 * 1024  # headroom over [smtp] max_message_size before a server literal is refused


class ImapConfigError(ValueError):
    """The IMAP configuration cannot work (bad URL, unsafe value, TLS impossible): no retry helps."""


class ImapAuthError(Exception):
    """The server refused our credentials, or no OAuth token could be obtained."""


def check_safe(what: str, value: str) -> str:
    """``value`` unchanged, or ImapConfigError if it could break out of an IMAP command (S4)."""
    if any(c in value for c in "\r\n\0"):
        raise ImapConfigError(f"{what} contains CR, LF or NUL; refusing to build an IMAP command with it")
    return value


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MailboxUrl:
    """One mailbox to poll, from ``imap[s]://user:pass@host:port/MAILBOX[?tls=starttls|none&kind=K]``."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    mailbox: str
    tls: str  # implicit | starttls (required) | opportunistic | none
    kind: str | None = None

    @property
    def key(self) -> str:
        """The ImapState key and the stem of every source_key: ``user@host:port/MAILBOX``."""
        return f"{self.user}@{self.host}:{self.port}/{self.mailbox}"

    @property
    def tag(self) -> str:
        """A short stable digest of ``key`` for mark and dedupe keys (those columns are short)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]


def parse_url(url: str) -> MailboxUrl:
    """Parse and check a mailbox URL (CONTRACT ``MAILD_IMAP_URL``); ImapConfigError when unusable."""
    check_safe("[imap] url", url)
    parts = urlsplit(url.strip())
    if parts.scheme not in ("imap", "imaps"):
        raise ImapConfigError(f"[imap] url must start with imap:// or imaps://, got {parts.scheme or url!r}")
    try:
        port = parts.port or (993 if parts.scheme == "imaps" else 143)
    except ValueError as exc:
        raise ImapConfigError(f"[imap] url: bad port: {exc}") from None
    host, user = parts.hostname or "", unquote(parts.username or "")
    if not host or not user:
        raise ImapConfigError("[imap] url needs a user and a host: imap://user:pass@host:port/INBOX")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"tls", "kind"}
    if unknown:
        raise ImapConfigError(f"[imap] url: unknown parameter(s) {', '.join(sorted(unknown))}")
    tls = "implicit" if parts.scheme == "imaps" else query.get("tls", "opportunistic")
    if parts.scheme == "imaps" and query.get("tls", "implicit") != "implicit":
        raise ImapConfigError("[imap] url: imaps:// is always TLS; drop the tls= parameter")
    if tls not in ("implicit", "starttls", "opportunistic", "none"):
        raise ImapConfigError(f"[imap] url: tls must be starttls or none, got {tls!r}")
    if tls == "none" and not is_loopback(host):
        raise ImapConfigError("[imap] url: tls=none is only allowed for a loopback host")
    mailbox = unquote(parts.path.lstrip("/")) or "INBOX"
    return MailboxUrl(host=host, port=port, user=check_safe("[imap] url user", user),
                      password=check_safe("[imap] url password", unquote(parts.password or "")),
                      mailbox=check_safe("[imap] url mailbox", mailbox), tls=tls, kind=query.get("kind"))


def mailbox_urls(settings: Settings) -> list[str]:
    """The configured mailbox URLs: ``[imap] url`` holds one, or several separated by white space."""
    return settings.imap.url.split()


class TokenSource:
    """An OAuth 2 access token for XOAUTH2 (RFC 7628 style SASL), from a command's stdout or a file.

    The token is cached for ``ttl`` seconds and re-read on the next connection after that, so a
    token refreshed by an external helper is picked up before the old one expires; an auth failure
    drops the cache at once. The token is never logged.
    """

    def __init__(self, command: str, file: Path | None, ttl: float = TOKEN_TTL) -> None:
        self.command, self.file, self.ttl = command, file, ttl
        self._token: str | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenSource | None:
        imap = settings.imap
        if not imap.oauth_token_command and not imap.oauth_token_file:
            return None
        file = Path(imap.oauth_token_file).expanduser() if imap.oauth_token_file else None
        if file is not None and not file.is_absolute():
            file = Path(settings.base_dir) / file
        return cls(imap.oauth_token_command, file)

    def get(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() - self._read_at > self.ttl:
                self._token = check_safe("OAuth token", self._read())
                self._read_at = time.monotonic()
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _read(self) -> str:
        if self.command:
            try:
                done = subprocess.run(shlex.split(self.command), capture_output=True, text=True, check=False,
                                      timeout=TOKEN_COMMAND_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ImapAuthError(f"oauth_token_command failed: {exc}") from None
            if done.returncode != 0:
                raise ImapAuthError(f"oauth_token_command exited {done.returncode}: {done.stderr.strip()[:200]}")
            token = done.stdout.strip()
        else:
            assert self.file is not None
            try:
                token = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ImapAuthError(f"cannot read oauth_token_file: {exc}") from None
        if not token:
            raise ImapAuthError("the OAuth token is empty")
        return token


def _cap_literals(client: IMAPClient, limit: int) -> None:
    """Refuse a server literal over ``limit`` before reading it (RELIABILITY R8).

    CPython's imaplib before gh-119511 allocates the whole announced size at once, so a hostile
    ``* 1 FETCH (BODY[] {9999999999}`` would exhaust memory; we drop the connection instead.
    """
    imap: Any = client._imap
    read = imap.read

    def capped(size: int) -> bytes:
        if size > limit:
            raise imaplib.IMAP4.abort(f"server sent a {size}-byte literal, over the {limit}-byte cap")
        data: bytes = read(size)
        return data

    imap.read = capped


def connect(mb: MailboxUrl, settings: Settings, tokens: TokenSource | None) -> IMAPClient:
    """A logged-in IMAPClient (UIDs only) for ``mb``; ImapAuthError or ImapConfigError or OSError."""
    context = ssl.create_default_context(cafile=settings.imap.ca_file or None)
    client = IMAPClient(mb.host, port=mb.port, use_uid=True, ssl=mb.tls == "implicit", ssl_context=context,
                        timeout=TIMEOUT)
    try:
        _cap_literals(client, settings.smtp.max_message_size + LITERAL_SLACK)
        _secure(client, mb, context)
        _login(client, mb, tokens)
    except BaseException:
        discard(client)
        raise
    return client


def discard(client: IMAPClient) -> None:
    """Close a connection that may already be broken, without masking the error that broke it."""
    with contextlib.suppress(OSError, IMAPClient.Error):
        client.shutdown()


def _secure(client: IMAPClient, mb: MailboxUrl, context: ssl.SSLContext) -> None:
    if mb.tls in ("implicit", "none"):
        return
    if client.has_capability("STARTTLS"):
        client.starttls(context)  # a failure raises: we never continue in clear after asking for TLS
        return
    if mb.tls == "starttls":
        raise ImapConfigError(f"{mb.host}:{mb.port} does not offer STARTTLS, but the URL requires it")
    if not is_loopback(mb.host):
        raise ImapConfigError(f"{mb.host}:{mb.port} offers no STARTTLS; refusing to send credentials in clear "
                              "(use imaps://)")
    log.debug("imap %s: no STARTTLS offered on loopback; continuing in clear", mb.key)


def _login(client: IMAPClient, mb: MailboxUrl, tokens: TokenSource | None) -> None:
    try:
        if tokens is not None:
            client.oauth2_login(mb.user, tokens.get())  # SASL XOAUTH2, the RFC 7628 bearer format
        else:
            client.login(mb.user, mb.password)
    except IMAPClient.Error as exc:
        if tokens is not None:
            tokens.invalidate()  # perhaps expired early: read a fresh one next time
        if isinstance(exc, IMAPClient.AbortError):
            raise  # the connection broke: not an authentication verdict
        raise ImapAuthError(f"login as {mb.user} refused: {exc}") from None


def alert(session: Session, settings: Settings, now: datetime, *, key: str, title: str, detail: str) -> None:
    """Queue an operator alert in the caller's transaction; ``key`` makes it once-only."""
    if not staff_recipients(session, settings):
        log.warning("no staff address for the alert %r", title)
        return
    alert_staff(session, settings, title=title, detail=detail, now=now, dedupe_key=key)


def report_auth_failure(factory: sessionmaker[Session], settings: Settings, mb: MailboxUrl, exc: Exception,
                        now: datetime) -> None:
    """Log a refused login loudly and alert staff, at most once per mailbox and hour."""
    log.error("IMAP LOGIN FAILED for %s: %s -- check [imap] url and the OAuth token; backing off", mb.key, exc)
    hour = f"imap-auth:{mb.tag}:{now:%Y-%m-%dT%H}"
    try:
        with transaction(factory) as session:
            if mark_once(session, hour, now):
                alert(session, settings, now, key=hour, title=f"IMAP login to {mb.host} failed",
                      detail=f"maild cannot log in to {mb.key}: {exc}. Intake from this mailbox is stopped "
                             "until the credentials are fixed.")
    except Exception:
        log.exception("imap %s: could not record the login-failure alert", mb.key)


def silent_mailbox_rule(session: Session, settings: Settings, now: datetime) -> list[Action]:
    """Scheduler rule: tell staff once per silence period when a mailbox has had no mail for too long."""
    hours = settings.imap.silent_alert_hours
    if hours <= 0:
        return []
    keys = {}
    for url in mailbox_urls(settings):
        try:
            mb = parse_url(url)
        except ImapConfigError:
            continue
        keys[mb.key] = mb
    actions: list[Action] = []
    for state in session.scalars(select(ImapState).where(ImapState.mailbox.in_(list(keys)))):
        since = state.last_message_at
        if since is None or now - since < timedelta(hours=hours):
            continue
        if state.last_alert_at is not None and state.last_alert_at >= since:
            continue  # already told about this silence
        state.last_alert_at = now
        alert(session, settings, now, key=f"imap-silent:{keys[state.mailbox].tag}:{since:%Y%m%dT%H%M%S}",
              title=f"No mail in {keys[state.mailbox].mailbox} for {hours} hours",
              detail=f"{state.mailbox} has received nothing since {since.isoformat()}. Is mail still "
                     "delivered to it?")
        actions.append({"action": "imap-silent-alert", "mailbox": state.mailbox, "since": since.isoformat()})
    return actions
