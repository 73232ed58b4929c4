# SPDX-License-Identifier: MIT
"""Case mail: the common template context (desk, recipient, organisation, case) and one call that
queues a mail through the outbox in the caller's transaction. Intake, the CLI and the scheduler all
send through ``send``, so every mail carries the same headers and context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maild.config import Settings
from maild.models import Case, Organisation, OutboxItem
from maild.outbound.outbox import queue_mail
from maild.outbound.ratelimit import allow_automatic
from maild.threading.addresses import reply_address
from maild.threading.subject import format_tag

log = logging.getLogger(__name__)


def case_context(settings: Settings, case: Case) -> dict[str, Any]:
    return {
        "number": case.id, "tag": format_tag(case.id), "subject": case.subject, "status": case.status,
        "priority": case.priority, "kind": case.kind,
        "reply_address": reply_address(settings.support_address, case.id, settings.secret_bytes),
        "linked_to": case.linked_to_id,
    }


def base_context(settings: Settings, org: Organisation | None, case: Case | None) -> dict[str, Any]:
    return {
        "desk": {"name": settings.desk.name, "phone": settings.desk.phone, "chat_url": settings.desk.chat_url,
                 "status_page": settings.desk.status_page, "support_address": settings.support_address},
        "org": {"name": org.name, "timezone": org.timezone} if org else None,
        "case": case_context(settings, case) if case else None,
        "zone": settings.time.zone,
    }


def send(
    session: Session, settings: Settings, template: str, *, to: Sequence[tuple[str, str]], now: datetime,
    case: Case | None = None, org: Organisation | None = None, automatic: bool = True,
    auto_kind: str = "auto-replied", in_reply_to: str | None = None, references: Sequence[str] = (),
    rate_limited: bool = False, dedupe_key: str | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (), **extra: Any,
) -> list[OutboxItem]:
    """Queue ``template`` to each recipient (name, email) in the organisation's locale.

    With ``rate_limited`` the per-recipient caps for automatic mail apply (RFC 3834 §2; RELIABILITY L3):
    a recipient over a cap is skipped, not queued.
    """
    org = org if org is not None else (case.organisation if case is not None else None)
    items: list[OutboxItem] = []
    for name, email in to:
        if not email:
            continue
        if not email.isascii():  # an SMTPUTF8 address (RFC 6531): the relay path is not known to carry it
            log.warning("not mailing %s to non-ASCII address %r", template, email)
            continue
        if rate_limited and not allow_automatic(session, settings, email, template, now,
                                                case.id if case else None):
            continue
        context = {**base_context(settings, org, case), "recipient": {"name": name, "email": email}, **extra}
        items += queue_mail(
            session, settings, template=template, locale=org.locale if org else "en", to=[(name, email)],
            context=context, now=now, case=case, in_reply_to=in_reply_to, references=references,
            automatic=automatic, auto_kind=auto_kind, attachments=attachments, dedupe_key=dedupe_key,
        )
    return items


def staff_recipients(session: Session, settings: Settings) -> list[tuple[str, str]]:
    """Where operator alerts go: [intake] staff_alerts, else every active staff member."""
    from sqlalchemy import select

    from maild.models import Staff

    if settings.intake.staff_alerts:
        return [("", a.strip()) for a in settings.intake.staff_alerts.split(",") if a.strip()]
    return [(s.name, s.email) for s in session.scalars(select(Staff).where(Staff.active.is_(True)))]
