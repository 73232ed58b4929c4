# SPDX-License-Identifier: MIT
"""The internal escalation path (SPEC §4): levels 1-4, each with named managers per product line.

A case starts at level 1 (the assigned technician). It moves up one level when the customer asks for
it by mail (``wants_escalation`` on the first line of their reply), when staff run
``maild cases escalate N``, or when a target is missed (``maild.timers``, per
``[escalation] notify_next_level_on_miss``). Each step tells the managers configured for the new
level and the organisation's products (``[escalation] levels``; the product key ``"*"`` means every
product line). The organisation's own escalation contacts are the customer side of the path: they are
never mailed by maild, but the managers' mail lists them so that a manager knows whom to call.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maild.cases import record_event
from maild.config import Settings
from maild.directory import contact_by_email, contacts_with_role
from maild.enums import Role
from maild.mail import staff_recipients
from maild.models import Case, Organisation
from maild.outbound.outbox import case_context, queue_mail

MAX_LEVEL = 4
ALL_PRODUCTS = "*"
_MAX_LINE = 80  # a longer first line is a sentence about escalation, not a request for it

# Whole-line forms of "please escalate" (after ``_normalise``). Only short imperative requests match, so
# "please do not escalate", "the problem escalated overnight" or "Eskalation ist nicht nötig" do not.
_OBJ_EN = r"(?: (?:this|it|this case|this ticket|this issue|this request|the case|the ticket|the issue|my case))?"
_TAIL_EN = r"(?: (?:now|asap|immediately|urgently|to (?:a|your) manager|to management|to the next level))?"
_DE_OBJ = r"(?:diesen fall|den fall|das|dies|dieses ticket|das ticket|mein ticket|meinen fall)"
_OBJ_PT = r"(?: (?:este caso|o caso|este chamado|o chamado|este ticket|isto|isso|meu caso))?"
_PATTERNS = tuple(re.compile(p) for p in (
    # en: "Escalate", "Please escalate this!", "Kindly escalate this case asap", "Could you escalate this?"
    rf"(?:(?:please|kindly|pls) )?escalate{_OBJ_EN}{_TAIL_EN}(?: please)?",
    rf"(?:can|could|would|will) you (?:please )?escalate{_OBJ_EN}{_TAIL_EN}(?: please)?",
    rf"(?:i|we) (?:would like to|want to|wish to|need to) escalate{_OBJ_EN}{_TAIL_EN}(?: please)?",
    r"(?:please )?(?:escalation|escalation request|request(?:ing)? escalation)(?: please)?",
    # de: "Bitte eskalieren", "Bitte eskalieren Sie diesen Fall", "Bitte den Fall eskalieren", "Eskalation bitte"
    rf"(?:bitte )?eskalieren(?: sie)?(?: bitte)?(?: {_DE_OBJ})?(?: bitte)?",
    rf"(?:bitte )?{_DE_OBJ} (?:bitte )?eskalieren(?: bitte)?",
    rf"(?:können|könnten|würden) sie (?:bitte )?(?:{_DE_OBJ} )?(?:bitte )?eskalieren",
    r"(?:bitte )?(?:eskalation|eskalierung)(?: bitte)?(?: anfordern| angefordert)?",
    # pt: "Escalar", "Por favor escalar", "Escalem este caso, por favor", "Favor escalonar"
    rf"(?:(?:por favor|favor) )?(?:escalar|escalonar|escale|escalem|escalone|escalonem){_OBJ_PT}(?: por favor)?",
    rf"(?:pode|podem|podes) (?:por favor )?(?:escalar|escalonar){_OBJ_PT}(?: por favor)?",
    r"(?:(?:por favor|favor) )?(?:escalonamento|escalamento|pedido de escalonamento|pedido de escalamento)"
    r"(?: por favor)?",
))


def _normalise(line: str) -> str:
    text = line.casefold().replace(",", " ").replace(";", " ")
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .!?…:-").strip()


def wants_escalation(text: str) -> bool:
    """Whether a customer's new text (quotes removed) opens with a request to escalate the case."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first or len(first.strip()) > _MAX_LINE:
        return False
    line = _normalise(first)
    return any(p.fullmatch(line) for p in _PATTERNS)


