# SPDX-License-Identifier: MIT
"""Per-recipient caps on automatic mail, so a responder that ignores RFC 3834 cannot make us loop.

RELIABILITY rule 5 and L3: acknowledgements to one address are capped over several windows (an hour
and a day, as Zammad and Znuny do), a case acknowledges one sender at most once per kind of
acknowledgement, and the "please go through your main point of contact" reply goes out at most
``unauthorised_reply_per_day`` times a day. The counts come from the outbox itself (every row ever
queued, whatever became of it), over the ``ix_outbox_recipient`` (to_addr, template, created_at)
index, so they hold across restarts and across several maild processes.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild.config import Settings
from maild.models import OutboxItem

ACK_TEMPLATES = frozenset({"ack_new_case", "ack_reopened", "ack_linked_case", "macd_awaiting_approval"})
UNAUTHORISED = "unauthorised_sender"
# Told to an MPOC once per held message: a flood from one of their users must not flood them too.
MPOC_NOTICE = "mpoc_unauthorised_notice"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _count(
    session: Session, to: str, templates: Collection[str], since: datetime | None, case_id: int | None = None
) -> int:
    stmt = select(func.count(OutboxItem.id)).where(OutboxItem.to_addr == to, OutboxItem.template.in_(sorted(templates)))
    if since is not None:
        stmt = stmt.where(OutboxItem.created_at > since)
    if case_id is not None:
        stmt = stmt.where(OutboxItem.case_id == case_id)
    return session.scalar(stmt) or 0


def allow_automatic(
    session: Session, settings: Settings, to: str, template: str, now: datetime, case_id: int | None
) -> bool:
    """Whether automatic mail ``template`` may go to ``to`` now. Other templates are never capped."""
    address = to.strip().lower()
    intake = settings.intake
    if template in ACK_TEMPLATES:
        if case_id is not None and _count(session, address, {template}, None, case_id) >= 1:
            return False
        return (
            _count(session, address, ACK_TEMPLATES, now - HOUR) < intake.ack_per_sender_per_hour
            and _count(session, address, ACK_TEMPLATES, now - DAY) < intake.ack_per_sender_per_day
        )
    if template == UNAUTHORISED:
        return _count(session, address, {UNAUTHORISED}, now - DAY) < intake.unauthorised_reply_per_day
    if template == MPOC_NOTICE:
        return (
            _count(session, address, {MPOC_NOTICE}, now - HOUR) < intake.ack_per_sender_per_hour
            and _count(session, address, {MPOC_NOTICE}, now - DAY) < intake.ack_per_sender_per_day
        )
    return True
