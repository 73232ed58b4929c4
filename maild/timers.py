# SPDX-License-Identifier: MIT
"""The case clocks as scheduler rules (SPEC §4): no-response warning and closure, the end of a hold,
and missed first-response / update targets (which escalate, per ``[escalation]``).

Each rule is ``rule(session, settings, now) -> list[action]`` and is idempotent for any ``now``: every
thing it does is guarded by a ``Mark`` key naming the case and the due time, and the mail it queues
carries the same key as its dedupe key. Where a rule changes a case, the event is dated at the due
time, not at the tick, so a late tick (maild was down) records the same history as a punctual one.

Choices where SPEC §4 is silent:
- The no-response warning is dated at its due time, unless the closing time that would follow from it
  has passed too (maild was down through the whole grace period): then the warning is dated now and
  the grace period runs from now, so the customer always gets the full grace period after the warning
  and never a warning and a closure in one tick.
- A hold pauses every clock: a case On Hold gets no warnings or target reminders, and when the hold
  ends the first-response or update target and the no-response clock start again from its end. A
  case reopened (from Closed, Closed No Response or Duplicate) restarts its targets the same way.
- Targets are not checked while the customer has the ball (awaiting their answer, or Resolved
  Follow-up Required), nor for master cases (their hourly updates are the master-case rule's job).
- An ETR in the future replaces update reminders; once it passes without a new update, the update is
  overdue as of the ETR.
- Internal mail (``sla_missed``, ``escalation``) is in English and carries no case Reply-To, so a
  manager's answer never reaches the customer.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from maild import sla
from maild.cases import business_calendar, record_event, set_status
from maild.clock import BusinessCalendar
from maild.config import Settings
from maild.enums import CaseKind, Priority, Status
from maild.escalation import MAX_LEVEL, escalate
from maild.mail import send, staff_recipients
from maild.models import Case, CaseEvent, RawMessage
from maild.outbound.outbox import case_context, queue_mail
from maild.scheduler import Action, Rule, mark_once

log = logging.getLogger(__name__)

MAILD = "maild"
CLOSED = tuple(s.value for s in Status if s.is_closed)
# A move out of one of these restarts the targets (the clock was stopped meanwhile).
PAUSED = (*CLOSED, Status.ON_HOLD.value)
TARGET_STATUSES = tuple(s.value for s in (Status.NEW, Status.IN_PROGRESS, Status.SHIPPING,
                                          Status.CUSTOMER_REOPENED))


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


# -- no response --------------------------------------------------------------------------------------


def no_response(session: Session, settings: Settings, now: datetime) -> list[Action]:
    """Warn a silent customer after N business days, close the case after the grace period.

    Not while SMTP mail accepted before ``now`` still waits in the queue (``maild.ingest.queue``): it
    may be the customer's answer, and the next tick runs the rule once it has been read.
    """
    waiting = session.scalar(select(RawMessage.id).where(RawMessage.outcome.is_(None),
                                                         RawMessage.received_at <= now).limit(1))
    if waiting is not None:
        log.info("no-response rule deferred: accepted mail (raw #%s on) is still being processed", waiting)
        return []
    cal = business_calendar(settings)
    query = select(Case).where(Case.awaiting_customer_since.is_not(None),
                               Case.status.not_in(PAUSED)).order_by(Case.id)
    actions: list[Action] = []
    for case in session.scalars(query).all():
        done = _warn(session, settings, cal, case, now) if case.no_response_warned_at is None \
            else _close(session, settings, cal, case, now)
        if done is not None:
            actions.append(done)
    return actions


def _warn(session: Session, settings: Settings, cal: BusinessCalendar, case: Case, now: datetime) -> Action | None:
    assert case.awaiting_customer_since is not None
    grace = settings.lifecycle.grace_business_days
    due = sla.no_response_warning_due(case.awaiting_customer_since, cal, settings.lifecycle.no_response_business_days)
    if now < due:
        return None
    warned_at = due if now < sla.no_response_close_due(due, cal, grace) else now
    close_at = sla.no_response_close_due(warned_at, cal, grace)
    key = f"no-response:{case.id}:{_utc(case.awaiting_customer_since)}:warning"
    if not mark_once(session, key, now):
        return None
    case.no_response_warned_at = warned_at
    items = send(session, settings, "no_response_warning", to=[(case.requester_name, case.requester)], now=now,
                 case=case, auto_kind="auto-generated", in_reply_to=case.last_inbound_message_id, dedupe_key=key,
                 close_at=close_at)
    record_event(session, case, kind="no-response-warning", actor=MAILD, now=warned_at, close_at=_utc(close_at),
                 outbox=[i.id for i in items])
    return {"action": "no-response-warning", "case": case.id, "at": _utc(warned_at), "close_at": _utc(close_at)}


def _close(session: Session, settings: Settings, cal: BusinessCalendar, case: Case, now: datetime) -> Action | None:
    assert case.awaiting_customer_since is not None and case.no_response_warned_at is not None
    due = sla.no_response_close_due(case.no_response_warned_at, cal, settings.lifecycle.grace_business_days)
    if now < due:
        return None
    key = f"no-response:{case.id}:{_utc(case.awaiting_customer_since)}:closed"
    if not mark_once(session, key, now):
        return None
    set_status(session, case, Status.CLOSED_NO_RESPONSE, actor=MAILD, now=due,
               reason="no answer from the customer after the warning")
    send(session, settings, "closed_no_response", to=[(case.requester_name, case.requester)], now=now, case=case,
         auto_kind="auto-generated", in_reply_to=case.last_inbound_message_id, dedupe_key=key)
    return {"action": "closed-no-response", "case": case.id, "at": _utc(due)}


# -- holds ----------------------------------------------------------------------------------------------


def hold_ended(session: Session, settings: Settings, now: datetime) -> list[Action]:
    """An On Hold case whose hold time has come returns to In Progress, its clocks restarted."""
    query = select(Case).where(Case.status == Status.ON_HOLD.value, Case.hold_until.is_not(None),
                               Case.hold_until <= now).order_by(Case.id)
    actions: list[Action] = []
    for case in session.scalars(query).all():
        end = case.hold_until
        assert end is not None
        if not mark_once(session, f"hold:{case.id}:{_utc(end)}", now):
            continue
        set_status(session, case, Status.IN_PROGRESS, actor=MAILD, now=end, reason="hold ended")
        case.hold_until = None
        restart_clocks(case, settings, end)
        actions.append({"action": "hold-ended", "case": case.id, "at": _utc(end)})
    return actions


def restart_clocks(case: Case, settings: Settings, at: datetime) -> None:
    """Start the case's running target, and the no-response clock, again from ``at``."""
    cal = business_calendar(settings)
    if case.first_responded_at is None:
        case.first_response_due = _first_due(case, at, cal)
    elif case.next_update_due is not None:
        case.next_update_due = sla.next_update_due(Priority(case.priority), at, cal)
    if case.awaiting_customer_since is not None:
        case.awaiting_customer_since = at
        case.no_response_warned_at = None


