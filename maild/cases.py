# SPDX-License-Identifier: MIT
"""Case persistence: open, add messages, change status, assign, and the audit trail.

Every function works in the caller's session and never commits. Every change writes a CaseEvent with
who, when and why.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import UTC, date, datetime, time
from typing import Any, cast

import nh3
from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from maild import blobio, sla
from maild.clock import BusinessCalendar, make_calendar
from maild.config import Settings
from maild.enums import CaseKind, Direction, Priority, Status
from maild.ingest.bigmail import HeldPart
from maild.ingest.parse import Inbound
from maild.ingest.quoting import split
from maild.models import (
    AttachmentRow,
    Blob,
    Case,
    CaseEvent,
    CaseMessage,
    Organisation,
    RawMessage,
    Staff,
    ThreadId,
)


def business_calendar(settings: Settings) -> BusinessCalendar:
    t = settings.time
    return _calendar(t.zone, tuple(t.holidays), t.holiday_country, t.business_day_start, t.business_day_end)


@functools.lru_cache(maxsize=8)
def _calendar(zone: str, extra: tuple[str, ...], country: str, start: str, end: str) -> BusinessCalendar:
    cal = make_calendar(zone, [date.fromisoformat(d) for d in extra], use_default=bool(country),
                        country=country or "US")
    return BusinessCalendar(zone=cal.zone, holidays=cal.holidays, country=cal.country,
                            day_start=time.fromisoformat(start), day_end=time.fromisoformat(end))


def record_event(
    session: Session, case: Case, *, kind: str, actor: str, now: datetime,
    from_status: str | None = None, to_status: str | None = None, **detail: Any,
) -> CaseEvent:
    event = CaseEvent(case_id=case.id, at=now, actor=actor, kind=kind, from_status=from_status,
                      to_status=to_status, detail=detail)
    session.add(event)
    return event


def set_status(session: Session, case: Case, new: Status, *, actor: str, now: datetime, reason: str) -> None:
    old = case.status
    if old == new.value:
        return
    case.status = new.value
    case.updated_at = now
    if new in (Status.CLOSED, Status.CLOSED_NO_RESPONSE, Status.DUPLICATE):
        case.closed_at = now
        case.awaiting_customer_since = None
        case.no_response_warned_at = None
    elif Status(old).is_closed:
        case.closed_at = None
    record_event(session, case, kind="status", actor=actor, now=now, from_status=old, to_status=new.value,
                 reason=reason)


def open_case(
    session: Session, settings: Settings, *, kind: str, requester: str, requester_name: str,
    organisation: Organisation | None, subject: str, now: datetime, actor: str,
    linked_to: int | None = None, priority: Priority = Priority.P4, reason: str = "opened by email",
) -> Case:
    """A new case at ``priority`` (P4 for every case opened by mail, SPEC §2), status New."""
    case = Case(kind=kind, priority=priority.value, status=Status.NEW.value,
                organisation_id=organisation.id if organisation else None, requester=requester.lower(),
                requester_name=requester_name, subject=subject[:2000], created_at=now, updated_at=now,
                linked_to_id=linked_to, participants=[requester.lower()], expedited=False)
    update_clocks(case, settings, now, opened=True)  # before the INSERT, so it carries the due times
    session.add(case)
    session.flush()
    record_event(session, case, kind="opened", actor=actor, now=now, to_status=Status.NEW.value, reason=reason,
                 linked_to=linked_to)
    if settings.lifecycle.assign == "round-robin":
        assign_round_robin(session, case, now=now)
    return case


def update_clocks(case: Case, settings: Settings, now: datetime, *, opened: bool = False) -> None:
    """(Re)compute the first-response and next-update due times from the case's priority."""
    cal = business_calendar(settings)
    prio = Priority(case.priority)
    if case.kind == CaseKind.MACD.value:
        if opened or case.first_responded_at is None:
            case.first_response_due = sla.macd_first_response_due(case.created_at, case.expedited, cal)
        return
    if case.first_responded_at is None:
        case.first_response_due = sla.first_response_due(prio, case.created_at, cal)
    else:
        case.next_update_due = sla.next_update_due(prio, now, cal)


def assign_round_robin(session: Session, case: Case, *, now: datetime) -> Staff | None:
    """The active staff member (for this kind) who was assigned a case longest ago gets it."""
    staff = [s for s in session.scalars(select(Staff).where(Staff.active.is_(True))).all()
             if not s.kinds or case.kind in s.kinds]
    if not staff:
        return None
    epoch = datetime.min.replace(tzinfo=now.tzinfo)
    chosen = min(staff, key=lambda s: (s.last_assigned_at or epoch, s.id))
    assign(session, case, chosen, actor="maild", now=now)
    return chosen


def assign(session: Session, case: Case, staff: Staff, *, actor: str, now: datetime) -> None:
    previous = case.assignee.email if case.assignee else None
    case.assignee_id = staff.id
    case.assignee = staff
    staff.last_assigned_at = now
    record_event(session, case, kind="assigned", actor=actor, now=now, assignee=staff.email, previous=previous)


