# SPDX-License-Identifier: MIT
"""Maintenance windows and their notices (SPEC §7): create, plan, edit, cancel, and the scheduler rule
that sends each notice once. The calendar maths lives in ``maild.maintenance_calendar``.

Which notice is due when (all wall-clock rules in ``settings.zone``):

=============  ==========================  =============================  ==============================
window kind    notice (= template name)    due from                       sent only until (then skipped)
=============  ==========================  =============================  ==============================
monthly        maintenance_reminder        one week before, same time     the window starts
monthly        maintenance_start           the start                      the window ends
monthly        maintenance_end             the end                        24 h after the end
connect        maintenance_connect         the day before, same time      the window starts
unscheduled    maintenance_unscheduled     at once when added (``add``)   24 h after the end
unscheduled    maintenance_end             the end                        24 h after the end
=============  ==========================  =============================  ==============================

A notice whose time passed while maild was down is sent late only inside that last column (a reminder
after the window started would be wrong); otherwise it is skipped, and the skip is reported once.
Each notice type goes out once per window, whatever edits follow (edits are told by a
``maintenance_correction``); a row in ``maintenance_notices`` (unique window, type, revision) is
written in the transaction that queues the mail, whose dedupe key is ``maint:<id>:<type>:<revision>``.
An unscheduled window added after it ended is announced after the fact and gets no end notice.

Recipients: every organisation that uses one of the window's products (no products: every
organisation); within it, its ``maintenance`` contacts, else its primary MPOCs. ``cancel`` and
``edit`` tell those already told (an edit also tells anyone newly affected).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import maintenance_calendar as cal
from maild import master, status_page
from maild.config import Settings
from maild.directory import contact_by_email, contacts_with_role, primary_mpocs
from maild.mail import send
from maild.models import MaintenanceNotice, MaintenanceWindow, Organisation
from maild.scheduler import Rule, mark_once
from maild.status_page import iso

KINDS = ("monthly", "connect", "unscheduled")
REMINDER, START, END = "maintenance_reminder", "maintenance_start", "maintenance_end"
CONNECT, UNSCHEDULED = "maintenance_connect", "maintenance_unscheduled"
CANCELLED, CORRECTION = "maintenance_cancelled", "maintenance_correction"
LATE_END = timedelta(hours=24)  # an end notice is still worth sending this long after the end
LOOKAHEAD = timedelta(days=cal.REMINDER_DAYS_BEFORE + 1)  # the earliest notice comes 7 days before
MAX_PLAN = timedelta(days=5 * 366)

Audience = list[tuple[Organisation | None, list[tuple[str, str]]]]


class MaintenanceError(ValueError):
    """A refused maintenance request, phrased for the operator."""


def window_json(w: MaintenanceWindow) -> dict[str, Any]:
    """CONTRACT's maintenance window, plus ``status``, ``revision`` and ``created_at``."""
    return {
        "id": w.id, "kind": w.kind, "start": iso(w.start), "end": iso(w.end), "products": list(w.products),
        "description": w.description, "reason": w.reason, "status": w.status, "revision": w.revision,
        "created_at": iso(w.created_at),
        "notices": [{"type": n.type, "sent_at": iso(n.sent_at), "recipients": list(n.recipients),
                     "revision": n.revision} for n in sorted(w.notices, key=lambda n: n.id)],
    }


# -- who is told --------------------------------------------------------------------------------


def audience(session: Session, window: MaintenanceWindow) -> Audience:
    """The affected organisations and, for each, its maintenance contacts (else its primary MPOCs)."""
    wanted = {p.lower() for p in window.products}
    out: Audience = []
    for org in session.scalars(select(Organisation).order_by(Organisation.name)):
        if wanted and not wanted & {p.lower() for p in org.products}:
            continue
        people = contacts_with_role(session, org.id, "maintenance") or primary_mpocs(session, org.id)
        out.append((org, [(c.name, c.email) for c in people]))
    return out


def audience_of(session: Session, addresses: Sequence[str]) -> Audience:
    """The given addresses grouped by their organisation (for its locale); unknown ones in English."""
    groups: dict[int | None, tuple[Organisation | None, list[tuple[str, str]]]] = {}
    for address in dict.fromkeys(a.lower() for a in addresses):
        contact = contact_by_email(session, address)
        org = contact.organisation if contact is not None else None
        entry = groups.setdefault(org.id if org else None, (org, []))
        entry[1].append((contact.name if contact else "", address))
    return list(groups.values())


def told(window: MaintenanceWindow) -> list[str]:
    return sorted({r for n in window.notices for r in n.recipients})


