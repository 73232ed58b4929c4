# SPDX-License-Identifier: MIT
"""Master cases, priority P1G (SPEC §4): one problem that affects several organisations.

Only staff open them (the CLI; no inbound mail can set P1G). Organisations' cases link to a master
(``Case.master_id``; a case marked a duplicate of the master counts as linked too). Contacts (or
staff) subscribe to one master case or to every master case of a platform (``Subscription``). An
update goes, once per address, to the requesters of linked cases (threaded on their own case) and
to the subscribers, and is recorded as a ``master-update`` event that the status page publishes.

SPEC promises updates at least hourly: each update sets the master's ``next_update_due`` an hour
on, and the rule ``remind_overdue_updates`` alerts staff once per overdue hour until the next one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maild.cases import case_json, open_case, record_event, set_status
from maild.config import Settings
from maild.directory import contact_by_email, staff_by_email
from maild.enums import CaseKind, Priority, Status
from maild.mail import alert_staff, send
from maild.models import Case, CaseEvent, Organisation, Subscription
from maild.scheduler import Rule, mark_once
from maild.status_page import UPDATE_EVENT, iso

UPDATE_EVERY = timedelta(hours=1)


class MasterError(ValueError):
    """A refused master-case request, phrased for the technician."""


def get_master(session: Session, number: int) -> Case:
    case = session.get(Case, number)
    if case is None or case.kind != CaseKind.MASTER.value:
        raise MasterError(f"no master case {number}")
    return case


def _open_case(session: Session, number: int) -> Case:
    case = session.get(Case, number)
    if case is None:
        raise MasterError(f"no case {number}")
    return case


def open_master(session: Session, settings: Settings, *, title: str, platform: str, actor: str,
                now: datetime) -> Case:
    """A master case: P1G, In Progress, requested by the staff member who opened it."""
    if not title.strip():
        raise MasterError("--title is empty")
    if not platform.strip():
        raise MasterError("--platform is empty")
    staff = staff_by_email(session, actor)
    case = open_case(session, settings, kind=CaseKind.MASTER.value, requester=actor,
                     requester_name=staff.name if staff else actor, organisation=None, subject=title.strip(),
                     now=now, actor=actor, priority=Priority.P1G, reason="master case opened by staff")
    case.platform = platform.strip().lower()
    case.first_responded_at = now  # staff opened it: there is nobody waiting for a first answer
    case.next_update_due = now + UPDATE_EVERY
    set_status(session, case, Status.IN_PROGRESS, actor=actor, now=now, reason="master case opened")
    return case


def link(session: Session, number: int, master_number: int, *, actor: str, now: datetime) -> Case:
    """Link an organisation's case to a master case; its requester then gets the updates."""
    master = get_master(session, master_number)
    case = _open_case(session, number)
    if case.kind == CaseKind.MASTER.value:
        raise MasterError(f"case {number} is itself a master case")
    if Status(master.status).is_closed:
        raise MasterError(f"master case {master.id} is {master.status}")
    previous = case.master_id
    case.master_id = master.id
    case.updated_at = now
    record_event(session, case, kind="master-linked", actor=actor, now=now, master=master.id, previous=previous)
    record_event(session, master, kind="case-linked", actor=actor, now=now, linked_case=case.id)
    return case


def subscribe(session: Session, email: str, *, master: int | None, platform: str | None,
              remove: bool = False) -> dict[str, Any]:
    """(Un)subscribe a contact or staff member to one master case or to a platform."""
    address = email.strip().lower()
    if address.count("@") != 1:
        raise MasterError(f"not an email address: {email!r}")
    if (master is None) == (platform is None):
        raise MasterError("give exactly one of --master M or --platform P")
    if contact_by_email(session, address) is None and staff_by_email(session, address) is None:
        raise MasterError(f"{address} is neither a contact nor a staff member (import it into the directory)")
    if master is not None:
        get_master(session, master)
    plat = platform.strip().lower() if platform is not None else None
    # Looked up by hand: a unique constraint does not catch a second row when one column is NULL.
    row = session.scalar(select(Subscription).where(
        Subscription.email == address,
        Subscription.master_case_id.is_(None) if master is None else Subscription.master_case_id == master,
        Subscription.platform.is_(None) if plat is None else Subscription.platform == plat))
    changed = (row is not None) if remove else (row is None)
    if remove and row is not None:
        session.delete(row)
    elif not remove and row is None:
        session.add(Subscription(email=address, master_case_id=master, platform=plat))
    return {"email": address, "master": master, "platform": plat, "subscribed": not remove, "changed": changed}


