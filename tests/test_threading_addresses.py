# SPDX-License-Identifier: MIT
"""HMAC-stamped reply addresses and Message-IDs (maild.threading.addresses)."""

from __future__ import annotations

import re

import pytest

from maild.threading.addresses import (
    ReplyTarget,
    case_token,
    is_our_message_id,
    message_id_for,
    parse_reply_address,
    reply_address,
)

SECRET = b"test-secret-0123456789abcdef0123"
OURS = ("support@example.com", "macd@example.com")


def test_reply_address_shape_and_round_trip() -> None:
    # The address carries the number and a 10-char lower-case base32 token, and reads back as valid.
    address = reply_address("support@example.com", 12345, SECRET)
    assert re.fullmatch(r"support\+case-12345-[a-z2-7]{10}@example\.com", address)
    assert parse_reply_address(address, OURS, SECRET) == ReplyTarget(case_number=12345, token_valid=True)


def test_reply_address_is_stable_and_secret_dependent() -> None:
    # The same case gives the same address; another secret or case gives another token.
    assert reply_address("support@example.com", 7, SECRET) == reply_address("support@example.com", 7, SECRET)
    assert case_token(7, SECRET) != case_token(7, b"another-secret")
    assert case_token(7, SECRET) != case_token(8, SECRET)
    with pytest.raises(ValueError):
        case_token(7, b"")


def test_tampered_token_is_reported_invalid() -> None:
    # A changed token, or a valid token moved to another case number, is present but wrong (S6 d).
    address = reply_address("support@example.com", 12345, SECRET)
    local, domain = address.split("@")
    token = local.rsplit("-", 1)[1]
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert parse_reply_address(f"support+case-12345-{flipped}@{domain}", OURS, SECRET) == ReplyTarget(
        12345, False
    )
    assert parse_reply_address(f"support+case-12346-{token}@{domain}", OURS, SECRET) == ReplyTarget(12346, False)
    assert parse_reply_address(address, OURS, b"wrong-secret") == ReplyTarget(12345, False)


def test_missing_token_is_none_not_false() -> None:
    # The plain form the SPEC shows parses, flagged as carrying no token.
    assert parse_reply_address("support+case-12345@example.com", OURS, SECRET) == ReplyTarget(12345, None)


@pytest.mark.parametrize(
    "address",
    [
        "support+case-12345@example.org",  # wrong domain
        "support+case-12345@mail.example.com",  # sub-domain is another domain
        "sales+case-12345@example.com",  # not one of our local bases
        "support@example.com",  # no detail at all
        "support+case-@example.com",  # no number
        "support+case-0@example.com",  # no case 0
        "support+case-012@example.com",  # leading zero: not a form we write
        "support+ticket-12345@example.com",  # other detail
        "support+case-12345-@example.com",  # empty token
        "not an address",
    ],
)
def test_foreign_or_malformed_addresses_are_not_reply_addresses(address: str) -> None:
    # Only our own intake addresses with a well-formed case detail count.
    assert parse_reply_address(address, OURS, SECRET) is None


def test_parse_is_case_insensitive_and_accepts_brackets() -> None:
    # Relays that upper-case the address, and angle brackets, do not break threading.
    address = reply_address("support@example.com", 99, SECRET)
    assert parse_reply_address(f"<{address.upper()}>", OURS, SECRET) == ReplyTarget(99, True)
    assert parse_reply_address(address, ("SUPPORT@EXAMPLE.COM",), SECRET) == ReplyTarget(99, True)


def test_other_intake_address_works_too() -> None:
    # macd@ reply addresses thread like support@ ones.
    address = reply_address("macd@example.com", 5, SECRET)
    assert address.startswith("macd+case-5-")
    assert parse_reply_address(address, OURS, SECRET) == ReplyTarget(5, True)


def test_message_id_round_trip() -> None:
    # Our Message-IDs are stable, bracket-free, and verify; forged or foreign ones do not.
    mid = message_id_for("ack", "1234", "mail.example.com", SECRET)
    assert mid == message_id_for("ack", "1234", "mail.example.com", SECRET)
    assert re.fullmatch(r"maild\.ack\.1234\.[a-z2-7]{16}@mail\.example\.com", mid)
    assert is_our_message_id(mid, "mail.example.com", SECRET)
    assert is_our_message_id(f"<{mid}>", "MAIL.example.com", SECRET)
    assert not is_our_message_id(mid.replace(".1234.", ".1235."), "mail.example.com", SECRET)
    assert not is_our_message_id(mid, "other.example.com", SECRET)
    assert not is_our_message_id(mid, "mail.example.com", b"other-secret")
    assert not is_our_message_id("CAF=abc@mail.gmail.com", "mail.example.com", SECRET)
    assert not is_our_message_id("maild.ack.1234.aaaaaaaaaaaaaaaa@mail.example.com", "mail.example.com", SECRET)


@pytest.mark.parametrize(("kind", "key"), [("ack", "a.b"), ("a ck", "1"), ("ack", ""), ("ack", "1@2")])
def test_message_id_refuses_unsafe_parts(kind: str, key: str) -> None:
    # Parts that would break the id's grammar or our parsing are refused.
    with pytest.raises(ValueError):
        message_id_for(kind, key, "mail.example.com", SECRET)
