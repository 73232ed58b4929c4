# SPDX-License-Identifier: MIT
"""Held intake: messages kept for staff (unauthorised senders, strangers replying to a case, and
messages that could not be processed). Accepting one does what intake would have done had the sender
been allowed; dropping one keeps its bytes and records the decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from maild.cases import add_inbound, open_case, record_event
from maild.config import Settings
from maild.directory import org_by_domain
from maild.enums import HoldReason
from maild.ingest.parse import Inbound, ParseError, parse
from maild.ingest.raw import from_stored
from maild.mail import send
from maild.models import Case, HeldMessage, Organisation, RawMessage
from maild.threading.subject import strip_prefixes


class HeldError(ValueError):
    pass


def held_json(h: HeldMessage) -> dict[str, Any]:
    return {"id": h.id, "status": h.status, "reason": h.reason, "detail": h.detail, "sender": h.sender,
            "subject": h.subject, "case": h.case_id, "result_case": h.result_case_id, "raw": h.raw_id,
            "created_at": h.created_at.isoformat(), "decided_by": h.decided_by,
            "decided_at": h.decided_at.isoformat() if h.decided_at else None}


def raw_inbound(row: RawMessage) -> Inbound:
    try:
        return parse(from_stored(row))
    except ParseError as exc:
        raise HeldError(f"stored message {row.id} cannot be read: {exc}") from None


def accept_held(session: Any, settings: Settings, held: HeldMessage, *, actor: str, now: datetime) -> None:
    if held.status != "held":
        raise HeldError(f"held message {held.id} is already {held.status}")
    row = session.get(RawMessage, held.raw_id)
    if held.reason == HoldReason.UNPROCESSABLE.value:
        _reprocess(session, settings, held, row, now)
    elif held.reason == HoldReason.MACD_APPROVAL.value:
        from maild.macd import approve

        approve(session, settings, held, approver=actor, now=now)
    else:
        try:
            inbound = parse(from_stored(row))
        except ParseError as exc:
            raise HeldError(f"held message {held.id} cannot be read: {exc}") from None
        sender = inbound.from_addr or held.sender
        if not sender:
            raise HeldError(f"held message {held.id} has no sender address to open a case for")
        case = session.get(Case, held.case_id) if held.case_id else None
        if case is not None:  # a stranger's reply: staff vouch for it
            add_inbound(session, case, inbound, row, author="customer", now=now)
            case.participants = [*case.participants, sender]
            record_event(session, case, kind="held-accepted", actor=actor, now=now, held=held.id, sender=sender)
        else:
            org = session.get(Organisation, held.organisation_id) if held.organisation_id else None
            org = org or org_by_domain(session, sender)
            case = open_case(session, settings, kind="technical", requester=sender,
                             requester_name=inbound.from_name, organisation=org,
                             subject=strip_prefixes(inbound.subject) or "(no subject)", now=now, actor=actor,
                             reason=f"accepted by {actor} from held message {held.id}")
            add_inbound(session, case, inbound, row, author="customer", now=now)
            send(session, settings, "ack_new_case", to=[(inbound.from_name, sender)], now=now, case=case,
                 in_reply_to=inbound.message_id, references=(*inbound.references, inbound.message_id))
        held.result_case_id = case.id
        row.case_id = case.id
    held.status, held.decided_at, held.decided_by = "accepted", now, actor


def _reprocess(session: Any, settings: Settings, held: HeldMessage, row: RawMessage, now: datetime) -> None:
    from maild.ingest.pipeline import process

    with session.begin_nested():
        result = process(session, from_stored(row), row, now=now, settings=settings)
    if result.reason.startswith(HoldReason.UNPROCESSABLE.value):
        raise HeldError(f"held message {held.id} still cannot be processed: {result.reason}")
    row.outcome, row.reason, row.case_id = result.outcome.value, result.reason, result.case
    held.result_case_id = result.case


def drop_held(held: HeldMessage, *, actor: str, now: datetime) -> None:
    if held.status != "held":
        raise HeldError(f"held message {held.id} is already {held.status}")
    held.status, held.decided_at, held.decided_by = "dropped", now, actor
