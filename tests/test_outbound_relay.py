# SPDX-License-Identifier: MIT
"""Tests for maild.outbound.relay: reply classification, no plaintext fallback, timeouts, unsafe addresses."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from servers import CaptureRelay

from maild.config import RelaySettings, SecuritySettings, Settings
from maild.outbound.relay import PermanentFailure, Relay, TemporaryFailure

DATA = b"From: support@example.com\r\nTo: a@acme.example\r\nSubject: t\r\nMessage-ID: <t@example.com>\r\n\r\nhi\r\n"


@dataclass(frozen=True)
class Mail:
    to_addr: str
    data: bytes = DATA
    message_id: str = "<t@example.com>"


def client(relay: CaptureRelay, **overrides: object) -> Relay:
    fields: dict[str, object] = {"host": relay.host, "port": relay.port, "timeout": 5, **overrides}
    settings = Settings(security=SecuritySettings(secret="s"), relay=RelaySettings(**fields))  # type: ignore[arg-type]
    return Relay(settings, connect_wait=0)


def test_accepted_mail_reaches_the_relay_with_our_envelope_sender(relay: CaptureRelay) -> None:
    # The envelope sender is the support address, never <>.
    client(relay).deliver(Mail("a@acme.example"))
    (copy,) = relay.messages
    assert (copy.mail_from, copy.rcpt_tos) == ("support@example.com", ("a@acme.example",))


def test_4yz_is_temporary_and_5yz_permanent(relay: CaptureRelay) -> None:
    # RFC 5321 §4.2.1: the first digit decides; MAIL, RCPT and DATA are all classified.
    relay.fail_next(1, "421 4.3.2 shutting down", at="MAIL")
    with pytest.raises(TemporaryFailure, match="421"):
        client(relay).deliver(Mail("a@acme.example"))
    relay.fail_next(1, "552 5.3.4 too big", at="DATA")
    with pytest.raises(PermanentFailure, match="552"):
        client(relay).deliver(Mail("a@acme.example"))
    assert relay.messages == []


def test_starttls_required_but_not_offered_never_sends_in_plaintext(relay: CaptureRelay) -> None:
    # O7: with security=starttls a relay without STARTTLS gets nothing (temporary failure, no fallback).
    with pytest.raises(TemporaryFailure, match="STARTTLS"):
        client(relay, security="starttls").deliver(Mail("a@acme.example"))
    assert relay.messages == [] and relay.refused == []


def test_stalled_relay_times_out_as_temporary(relay: CaptureRelay) -> None:
    # O7: a relay that stalls after DATA frees the worker after the per-command timeout.
    relay.delay_next(1, 3.0)
    with pytest.raises(TemporaryFailure):
        client(relay, timeout=1).deliver(Mail("a@acme.example"))


def test_address_with_crlf_is_refused_before_any_command(relay: CaptureRelay) -> None:
    # S4: an address carrying CR/LF could smuggle SMTP commands; it is refused, nothing is sent.
    with pytest.raises(PermanentFailure, match="unsafe"):
        client(relay).deliver(Mail("a@acme.example>\r\nRCPT TO:<victim@evil.example"))
    assert relay.messages == [] and relay.refused == []


def test_a_kept_connection_ended_at_mail_sends_on_a_new_one_at_once(relay: CaptureRelay) -> None:
    # Relays end a connection after so many messages with 421 at MAIL: nothing of the message went
    # out, so it goes at once on a new connection instead of waiting for its back-off.
    sender = client(relay)
    sender.deliver(Mail("a@acme.example"))  # the connection is kept for the next one
    relay.fail_next(1, "421 4.7.0 too many messages in this connection", at="MAIL")
    sender.deliver(Mail("b@acme.example"))
    assert [m.rcpt_tos for m in relay.messages] == [("a@acme.example",), ("b@acme.example",)]
    # A fresh connection refused the same way is the relay's answer: temporary, no loop.
    sender.close()
    relay.fail_next(1, "421 4.7.0 too many messages in this connection", at="MAIL")
    with pytest.raises(TemporaryFailure, match="421"):
        sender.deliver(Mail("c@acme.example"))
    sender.close()
    assert len(relay.messages) == 2