def send_notice(
    session: Session, settings: Settings, window: MaintenanceWindow, kind: str, now: datetime, people: Audience,
) -> dict[str, Any]:
    """Queue notice ``kind`` to ``people`` and record it; returns the tick/command action."""
    key = f"maint:{window.id}:{kind}:{window.revision}"
    context = {"kind": window.kind, "start": window.start, "end": window.end, "products": list(window.products),
               "description": window.description, "reason": window.reason}
    timing = "upcoming" if now < window.start else ("under-way" if now < window.end else "over")
    sent: list[str] = []
    unreachable: list[str] = []
    for org, to in people:
        if not to:
            unreachable.append(org.name if org else "?")
            continue
        items = send(session, settings, kind, to=to, now=now, org=org, auto_kind="auto-generated",
                     dedupe_key=key, window=context, timing=timing)
        sent += [i.to_addr for i in items]
    notice = MaintenanceNotice(type=kind, revision=window.revision, sent_at=now, recipients=sorted(set(sent)))
    window.notices.append(notice)
    session.flush()  # the unique (window, type, revision) row guards against a second sender
    return {"action": "maintenance-notice", "window": window.id, "type": kind, "revision": window.revision,
            "recipients": notice.recipients, "unreachable": unreachable}


# -- the scheduler rule -----------------------------------------------------------------------------


def schedule(window: MaintenanceWindow, settings: Settings) -> list[tuple[str, datetime, datetime]]:
    """(notice, due from, skipped from) for each scheduled notice of ``window`` (see the table above)."""
    zone = settings.zone
    if window.kind == "monthly":
        return [(REMINDER, cal.reminder_at(window.start, zone), window.start),
                (START, window.start, window.end), (END, window.end, window.end + LATE_END)]
    if window.kind == "connect":
        return [(CONNECT, cal.connect_notice_at(window.start, zone), window.start)]
    out = [(UNSCHEDULED, window.created_at, max(window.end, window.created_at) + LATE_END)]
    if window.created_at < window.end:
        out.append((END, window.end, window.end + LATE_END))
    return out


