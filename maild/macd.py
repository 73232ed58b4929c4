# SPDX-License-Identifier: MIT
"""MACD requests (SPEC §5): Move/Add/Change/Delete work, done only with an identified MPOC's approval,
billed at 100 USD per hour in started quarter hours.

A MACD request from a contact who is not an MPOC is held (reason ``macd-awaiting-approval``): the
organisation's primary MPOCs get ``macd_approval_request`` and the requester hears that approval was
asked for. An MPOC approves by replying to that request with "approve" (en/de/pt) on the first line:
the held request then becomes a MACD case for the original requester, with the approval on record.
Staff may also approve with ``maild held accept``.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild import sla
from maild.cases import add_inbound, open_case, record_event
from maild.config import Settings
from maild.directory import contact_by_email, primary_mpocs
from maild.enums import HoldReason, Outcome
from maild.ingest.parse import Inbound
from maild.mail import send
from maild.models import Case, HeldMessage, Organisation, OutboxItem, RawMessage, TimeEntry
from maild.threading.subject import strip_prefixes

APPROVAL_TEMPLATE = "macd_approval_request"
# The first line of an approving reply: "approve", "approved", "I approve", "genehmigt", "aprovado" ...
_APPROVE = re.compile(
    r"^\W*(?:yes[,.!]?\s+)?(?:i\s+)?(?:approved?|approve\s+it|genehmig(?:t|e)|freigegeben|ja[,.!]?\s+genehmigt|"
    r"aprovad[oa]|aprovo|autorizad[oa]|sim[,.!]?\s+aprovad[oa])\b", re.I)


def approves(text: str) -> bool:
    """Does the first non-empty line of ``text`` approve?"""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return bool(_APPROVE.match(first.strip())) and len(first) < 120


def request_approval(session: Session, settings: Settings, held: HeldMessage, inbound: Inbound,
                     org: Organisation, now: datetime) -> list[OutboxItem]:
    """Ask the organisation's primary MPOCs to approve; tell the requester that we asked."""
    mpocs = [(c.name, c.email) for c in primary_mpocs(session, org.id)]
    sender = inbound.from_addr or ""
    requester = {"name": inbound.from_name, "email": sender}
    items = send(session, settings, APPROVAL_TEMPLATE, to=mpocs, now=now, org=org, auto_kind="auto-generated",
                 dedupe_key=f"macd-approval:{held.id}", requester=requester,
                 request_subject=inbound.subject)
    approvers = [f"{name} <{email}>" if name else email for name, email in mpocs]
    send(session, settings, "macd_awaiting_approval", to=[(inbound.from_name, sender)], now=now, org=org,
         in_reply_to=inbound.message_id, references=(*inbound.references, inbound.message_id),
         request_subject=inbound.subject, approvers=approvers)
    return items


def held_for_approval_reply(session: Session, inbound: Inbound) -> HeldMessage | None:
    """The held MACD request an inbound mail answers (its In-Reply-To/References name our request)."""
    ids = inbound.thread_ids
    if not ids:
        return None
    key = session.scalar(select(OutboxItem.dedupe_key).where(
        OutboxItem.message_id.in_(ids[:100]), OutboxItem.template == APPROVAL_TEMPLATE).limit(1))
    if not key or not key.startswith("macd-approval:"):
        return None
    held_id = key.removeprefix("macd-approval:").split("|", 1)[0]
    return session.get(HeldMessage, int(held_id)) if held_id.isdigit() else None


def answer(session: Session, settings: Settings, held: HeldMessage, inbound: Inbound, stored: RawMessage,
           now: datetime) -> tuple[Outcome, int | None, str] | None:
    """An MPOC's answer to an approval request. None: not an MPOC of that organisation (normal intake)."""
    contact = contact_by_email(session, inbound.from_addr)
    if contact is None or not contact.is_mpoc or contact.organisation_id != held.organisation_id:
        return None
    if held.status != "held":
        return Outcome.IGNORED, held.result_case_id, f"MACD request (held #{held.id}) was already {held.status}"
    if not approves(inbound.text):
        return Outcome.IGNORED, None, f"reply to MACD approval request (held #{held.id}) without approval"
    case = approve(session, settings, held, approver=contact.email, now=now)
    add_inbound(session, case, inbound, stored, author="customer", now=now)
    return Outcome.NEW_CASE, case.id, f"MACD request approved by {contact.email} (held #{held.id})"


def approve(session: Session, settings: Settings, held: HeldMessage, *, approver: str, now: datetime) -> Case:
    """Open the MACD case for a held request, for its original requester, with the approval recorded."""
    from maild.held import raw_inbound

    raw = session.get(RawMessage, held.raw_id)
    assert raw is not None
    inbound = raw_inbound(raw)
    org = session.get(Organisation, held.organisation_id) if held.organisation_id else None
    sender = inbound.from_addr or held.sender
    case = open_case(session, settings, kind="macd", requester=sender, requester_name=inbound.from_name,
                     organisation=org, subject=strip_prefixes(inbound.subject) or "(no subject)", now=now,
                     actor=approver, reason=f"MACD request approved by {approver}")
    add_inbound(session, case, inbound, raw, author="customer", now=now)
    record_event(session, case, kind="macd-approved", actor=approver, now=now, held=held.id)
    raw.case_id = case.id
    held.status, held.decided_at, held.decided_by, held.result_case_id = "accepted", now, approver, case.id
    send(session, settings, "ack_new_case", to=[(inbound.from_name, sender)], now=now, case=case,
         in_reply_to=inbound.message_id, references=(*inbound.references, inbound.message_id))
    return case


def log_time(session: Session, case: Case, *, minutes: int, staff: str, now: datetime, note: str = "") -> TimeEntry:
    if minutes <= 0 or minutes > 24 * 60:
        raise ValueError("--minutes must be between 1 and 1440")
    entry = TimeEntry(case_id=case.id, staff=staff, minutes=minutes, at=now, note=note)
    session.add(entry)
    record_event(session, case, kind="time-logged", actor=staff, now=now, minutes=minutes, note=note)
    return entry


def billing(session: Session, case: Case) -> dict[str, Any]:
    """Time logged on a case and what it bills (each started quarter hour counts, SPEC §5)."""
    minutes = int(session.scalar(select(func.coalesce(func.sum(TimeEntry.minutes), 0))
                                 .where(TimeEntry.case_id == case.id)) or 0)
    quarters, amount = sla.macd_billable(minutes)
    return {"minutes": minutes, "quarter_hours": quarters, "amount_usd": str(amount.quantize(Decimal("0.01")))}


HOLD_REASON = HoldReason.MACD_APPROVAL
