# SPDX-License-Identifier: MIT
"""Tests for templates/email and maild.outbound.render: twins, full renders, SPEC §9 words, filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest

from maild.config import PathSettings, Settings
from maild.outbound.render import (
    fmt_time,
    normalize_locale,
    priority_label,
    render,
    status_label,
    templates_dir,
)

ROOT = templates_dir()
EN_FILES = sorted(p.name for p in (ROOT / "en").iterdir() if p.is_file())
NAMES = sorted({p.name.split(".")[0] for p in (ROOT / "en").glob("*.txt.j2") if not p.name.startswith("_")})
INTERNAL = {"staff_alert", "sla_missed", "escalation"}
WHEN = datetime(2026, 11, 21, 5, 0, tzinfo=UTC)  # Fri 2026-11-20 22:00 MST


def sample_context(name: str) -> dict[str, Any]:
    """Every key any template may use, with realistic values."""
    ctx: dict[str, Any] = {
        "desk": {"name": "Client Services Support", "phone": "+1 800 555 0100",
                 "chat_url": "https://support.example.com/chat", "status_page": "https://status.example.com",
                 "support_address": "support@example.com"},
        "recipient": {"name": "Anna Admin", "email": "anna@acme.example"},
        "org": {"name": "Acme GmbH", "timezone": "Europe/Berlin"},
        "case": {"number": 12345, "tag": "[Case #12345]", "subject": "Phones <down> & out", "status": "new",
                 "priority": "P4", "kind": "technical", "reply_address": "support+case-12345-x@example.com",
                 "linked_to": None},
        "zone": "America/Denver",
        "original": {"number": 12000, "tag": "[Case #12000]", "status": "closed"},
        "held_subject": "Need a new handset",
        "sender": {"name": "Eve User", "email": "eve@acme.example"},
        "body": "Please restart the phone.\nThen tell us if it works.",
        "staff": {"name": "Tom Tech", "email": "tom@support.example.com"},
        "awaiting_customer": True,
        "alert": {"title": "Mail could not be delivered", "detail": "550 no such user"},
        "close_at": WHEN,
        "target": {"name": "first response", "due": WHEN},
        "level": 2,
        "reason": "first response missed",
        "master": {"number": 500, "title": "Cloud voice outage", "platform": "cloud"},
        "window": {"kind": "monthly", "start": WHEN, "end": datetime(2026, 11, 21, 11, 0, tzinfo=UTC),
                   "products": ["cloud", "connect"], "description": "Platform upgrade", "reason": "Security"},
        "period": "2026-11",
        "filename": "acme-2026-11.pdf",
        "requester": {"name": "Eve User", "email": "eve@acme.example"},
        "request_subject": "Add a user",
        "approvers": ["Anna Admin <anna@acme.example>"],
    }  # fmt: skip
    return ctx


def test_every_english_template_has_german_and_portuguese_twins() -> None:
    # A mail (or partial) that exists in English must exist in every shipped locale (STYLE §3).
    assert EN_FILES, "no templates found"
    for locale in ("de", "pt"):
        have = {p.name for p in (ROOT / locale).iterdir()}
        assert sorted(set(EN_FILES) - have) == [], f"{locale} lacks twins"
        assert sorted(have - set(EN_FILES)) == [], f"{locale} has templates English lacks"


def test_the_mails_the_brief_names_all_ship() -> None:
    # The callers (intake, scheduler, CLI) rely on these template names.
    expected = {
        "ack_new_case", "ack_reopened", "ack_linked_case", "unauthorised_sender", "mpoc_unauthorised_notice",
        "staff_reply", "staff_alert", "no_response_warning", "closed_no_response", "sla_missed", "escalation",
        "master_update", "maintenance_reminder", "maintenance_start", "maintenance_end", "maintenance_connect",
        "maintenance_unscheduled", "maintenance_cancelled", "maintenance_correction", "invoice",
        "macd_approval_request",
    }  # fmt: skip
    assert expected <= set(NAMES)


@pytest.mark.parametrize("locale", ["en", "de", "pt"])
@pytest.mark.parametrize("name", NAMES)
def test_every_template_renders_with_a_full_context(name: str, locale: str) -> None:
    # Under StrictUndefined every template renders in every locale, with a one-line subject.
    out = render(name, locale, sample_context(name))
    assert out.locale == locale
    assert out.subject and "\n" not in out.subject and "{" not in out.subject
    assert "{{" not in out.text and "{%" not in out.text
    if name in INTERNAL:
        assert out.html is None
    else:
        assert out.html is not None and out.html.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("name", [n for n in NAMES if n not in INTERNAL])
def test_customer_mail_renders_without_org_or_optional_keys(name: str) -> None:
    # Mail to a sender of no known organisation, or without a case, still renders.
    ctx = sample_context(name)
    ctx["org"] = None
    ctx["desk"]["status_page"] = ""
    if name in {"unauthorised_sender", "invoice"} or name.startswith("maintenance_"):
        ctx["case"] = None
    render(name, "de", ctx)


def test_html_is_escaped_but_text_keeps_what_the_customer_typed() -> None:
    # A customer's "<down> & out" is shown literally in both parts, escaped only in HTML.
    out = render("ack_new_case", "en", sample_context("ack_new_case"))
    assert '"Phones <down> & out"' in out.text
    assert out.html is not None and "Phones &lt;down&gt; &amp; out" in out.html
    assert "<down>" not in out.html


def test_acknowledgement_states_priority_4_new_and_urgent_channels() -> None:
    # SPEC §2: the ack says Priority 4 / New until reviewed and names chat and phone, in each language.
    words = {"en": ("Priority 4", '"New"'), "de": ("Priorität 4", "„Neuer Fall“"),
             "pt": ("Prioridade 4", '"Caso novo"')}  # fmt: skip
    for locale, (prio, status) in words.items():
        text = render("ack_new_case", locale, sample_context("ack_new_case")).text
        assert prio in text and status in text
        assert "https://support.example.com/chat" in text and "+1 800 555 0100" in text
        assert "[Case #12345]" in text  # the footer says to keep the tag in the subject


def test_german_and_portuguese_use_the_support_plans_words() -> None:
    # SPEC §9: status names, Wartungsfenster/janela de manutenção, Rechnung/fatura, MPOC terms.
    ctx = sample_context("x")
    assert "„Geschlossen – keine Antwort“" in render("closed_no_response", "de", ctx).text
    assert '"Encerrado sem resposta"' in render("closed_no_response", "pt", ctx).text
    assert "Wartungsfenster" in render("maintenance_reminder", "de", ctx).text
    assert "janela de manutenção" in render("maintenance_reminder", "pt", ctx).text.lower()
    assert "Rechnung" in render("invoice", "de", ctx).subject
    assert "fatura" in render("invoice", "pt", ctx).subject
    assert "Hauptansprechpartner" in render("unauthorised_sender", "de", ctx).text
    assert "ponto de contacto principal" in render("unauthorised_sender", "pt", ctx).text
    ctx["case"]["status"] = "customer-reopened"
    assert "Vom Kunden wiedereröffnet" in render("ack_reopened", "de", ctx).text
    assert "Reaberto pelo cliente" in render("ack_reopened", "pt", ctx).text


def test_maintenance_notice_shows_mountain_time_and_the_orgs_zone() -> None:
    # SPEC §7: times in MT, plus the organisation's own zone when it differs.
    text = render("maintenance_reminder", "en", sample_context("maintenance_reminder")).text
    assert "Fri 2026-11-20 22:00 MST – Sat 2026-11-21 04:00 MST" in text
    assert "Sat 2026-11-21 06:00 CET – Sat 2026-11-21 12:00 CET" in text
    assert "cloud, connect" in text and "Platform upgrade" in text and "Security" in text
    ctx = sample_context("maintenance_reminder")
    ctx["org"]["timezone"] = "America/Denver"
    assert "In your time zone" not in render("maintenance_reminder", "en", ctx).text


def test_staff_reply_says_we_await_the_answer_only_when_asked() -> None:
    # The "awaiting customer" sentence appears only with awaiting_customer; the body is verbatim.
    ctx = sample_context("staff_reply")
    out = render("staff_reply", "en", ctx)
    assert out.text.startswith("Please restart the phone.\nThen tell us if it works.")
    assert "waiting for your answer" in out.text and "Tom Tech" in out.text
    ctx["awaiting_customer"] = False
    assert "waiting for your answer" not in render("staff_reply", "en", ctx).text


def test_linked_case_ack_explains_why_a_new_case_was_opened() -> None:
    # The linked-case ack names the old case and the reason (7 days, or closed for no response).
    ctx = sample_context("ack_linked_case")
    text = render("ack_linked_case", "en", ctx).text
    assert "#12000" in text and "#12345" in text and "more than 7 days" in text
    ctx["original"]["status"] = "closed-no-response"
    assert '"Closed No Response"' in render("ack_linked_case", "en", ctx).text


def test_missing_key_is_an_error_not_a_blank() -> None:
    # StrictUndefined: a caller that forgets a key fails loudly instead of mailing "Dear ,".
    ctx = sample_context("invoice")
    del ctx["period"]
    with pytest.raises(jinja2.UndefinedError):
        render("invoice", "en", ctx)


def test_unknown_locale_falls_back_to_english(tmp_path: Path) -> None:
    # fr is not shipped: English is used; a locale missing one mail falls back for that mail only.
    assert render("invoice", "fr", sample_context("invoice")).locale == "en"
    assert normalize_locale("pt_BR") == "pt" and normalize_locale("DE-at") == "de"
    (tmp_path / "en").mkdir()
    (tmp_path / "de").mkdir()
    for loc in ("en",):
        (tmp_path / loc / "hello.subject.j2").write_text("Hi {{ recipient.name }}")
        (tmp_path / loc / "hello.txt.j2").write_text("Hello")
    settings = Settings(paths=PathSettings(templates=str(tmp_path)))
    out = render("hello", "de", {"recipient": {"name": "A"}}, settings=settings)
    assert (out.subject, out.text, out.html, out.locale) == ("Hi A", "Hello\n", None, "en")


def test_filters() -> None:
    # The filters templates use: localized status, priority and wall-clock time with zone.
    assert status_label("resolved-follow-up-required", "de") == "Gelöst – Rückmeldung erforderlich"
    assert status_label("on-hold", "pt") == "Em espera"
    assert status_label("in-progress", "en") == "In Progress"
    assert priority_label("P4", "en") == "Priority 4"
    assert priority_label("P4", "de") == "Priorität 4"
    assert priority_label("P2", "pt") == "Prioridade 2"
    assert fmt_time(WHEN, "America/Denver", "en") == "Fri 2026-11-20 22:00 MST"
    assert fmt_time(WHEN, "America/Denver", "de") == "Fr 2026-11-20 22:00 MST"
    assert fmt_time(WHEN, "America/Denver", "pt") == "sex 2026-11-20 22:00 MST"
    assert fmt_time(datetime(2026, 7, 1, 18, 0, tzinfo=UTC), "America/Denver") == "Wed 2026-07-01 12:00 MDT"
    assert fmt_time(WHEN, "America/Sao_Paulo", "pt") == "sáb 2026-11-21 02:00 UTC-03"
