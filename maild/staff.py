# SPDX-License-Identifier: MIT
"""What technicians do to cases (from the CLI or by mail): reply, change, mark duplicate.

Each function validates first and changes nothing when the request is refused (StaffError), so a
bad command line leaves no partial state. The caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from maild.cases import assign, record_event, set_status, update_clocks
from maild.config import Settings
from maild.directory import staff_by_email
from maild.enums import Priority, Status
from maild.lifecycle import TransitionError, check_transition
from maild.mail import send
from maild.models import Case, OutboxItem


class StaffError(ValueError):
    """A refused staff request, phrased for the technician."""


def get_case(session: Session, number: int) -> Case:
    case = session.get(Case, number)
    if case is None:
        raise StaffError(f"no case {number}")
    return case


def staff_reply(
    session: Session, settings: Settings, case: Case, *, body: str, staff_email: str, now: datetime,
    await_customer: bool = False, recorded: bool = False, attachments: Sequence[tuple[str, str, bytes]] = (),
) -> list[OutboxItem]:
    """Send a technician's answer to the requester; it stops the first-response clock (SPEC §4)."""
    if not body.strip():
        raise StaffError("reply body is empty")
    staff = staff_by_email(session, staff_email)
    name = staff.name if staff else staff_email
    if Status(case.status).is_closed and not recorded:
        raise StaffError(f"case {case.id} is {case.status}; reopen it first (cases set --status in-progress)")
    items = send(session, settings, "staff_reply", to=[(case.requester_name, case.requester)], now=now,
                 case=case, automatic=False, in_reply_to=case.last_inbound_message_id,
                 body=body, staff={"name": name, "email": staff_email}, awaiting_customer=await_customer,
                 attachments=attachments)
    if case.first_responded_at is None:
        case.first_responded_at = now
    if case.status in (Status.NEW.value, Status.CUSTOMER_REOPENED.value):
        set_status(session, case, Status.IN_PROGRESS, actor=staff_email, now=now, reason="staff replied")
    case.awaiting_customer_since = now if await_customer else None
    case.no_response_warned_at = None
    update_clocks(case, settings, now)
    case.updated_at = now
    record_event(session, case, kind="staff-reply", actor=staff_email, now=now, await_customer=await_customer,
                 outbox=[i.id for i in items])
    return items


def change_case(
    session: Session, settings: Settings, case: Case, *, actor: str, now: datetime,
    status: str | None = None, priority: str | None = None, etr: datetime | None = None,
    assignee: str | None = None, hold_until: datetime | None = None, expedited: bool | None = None,
) -> None:
    """``maild cases set``: every check runs before the first change."""
    new_status = _parse_status(status) if status else None
    new_prio = _parse_priority(priority) if priority else None
    staff = None
    if assignee:
        staff = staff_by_email(session, assignee)
        if staff is None:
            raise StaffError(f"no active staff member {assignee}")
    if new_status is not None:
        try:
            check_transition(Status(case.status), new_status)
        except TransitionError as exc:
            raise StaffError(str(exc)) from None
        if new_status is Status.ON_HOLD and hold_until is None:
            raise StaffError("on-hold needs --until TIME (when the case returns to in-progress)")
        if new_status is Status.DUPLICATE:
            raise StaffError("use `maild cases duplicate N --of M` to mark a duplicate")
    if hold_until is not None and hold_until <= now:
        raise StaffError("--until must be in the future")
    if new_prio is not None and new_prio.value != case.priority:
        record_event(session, case, kind="priority", actor=actor, now=now, old=case.priority, new=new_prio.value)
        case.priority = new_prio.value
        update_clocks(case, settings, now)
    if expedited is not None and expedited != case.expedited:
        if case.kind != "macd":
            raise StaffError(f"case {case.id} is not a MACD request; only MACD work is expedited")
        case.expedited = expedited
        record_event(session, case, kind="expedited", actor=actor, now=now, expedited=expedited)
        update_clocks(case, settings, now)
    if etr is not None:
        case.etr = etr
        record_event(session, case, kind="etr", actor=actor, now=now, etr=etr.isoformat())
    if staff is not None:
        assign(session, case, staff, actor=actor, now=now)
    if new_status is not None:
        set_status(session, case, new_status, actor=actor, now=now, reason="changed by staff")
        case.hold_until = hold_until if new_status is Status.ON_HOLD else None
        if new_status is Status.RESOLVED_FOLLOW_UP:
            case.awaiting_customer_since = now
            case.no_response_warned_at = None
    case.updated_at = now


def mark_duplicate(session: Session, case: Case, master: Case, *, actor: str, now: datetime) -> None:
    if case.id == master.id:
        raise StaffError("a case cannot duplicate itself")
    if master.status == Status.DUPLICATE.value:
        raise StaffError(f"case {master.id} is itself a duplicate of {master.duplicate_of_id}; use that one")
    try:
        check_transition(Status(case.status), Status.DUPLICATE)
    except TransitionError as exc:
        raise StaffError(str(exc)) from None
    case.duplicate_of_id = master.id
    set_status(session, case, Status.DUPLICATE, actor=actor, now=now, reason=f"duplicate of case {master.id}")
    record_event(session, master, kind="duplicate-linked", actor=actor, now=now, duplicate=case.id)


def _parse_status(value: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise StaffError(f"unknown status {value!r} (one of: {', '.join(s.value for s in Status)})") from None


def _parse_priority(value: str) -> Priority:
    try:
        return Priority(value.upper())
    except ValueError:
        raise StaffError(f"unknown priority {value!r} (one of: P1, P2, P3, P4, P1G)") from None
