# SPDX-License-Identifier: MIT
"""Rendering outbound mail from the Jinja2 templates in templates/email/<locale>/ (SPEC §6).

A mail ``<name>`` is three files per locale: ``<name>.subject.j2`` (one line), ``<name>.txt.j2``
(the plain-text body, always sent) and an optional ``<name>.html.j2`` (the HTML alternative). A locale
that lacks the mail falls back to English as a whole, so one mail never mixes two languages.

Undefined variables are errors (``StrictUndefined``): a template that names a key its caller did not
pass must fail in the test suite, not send "Dear ," to a customer. Only ``.html.j2`` files are
autoescaped; subjects and plain text must keep a customer's "<" and "&" as typed.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2

import maild
from maild.config import Settings
from maild.enums import Status

LOCALES = ("en", "de", "pt")
DEFAULT_LOCALE = "en"

# SPEC §9: the support plan's own words for each status.
_STATUS_WORDS: dict[str, dict[Status, str]] = {
    "de": {
        Status.NEW: "Neuer Fall",
        Status.IN_PROGRESS: "In Bearbeitung",
        Status.DUPLICATE: "Duplikat",
        Status.ON_HOLD: "In der Warteschleife",
        Status.SHIPPING: "Versand",
        Status.RESOLVED_FOLLOW_UP: "Gelöst – Rückmeldung erforderlich",
        Status.CUSTOMER_REOPENED: "Vom Kunden wiedereröffnet",
        Status.CLOSED_NO_RESPONSE: "Geschlossen – keine Antwort",
        Status.CLOSED: "Abgeschlossen",
    },
    "pt": {
        Status.NEW: "Caso novo",
        Status.IN_PROGRESS: "Em curso",
        Status.DUPLICATE: "Duplicado",
        Status.ON_HOLD: "Em espera",
        Status.SHIPPING: "Expedição",
        Status.RESOLVED_FOLLOW_UP: "Resolvido – acompanhamento necessário",
        Status.CUSTOMER_REOPENED: "Reaberto pelo cliente",
        Status.CLOSED_NO_RESPONSE: "Encerrado sem resposta",
        Status.CLOSED: "Fechado",
    },
}
_PRIORITY_WORD = {"en": "Priority", "de": "Priorität", "pt": "Prioridade"}
_GLOBAL_WORD = {"en": "global", "de": "global", "pt": "global"}
_WEEKDAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "de": ("Mo", "Di", "Mi", "Do", "Fr", "Sa", "So"),
    "pt": ("seg", "ter", "qua", "qui", "sex", "sáb", "dom"),
}


@dataclass(frozen=True)
class Rendered:
    """One rendered mail: a single-line subject, the plain text and the optional HTML alternative."""

    subject: str
    text: str
    html: str | None
    locale: str = DEFAULT_LOCALE  # the locale actually used, after the fallback


def scrub(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates (undecodable bytes of a customer's mail kept by
    ``surrogateescape``) become "?" instead of failing the whole transaction later."""
    return text.encode("utf-8", "replace").decode("utf-8")


def normalize_locale(locale: str | None) -> str:
    """``de-AT``, ``pt_BR``, ``DE`` -> ``de``/``pt``; anything unknown -> English."""
    base = (locale or "").replace("_", "-").split("-", 1)[0].strip().lower()
    return base if base in LOCALES else DEFAULT_LOCALE


def status_label(status: str | Status, locale: str = DEFAULT_LOCALE) -> str:
    """The name of a status as customers read it in ``locale`` (SPEC §4 in English, §9 otherwise)."""
    try:
        value = Status(str(status))
    except ValueError:
        by_label = {s.label.casefold(): s for s in Status}
        found = by_label.get(str(status).casefold())
        if found is None:
            return str(status)
        value = found
    return _STATUS_WORDS.get(normalize_locale(locale), {}).get(value, value.label)


def priority_label(priority: str | int, locale: str = DEFAULT_LOCALE) -> str:
    """``P4`` -> ``Priority 4`` / ``Priorität 4`` / ``Prioridade 4``; ``P1G`` -> ``... 1 (global)``."""
    loc = normalize_locale(locale)
    text = str(priority).strip().upper().removeprefix("P")
    if text.endswith("G"):
        return f"{_PRIORITY_WORD[loc]} {text[:-1]} ({_GLOBAL_WORD[loc]})"
    return f"{_PRIORITY_WORD[loc]} {text}"


def fmt_time(when: datetime, zone_name: str | None = None, locale: str = DEFAULT_LOCALE) -> str:
    """Wall-clock time in ``zone_name`` with its abbreviation, e.g. ``Fri 2026-11-20 22:00 MST``.

    The ISO date order is kept in every locale (it is unambiguous across the desk's customers); the
    weekday is localised. Zones without a letter abbreviation (tzdata writes "-03") show ``UTC-03``.
    """
    if when.tzinfo is None:
        raise ValueError(f"fmt_time needs an aware datetime, got {when.isoformat()}")
    try:
        zone = ZoneInfo(zone_name) if zone_name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC
    local = when.astimezone(zone)
    abbrev = local.tzname() or "UTC"
    if abbrev[:1] in "+-":
        abbrev = f"UTC{abbrev}"
    weekday = _WEEKDAYS[normalize_locale(locale)][local.weekday()]
    return f"{weekday} {local:%Y-%m-%d %H:%M} {abbrev}"


def templates_dir(settings: Settings | None = None) -> Path:
    """Where the templates live: ``[paths] templates``, the source checkout, or the installed copy."""
    if settings is not None and settings.paths.templates:
        return settings._resolve(settings.paths.templates)
    checkout = Path(maild.__file__).resolve().parent.parent / "templates" / "email"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "maild" / "templates" / "email"


@functools.lru_cache(maxsize=8)
def environment(directory: Path) -> jinja2.Environment:
    """The Jinja2 environment over one templates directory (cached: templates compile once)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters["status_label"] = status_label
    env.filters["priority_label"] = priority_label
    env.filters["fmt_time"] = fmt_time
    return env


def available(directory: Path, locale: str, name: str) -> bool:
    return (directory / locale / f"{name}.txt.j2").is_file()


def render(
    template: str,
    locale: str,
    context: Mapping[str, Any],
    *,
    settings: Settings | None = None,
    directory: Path | None = None,
) -> Rendered:
    """Render mail ``template`` in ``locale`` (English when the locale lacks it).

    ``locale`` (the one used) is added to the context, so templates can pass it to the filters.
    Raises ``jinja2.TemplateNotFound`` for an unknown mail and ``jinja2.UndefinedError`` when the
    context lacks a key the template uses.
    """
    root = directory if directory is not None else templates_dir(settings)
    env = environment(root)
    loc = normalize_locale(locale)
    if not available(root, loc, template):
        loc = DEFAULT_LOCALE
    ctx = {**context, "locale": loc}
    subject = env.get_template(f"{loc}/{template}.subject.j2").render(ctx)
    text = env.get_template(f"{loc}/{template}.txt.j2").render(ctx)
    html: str | None = None
    if (root / loc / f"{template}.html.j2").is_file():
        html = env.get_template(f"{loc}/{template}.html.j2").render(ctx)
    # A subject is one line whatever the template or a customer's subject put in it.
    return Rendered(
        subject=scrub(" ".join(subject.split())),
        text=scrub(text.strip() + "\n"),
        html=None if html is None else scrub(html),
        locale=loc,
    )