def _recipients(session: Session, master: Case) -> dict[str, tuple[str, Case | None, Organisation | None]]:
    """Every address to tell, once: linked requesters first (their case carries the mail), then subscribers."""
    out: dict[str, tuple[str, Case | None, Organisation | None]] = {}
    linked = session.scalars(select(Case).where(
        or_(Case.master_id == master.id, Case.duplicate_of_id == master.id), Case.id != master.id).order_by(Case.id))
    for case in linked:
        if case.requester and case.requester.lower() not in out:
            out[case.requester.lower()] = (case.requester_name, case, case.organisation)
    subs = session.scalars(select(Subscription).where(or_(
        Subscription.master_case_id == master.id,
        Subscription.platform == master.platform if master.platform else Subscription.id.is_(None),
    )).order_by(Subscription.id))
    for sub in subs:
        if sub.email not in out:
            contact = contact_by_email(session, sub.email)
            out[sub.email] = (contact.name if contact else "", None, contact.organisation if contact else None)
    return out


def post_update(session: Session, settings: Settings, master: Case, *, body: str, actor: str, now: datetime,
                close: bool = False) -> CaseEvent:
    """Send an update to everyone concerned, record it, and (with ``close``) close the master case."""
    if not body.strip():
        raise MasterError("--body is empty")
    if Status(master.status).is_closed:
        raise MasterError(f"master case {master.id} is {master.status}")
    event = record_event(session, master, kind=UPDATE_EVENT, actor=actor, now=now, body=body.strip())
    session.flush()
    facts = {"number": master.id, "title": master.subject, "platform": master.platform or ""}
    sent: list[str] = []
    for address, (name, case, org) in _recipients(session, master).items():
        # Auto-generated (RFC 3834): one text to many, so out-of-office replies must not come back.
        items = send(session, settings, "master_update", to=[(name, address)], now=now, case=case, org=org,
                     auto_kind="auto-generated", in_reply_to=case.last_inbound_message_id if case else None,
                     dedupe_key=f"master:{master.id}:update:{event.id}", master=facts, body=body.strip())
        sent += [i.to_addr for i in items]
    event.detail = {**event.detail, "recipients": sent}
    master.updated_at = now
    master.next_update_due = None if close else now + UPDATE_EVERY
    if close:
        set_status(session, master, Status.CLOSED, actor=actor, now=now, reason="master case resolved")
    return event


def master_json(session: Session, master: Case) -> dict[str, Any]:
    out = case_json(master)
    linked = session.scalars(select(Case.id).where(
        or_(Case.master_id == master.id, Case.duplicate_of_id == master.id), Case.id != master.id).order_by(Case.id))
    subs = session.scalars(select(Subscription).where(or_(
        Subscription.master_case_id == master.id, Subscription.platform == master.platform)).order_by(Subscription.id))
    updates = session.scalars(select(CaseEvent).where(
        CaseEvent.case_id == master.id, CaseEvent.kind == UPDATE_EVENT).order_by(CaseEvent.id)).all()
    out.update({
        "title": master.subject, "linked": list(linked),
        "subscribers": sorted({s.email for s in subs}),
        "updates": [{"at": iso(e.at), "by": e.actor, "body": e.detail.get("body", ""),
                     "recipients": e.detail.get("recipients", [])} for e in updates],
    })
    return out


def remind_overdue_updates(session: Session, settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Scheduler rule: staff are told, once per overdue hour, when an open master case lacks an update."""
    masters = session.scalars(select(Case).where(
        Case.kind == CaseKind.MASTER.value,
        Case.status.not_in([Status.CLOSED.value, Status.CLOSED_NO_RESPONSE.value, Status.DUPLICATE.value]),
    ).order_by(Case.id)).all()
    actions: list[dict[str, Any]] = []
    for master in masters:
        due = master.next_update_due or master.updated_at + UPDATE_EVERY
        if now < due:
            continue
        slot = int((now - due) / UPDATE_EVERY)
        key = f"master-overdue:{master.id}:{iso(due)}:{slot}"
        if not mark_once(session, key, now):
            continue
        alert_staff(session, settings, title=f"Master case #{master.id} needs an update",
                    detail=f"Master case #{master.id} ({master.subject}, platform {master.platform}) has had no "
                           f"update since {iso(due - UPDATE_EVERY)}; customers are promised one at least every "
                           f"hour. Send one with: maild master update {master.id} --body TEXT",
                    now=now, dedupe_key=key)
        actions.append({"action": "master-update-overdue", "case": master.id, "due": iso(due), "slot": slot})
    return actions


RULES: tuple[Rule, ...] = (remind_overdue_updates,)