def _first_due(case: Case, start: datetime, cal: BusinessCalendar) -> datetime:
    if case.kind == CaseKind.MACD.value:
        return sla.macd_first_response_due(start, case.expedited, cal)
    return sla.first_response_due(Priority(case.priority), start, cal)


# -- targets --------------------------------------------------------------------------------------------


def sla_targets(session: Session, settings: Settings, now: datetime) -> list[Action]:
    """Tell staff (and the next escalation level) once about each missed first-response or update target."""
    overdue = or_(and_(Case.first_responded_at.is_(None), Case.first_response_due < now),
                  and_(Case.first_responded_at.is_not(None), Case.next_update_due < now))
    query = select(Case).where(Case.status.in_(TARGET_STATUSES), Case.kind != CaseKind.MASTER.value,
                               Case.awaiting_customer_since.is_(None), overdue).order_by(Case.id)
    cal = business_calendar(settings)
    actions: list[Action] = []
    for case in session.scalars(query).all():
        target = _missed_target(session, case, cal, now)
        if target is not None:
            actions += _tell_miss(session, settings, case, *target, now=now)
    return actions


def _missed_target(session: Session, case: Case, cal: BusinessCalendar, now: datetime) -> tuple[str, datetime] | None:
    """(target name, due) of the running target if it is overdue at ``now``."""
    restarted = session.scalar(
        select(CaseEvent.at).where(CaseEvent.case_id == case.id, CaseEvent.kind == "status",
                                   CaseEvent.from_status.in_(PAUSED)).order_by(CaseEvent.id.desc()).limit(1))
    if case.first_responded_at is None:
        name, due = "first response", case.first_response_due
        if due is not None and restarted is not None:
            due = max(due, _first_due(case, restarted, cal))
    else:
        name, due = "update", case.next_update_due
        if due is not None and case.etr is not None:
            due = max(due, case.etr)
        if due is not None and restarted is not None:
            due = max(due, sla.next_update_due(Priority(case.priority), restarted, cal))
    if due is None or now <= due:
        return None
    return name, due


def _tell_miss(session: Session, settings: Settings, case: Case, name: str, due: datetime, *,
               now: datetime) -> list[Action]:
    key = f"sla:{case.id}:{name.replace(' ', '-')}:{_utc(due)}"
    if not mark_once(session, key, now):
        return []
    to = [(case.assignee.name, case.assignee.email)] if case.assignee else staff_recipients(session, settings)
    org = case.organisation
    context: dict[str, Any] = {"case": case_context(settings, case), "target": {"name": name, "due": due},
                               "org": {"name": org.name, "timezone": org.timezone} if org else None}
    items = queue_mail(session, settings, template="sla_missed", locale="en", to=to, context=context, now=now,
                       auto_kind="auto-generated", dedupe_key=key)
    record_event(session, case, kind="sla-missed", actor=MAILD, now=due, target=name, due=_utc(due),
                 told=[i.to_addr for i in items], outbox=[i.id for i in items])
    actions: list[Action] = [{"action": "sla-missed", "case": case.id, "target": name, "due": _utc(due)}]
    if settings.escalation.notify_next_level_on_miss and case.escalation_level < MAX_LEVEL:
        result = escalate(session, settings, case, actor=MAILD, now=now, reason=f"{name} target missed",
                          tell_assignee=False, dedupe_key=f"{key}:escalation")
        actions.append({"action": "escalation", "case": case.id, **result.as_json()})
    return actions


RULES: tuple[Rule, ...] = (no_response, hold_ended, sla_targets)