def link_message_id(session: Session, case: Case, message_id: str) -> None:
    if session.get(ThreadId, (message_id, case.id)) is None:
        session.add(ThreadId(message_id=message_id, case_id=case.id))


def add_inbound(
    session: Session, case: Case, inbound: Inbound, raw: RawMessage, *, author: str, now: datetime,
    new_case: bool = False,
) -> CaseMessage:
    """Record a received message on a case: new text, quoted history and signature kept apart."""
    parts = split(inbound.text)
    msg = CaseMessage(
        case_id=case.id, direction=Direction.IN.value, author=author, from_addr=inbound.from_addr or "",
        to_addrs=list(inbound.to), cc_addrs=list(inbound.cc), subject=inbound.subject,
        message_id=inbound.message_id, date=inbound.date or now, text=parts.new, quoted=parts.quoted,
        signature=parts.signature, html=nh3.clean(inbound.html) if inbound.html else None, raw_id=raw.id,
    )
    session.add(msg)
    session.flush()
    for att in inbound.attachments:
        store_attachment(session, msg, att.filename, att.content_type, att.held or att.data)
    if new_case:  # a case opened in this transaction has no thread ids yet: no lookup needed
        session.add(ThreadId(message_id=inbound.message_id, case_id=case.id))
    else:
        link_message_id(session, case, inbound.message_id)
    if author == "customer":
        case.last_inbound_message_id = inbound.message_id
        for addr in (inbound.from_addr, *inbound.cc):
            if addr and addr not in case.participants and addr.rpartition("@")[2] == case.requester.rpartition("@")[2]:
                case.participants = [*case.participants, addr]
    case.updated_at = now
    return msg


def store_attachment(session: Session, msg: CaseMessage, filename: str, content_type: str,
                     data: bytes | HeldPart) -> None:
    """Keep an attachment's bytes once (``blobs``, by content) and name them on the message. A part
    held out of a large message (``maild.ingest.bigmail``) is copied in from its file in pieces."""
    held = data if isinstance(data, HeldPart) else None
    digest = held.sha256 if held is not None else hashlib.sha256(cast(bytes, data)).hexdigest()
    size = held.size if held is not None else len(cast(bytes, data))
    if session.get(Blob, digest) is None:
        blob = Blob(sha256=digest, size=size, data=b"" if held is not None else data)
        session.add(blob)
        session.flush()  # the blob row before the attachment row that references it (no ORM relationship orders them)
        if held is not None:
            table = cast(Table, Blob.__table__)
            blobio.write(session.connection(), table, "data", "sha256", digest, held.chunks(), size)
            session.expire(blob, ["data"])  # the ORM's copy says b""; the row now holds the bytes
    session.add(AttachmentRow(message_id=msg.id, filename=filename, content_type=content_type[:255],
                              size=size, sha256=digest, token=secrets.token_urlsafe(24)))


def follow_duplicates(session: Session, case: Case) -> Case:
    """A reply to a Duplicate case belongs to the case it duplicates (its master for the problem)."""
    seen = {case.id}
    while case.status == Status.DUPLICATE.value and case.duplicate_of_id and case.duplicate_of_id not in seen:
        nxt = session.get(Case, case.duplicate_of_id)
        if nxt is None:
            break
        seen.add(nxt.id)
        case = nxt
    return case


# -- JSON views (CONTRACT) ------------------------------------------------------------------------


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def case_json(case: Case) -> dict[str, Any]:
    return {
        "number": case.id, "status": case.status, "priority": case.priority, "kind": case.kind,
        "organisation": case.organisation.name if case.organisation else None, "requester": case.requester,
        "subject": case.subject, "created_at": _iso(case.created_at), "closed_at": _iso(case.closed_at),
        "linked_to": case.linked_to_id, "duplicate_of": case.duplicate_of_id, "master": case.master_id,
        "assignee": case.assignee.email if case.assignee else None,
        "platform": case.platform, "updated_at": _iso(case.updated_at),
        "first_response_due": _iso(case.first_response_due), "first_responded_at": _iso(case.first_responded_at),
        "next_update_due": _iso(case.next_update_due), "etr": _iso(case.etr), "hold_until": _iso(case.hold_until),
        "awaiting_customer_since": _iso(case.awaiting_customer_since),
        "no_response_warned_at": _iso(case.no_response_warned_at), "escalation_level": case.escalation_level,
    }


def case_detail_json(session: Session, case: Case) -> dict[str, Any]:
    out = case_json(case)
    msgs = session.scalars(select(CaseMessage).where(CaseMessage.case_id == case.id).order_by(CaseMessage.id)).all()
    out["messages"] = [
        {"direction": m.direction, "author": m.author, "from": m.from_addr, "to": m.to_addrs, "subject": m.subject,
         "message_id": m.message_id, "date": _iso(m.date), "text": m.text, "quoted": m.quoted,
         "signature": m.signature,
         "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                          "sha256": a.sha256} for a in m.attachments]}
        for m in msgs
    ]
    events = session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id)).all()
    out["events"] = [
        {"at": _iso(e.at), "actor": e.actor, "kind": e.kind, "from_status": e.from_status,
         "to_status": e.to_status, "detail": e.detail}
        for e in events
    ]
    return out