@dataclass(frozen=True)
class Escalated:
    """The result of one escalation step: the case's level now, whether it rose, who was told."""

    level: int
    raised: bool
    told: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"level": self.level, "raised": self.raised, "told": list(self.told)}


def managers(settings: Settings, level: int, org: Organisation | None, case: Case) -> list[str]:
    """The configured managers of ``level`` for the organisation's products (and the case's platform)."""
    lines = settings.escalation.levels.get(str(level), {})
    products = [*(org.products if org else []), *([case.platform] if case.platform else []), ALL_PRODUCTS]
    found: list[str] = []
    for product in products:
        for addr in lines.get(product, []):
            if addr.lower() not in found:
                found.append(addr.lower())
    return found


def customer_contacts(session: Session, org: Organisation | None) -> list[dict[str, str]]:
    """The organisation's escalation list (its order first), then contacts with the escalation role."""
    if org is None:
        return []
    people = [c for c in (contact_by_email(session, e) for e in org.escalation) if c is not None and c.active]
    people += [c for c in contacts_with_role(session, org.id, Role.ESCALATION.value) if c not in people]
    return [{"name": c.name, "email": c.email, "phone": c.phone, "title": c.title} for c in people]


def escalate(
    session: Session, settings: Settings, case: Case, *, actor: str, now: datetime, reason: str,
    tell_assignee: bool = True, dedupe_key: str | None = None,
) -> Escalated:
    """Raise ``case`` one level (at most ``MAX_LEVEL``) and tell that level's managers.

    With ``tell_assignee`` the assignee (every staff recipient if unassigned) is told as well. At the
    top level the case stays there, and the top level is told again: the customer insists.
    """
    old = case.escalation_level or 1
    level = min(old + 1, MAX_LEVEL)
    case.escalation_level = level
    case.updated_at = now
    org = case.organisation
    to = [("", m) for m in managers(settings, level, org, case)]
    if tell_assignee:
        to += [(case.assignee.name, case.assignee.email)] if case.assignee else staff_recipients(session, settings)
    context = {"case": case_context(settings, case), "level": level, "reason": reason,
               "org": {"name": org.name, "timezone": org.timezone} if org else None,
               "contacts": customer_contacts(session, org)}
    # Internal mail carries no case (no Reply-To into the case, no entry in the customer's thread):
    # a manager answering it must not write to the customer.
    items = queue_mail(session, settings, template="escalation", locale="en", to=to, context=context, now=now,
                       auto_kind="auto-generated", dedupe_key=dedupe_key)
    told = tuple(i.to_addr for i in items)
    record_event(session, case, kind="escalation", actor=actor, now=now, level=level, previous=old, reason=reason,
                 told=list(told), outbox=[i.id for i in items])
    return Escalated(level=level, raised=level > old, told=told)


def cmd_cases_escalate(args: argparse.Namespace) -> int:
    """``maild cases escalate N [--reason TEXT] [--as EMAIL] [--now T]``: staff escalate a case."""
    from maild.cases import case_json
    from maild.commands import emit, now_of, settings_of, store
    from maild.db import transaction
    from maild.enums import Status
    from maild.staff import StaffError, get_case

    settings = settings_of(args)
    now = now_of(args, settings)
    with transaction(store(settings)) as session:
        case = get_case(session, args.number)
        if Status(case.status).is_closed:
            raise StaffError(f"case {case.id} is {case.status}; reopen it first (cases set --status in-progress)")
        actor = (args.as_ or (case.assignee.email if case.assignee else "staff")).lower()
        result = escalate(session, settings, case, actor=actor, now=now,
                          reason=args.reason or f"escalated by {actor}")
        out = case_json(case)
        out["escalation"] = result.as_json()
    emit(out)
    return 0