def send_due_notices(session: Session, settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Scheduler rule: every maintenance notice that is due at ``now`` and not yet sent."""
    windows = session.scalars(
        select(MaintenanceWindow)
        .where(MaintenanceWindow.status == "planned", MaintenanceWindow.end > now - LATE_END,
               MaintenanceWindow.start <= now + LOOKAHEAD)
        .order_by(MaintenanceWindow.start, MaintenanceWindow.id)
    ).all()
    actions: list[dict[str, Any]] = []
    for window in windows:
        done = {n.type for n in window.notices}
        for kind, due, stale in schedule(window, settings):
            if kind in done or now < due:
                continue
            if now >= stale:
                if mark_once(session, f"maint-skipped:{window.id}:{kind}", now):
                    actions.append({"action": "maintenance-notice-skipped", "window": window.id, "type": kind,
                                    "due": iso(due)})
                continue
            actions.append(send_notice(session, settings, window, kind, now, audience(session, window)))
    return actions


# -- what staff do ----------------------------------------------------------------------------------


def _defaults(settings: Settings, kind: str) -> tuple[list[str], str, str]:
    m = settings.maintenance
    if kind == "monthly":
        return [p.lower() for p in m.monthly_products], m.monthly_description, m.monthly_reason
    if kind == "connect":
        return [p.lower() for p in m.connect_products], m.connect_description, m.connect_reason
    return [], "", ""


def _check(kind: str, start: datetime, end: datetime, products: list[str], description: str, reason: str) -> None:
    if end <= start:
        raise MaintenanceError(f"the window must end after it starts ({iso(start)} .. {iso(end)})")
    if kind == "unscheduled" and not products:
        raise MaintenanceError("unscheduled maintenance needs --products (the affected products)")
    if kind == "unscheduled" and not (description.strip() and reason.strip()):
        raise MaintenanceError("unscheduled maintenance needs --description and --reason")


def add_window(
    session: Session, settings: Settings, *, kind: str, start: datetime, end: datetime, now: datetime,
    products: list[str] | None = None, description: str | None = None, reason: str | None = None,
) -> tuple[MaintenanceWindow, list[dict[str, Any]]]:
    """A new window; an unscheduled one is announced at once, in this transaction."""
    if kind not in KINDS:
        raise MaintenanceError(f"unknown kind {kind!r} (one of: {', '.join(KINDS)})")
    d_products, d_description, d_reason = _defaults(settings, kind)
    prods = [p.strip().lower() for p in products if p.strip()] if products is not None else d_products
    text = description if description is not None else d_description
    why = reason if reason is not None else d_reason
    _check(kind, start, end, prods, text, why)
    clash = session.scalar(select(MaintenanceWindow.id).where(MaintenanceWindow.kind == kind,
                                                              MaintenanceWindow.start == start))
    if clash is not None:
        raise MaintenanceError(f"a {kind} window starting {iso(start)} already exists (id {clash})")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    window = MaintenanceWindow(kind=kind, start=start, end=end, products=prods, description=text, reason=why,
                               status="planned", revision=1, created_at=now, updated_at=now)
    session.add(window)
    session.flush()
    actions = []
    if kind == "unscheduled":
        actions.append(send_notice(session, settings, window, UNSCHEDULED, now, audience(session, window)))
    return window, actions


def plan(session: Session, settings: Settings, *, until: date, now: datetime) -> list[MaintenanceWindow]:
    """Create the monthly and Connect windows from today up to ``until``; never the same one twice.

    A window is "the same" when one of its kind and start exists, or when ``plan`` created it before
    (a Mark per planned slot), so a window staff moved or cancelled is not planned again.
    """
    zone = settings.zone
    today = now.astimezone(zone).date()
    if until < today:
        raise MaintenanceError(f"--until {until} is in the past")
    if until - today > MAX_PLAN:
        raise MaintenanceError("--until is more than five years ahead")
    first = date.fromisoformat(settings.maintenance.connect_first_sprint)
    slots = [("monthly", s, e) for s, e in cal.monthly_windows(today, until, zone)]
    slots += [("connect", s, e) for s, e in cal.connect_windows(first, today, until, zone)]
    created: list[MaintenanceWindow] = []
    for kind, start, end in sorted(slots, key=lambda slot: slot[1]):
        if end <= now or session.scalar(select(MaintenanceWindow.id).where(
                MaintenanceWindow.kind == kind, MaintenanceWindow.start == start)) is not None:
            continue
        if not mark_once(session, f"maint-planned:{kind}:{iso(start)}", now):
            continue
        window, _ = add_window(session, settings, kind=kind, start=start, end=end, now=now)
        created.append(window)
    return created


def plan_ahead(session: Session, settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Keep the recurring windows planned ``[maintenance] plan_ahead_days`` ahead (checked once a day),
    so their reminders go out without anyone running ``maild maintenance plan``."""
    days = settings.maintenance.plan_ahead_days
    today = now.astimezone(settings.zone).date()
    if days <= 0 or not mark_once(session, f"maint-plan-ahead:{today.isoformat()}", now):
        return []
    created = plan(session, settings, until=today + timedelta(days=days), now=now)
    return [{"action": "planned", "window": w.id, "kind": w.kind, "start": iso(w.start)} for w in created]


def get_window(session: Session, window_id: int) -> MaintenanceWindow:
    window = session.get(MaintenanceWindow, window_id)
    if window is None:
        raise MaintenanceError(f"no maintenance window {window_id}")
    return window


def _changeable(window: MaintenanceWindow, now: datetime) -> None:
    if window.status == "cancelled":
        raise MaintenanceError(f"maintenance window {window.id} is cancelled")
    if window.end <= now:
        raise MaintenanceError(f"maintenance window {window.id} is already over")


def cancel_window(
    session: Session, settings: Settings, window: MaintenanceWindow, now: datetime,
) -> list[dict[str, Any]]:
    """Cancel; everyone told anything about the window gets a cancellation."""
    _changeable(window, now)
    window.status = "cancelled"
    window.updated_at = now
    already = told(window)
    if not already:
        return []
    return [send_notice(session, settings, window, CANCELLED, now, audience_of(session, already))]


def edit_window(
    session: Session, settings: Settings, window: MaintenanceWindow, now: datetime, *,
    start: datetime | None = None, end: datetime | None = None, products: list[str] | None = None,
    description: str | None = None, reason: str | None = None,
) -> list[dict[str, Any]]:
    """Change a window; once anyone was told about it, a correction goes out (new revision)."""
    _changeable(window, now)
    new_start, new_end = start or window.start, end or window.end
    new_products = list(window.products) if products is None else [p.strip().lower() for p in products if p.strip()]
    new_description = window.description if description is None else description
    new_reason = window.reason if reason is None else reason
    _check(window.kind, new_start, new_end, new_products, new_description, new_reason)
    if (new_start, new_end, new_products, new_description, new_reason) == (
            window.start, window.end, list(window.products), window.description, window.reason):
        return []
    window.start, window.end, window.products = new_start.astimezone(UTC), new_end.astimezone(UTC), new_products
    window.description, window.reason = new_description, new_reason
    window.revision += 1
    window.updated_at = now
    already = told(window)
    if not already:
        return []
    current = [a for _, people in audience(session, window) for _, a in people]
    return [send_notice(session, settings, window, CORRECTION, now, audience_of(session, [*already, *current]))]


# The master-case update reminder lives with the notice rules until the scheduler lists master.RULES;
# the status page comes last so that it sees what the rules before it published.
RULES: tuple[Rule, ...] = (plan_ahead, send_due_notices, *master.RULES, status_page.publish_rule)
