# SPDX-License-Identifier: MIT
"""Handing one stored outbox mail to the configured SMTP relay, and classifying what went wrong.

``deliver`` raises ``TemporaryFailure`` (4yz, refused or dropped connection, timeout: try again
later) or ``PermanentFailure`` (5yz: stop), RELIABILITY rule 4. It never sleeps for the long
back-off: that lives in the outbox row (``sender``). tenacity only retries the TCP connect once.

Safety rules it keeps:
- every command has a timeout (``[relay] timeout``, RFC 5321 §4.5.3.2): smtplib applies the socket
  timeout to each read and write, so a relay that never greets or stalls mid-DATA frees the worker;
- with ``security = starttls`` or ``tls`` the certificate and host name are verified and there is no
  plaintext fallback: a relay that does not offer STARTTLS is a temporary failure (O7);
- the AUTH password is read from the settings or ``password_file`` and never logged or stored;
- the envelope sender is the support address, never ``<>`` (a null sender would make the relay's
  own bounces vanish); addresses with CR/LF are refused before MAIL/RCPT are built (S4).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from pathlib import Path
from typing import Protocol

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from maild.config import Settings

log = logging.getLogger(__name__)


class TemporaryFailure(Exception):
    """Try again later (4yz, network trouble, timeout)."""


class PermanentFailure(Exception):
    """Do not try again (5yz, unusable address)."""


class Deliverable(Protocol):
    """What deliver needs from an outbox row."""

    @property
    def to_addr(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def message_id(self) -> str: ...


def _checked(address: str) -> str:
    if any(c in address for c in "\r\n\0<>") or not address.strip() or "@" not in address:
        raise PermanentFailure(f"refusing unsafe envelope address {address!r}")
    return address.strip()


def _reply_text(resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return " ".join(text.split())[:500]


def classify(code: int, resp: bytes | str, stage: str) -> Exception:
    """4yz -> temporary, 5yz -> permanent (RFC 5321 §4.2.1); anything else is treated as temporary."""
    text = f"{code} {_reply_text(resp)} (at {stage})"
    return PermanentFailure(text) if 500 <= code < 600 else TemporaryFailure(text)


class Relay:
    """An SMTP client for ``[relay]``. Consecutive ``deliver`` calls share one connection (one TCP and TLS
    handshake and AUTH for a batch, RFC 5321 §3.3 allows many transactions per session) until ``close``
    or a failure; a kept connection is checked with NOOP before reuse, and any error drops it."""

    def __init__(self, settings: Settings, *, connect_attempts: int = 2, connect_wait: float = 1.0) -> None:
        self.settings = settings
        self.relay = settings.relay
        self.connect_attempts = connect_attempts
        self.connect_wait = connect_wait
        self._kept: smtplib.SMTP | None = None
        if self.relay.security not in ("none", "starttls", "tls"):
            raise ValueError(f"[relay] security: unknown mode {self.relay.security!r}")

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.relay.ca_file or None)

    def _password(self) -> str:
        if self.relay.password_file:
            path = self.settings._resolve(self.relay.password_file)
            return Path(path).read_text(encoding="utf-8").strip()
        return self.relay.password

    def _open(self) -> smtplib.SMTP:
        r = self.relay
        helo = r.helo or None
        if r.security == "tls":
            return smtplib.SMTP_SSL(r.host, r.port, local_hostname=helo, timeout=r.timeout,
                                    context=self._tls_context())  # fmt: skip
        return smtplib.SMTP(r.host, r.port, local_hostname=helo, timeout=r.timeout)

    def connect(self) -> smtplib.SMTP:
        """A greeted (and, if configured, encrypted and authenticated) connection."""
        retrying = Retrying(
            stop=stop_after_attempt(self.connect_attempts), wait=wait_fixed(self.connect_wait),
            retry=retry_if_exception_type((ConnectionRefusedError, ConnectionResetError)), reraise=True,
        )  # fmt: skip
        smtp = retrying(self._open)
        try:
            smtp.ehlo()
            if self.relay.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise TemporaryFailure("relay does not offer STARTTLS; refusing to send in plaintext")
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if self.relay.username:
                smtp.login(self.relay.username, self._password())
        except BaseException:
            smtp.close()
            raise
        return smtp

    def deliver(self, item: Deliverable) -> None:
        """Send ``item.data`` to ``item.to_addr``; return on 250, raise Temporary/PermanentFailure."""
        sender = _checked(self.settings.support_address)
        rcpt = _checked(item.to_addr)
        try:
            self._deliver(sender, rcpt, item.data)
        except (TemporaryFailure, PermanentFailure):
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            code, resp = next(iter(exc.recipients.values()))
            raise classify(code, resp, "RCPT") from None
        except smtplib.SMTPSenderRefused as exc:
            raise classify(exc.smtp_code, exc.smtp_error, "MAIL") from None
        except smtplib.SMTPDataError as exc:
            raise classify(exc.smtp_code, exc.smtp_error, "DATA") from None
        except smtplib.SMTPAuthenticationError as exc:
            # Never include the credentials; the relay's reply text does not contain them.
            raise TemporaryFailure(f"relay refused AUTH: {exc.smtp_code}") from None
        except smtplib.SMTPServerDisconnected as exc:
            # RFC 5321 §3.8: a connection lost before the reply to the final dot counts as 451.
            raise TemporaryFailure(f"451 connection dropped: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            raise classify(exc.smtp_code, exc.smtp_error, "reply") from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise TemporaryFailure(f"TLS failure: {exc}") from None
        except TimeoutError as exc:
            raise TemporaryFailure(f"timeout talking to relay: {exc}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"relay unreachable: {exc}") from None
        log.info("relay accepted %s for %s", item.message_id, rcpt)

    def _session(self) -> tuple[smtplib.SMTP, bool]:
        """The kept connection if it still answers NOOP (and True), else a new one (and False)."""
        smtp, self._kept = self._kept, None
        if smtp is not None:
            try:
                if smtp.noop()[0] == 250:
                    return smtp, True
            except (smtplib.SMTPException, OSError):
                pass
            smtp.close()
        return self.connect(), False

    def _deliver(self, sender: str, rcpt: str, data: bytes, *, fresh: bool = False) -> None:
        smtp, reused = (self.connect(), False) if fresh else self._session()
        try:
            options: list[str] = []
            if not rcpt.isascii():
                if not smtp.has_extn("smtputf8"):
                    raise PermanentFailure(f"relay lacks SMTPUTF8 for {rcpt!r}")
                options.append("SMTPUTF8")
            smtp.sendmail(sender, [rcpt], data, mail_options=options)
        except smtplib.SMTPSenderRefused as exc:
            _quit(smtp)
            if reused and exc.smtp_code == 421:
                # A relay that ends a connection after so many messages (Postfix, Exim limits) says so
                # at MAIL, before any of the message went out: a new connection takes it now instead
                # of the row waiting for its back-off.
                log.info("relay closed a kept connection at MAIL (%s); sending on a new one", exc.smtp_code)
                self._deliver(sender, rcpt, data, fresh=True)
                return
            raise
        except BaseException:
            _quit(smtp)  # after any trouble the session's state is unknown: start afresh next time
            raise
        self._kept = smtp

    def close(self) -> None:
        """QUIT the kept connection, if any (the end of a sender batch)."""
        smtp, self._kept = self._kept, None
        if smtp is not None:
            _quit(smtp)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
