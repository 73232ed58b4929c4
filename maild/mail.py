# SPDX-License-Identifier: MIT
"""Case mail: one call that queues a template to recipients, in the organisation's locale, through the
outbox in the caller's transaction. Intake, the CLI and the scheduler all send through ``send``, so
every mail carries the same headers and context; ``queue_mail`` fills in the common template keys
(desk, recipient, case, zone), applies the per-recipient caps for automatic mail and skips bouncing
and unmailable addresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maild.config import Settings
from maild.models import Case, Organisation, OutboxItem
from maild.outbound.outbox import queue_mail
from maild.outbound.sender import staff_recipients

__all__ = ["alert_staff", "send", "staff_recipients"]


def send(
    session: Session, settings: Settings, template: str, *, to: Sequence[tuple[str, str]], now: datetime,
    case: Case | None = None, org: Organisation | None = None, automatic: bool = True,
    auto_kind: str = "auto-replied", in_reply_to: str | None = None, references: Sequence[str] = (),
    dedupe_key: str | None = None, attachments: Sequence[tuple[str, str, bytes]] = (), **extra: Any,
) -> list[OutboxItem]:
    """Queue ``template`` to each recipient (name, email); returns the rows actually queued."""
    org = org if org is not None else (case.organisation if case is not None else None)
    context = {"org": {"name": org.name, "timezone": org.timezone} if org else None, **extra}
    return queue_mail(
        session, settings, template=template, locale=org.locale if org else "en",
        to=[(name, email) for name, email in to if email], context=context, now=now, case=case,
        in_reply_to=in_reply_to, references=references, automatic=automatic, auto_kind=auto_kind,
        attachments=attachments, dedupe_key=dedupe_key,
    )


def alert_staff(session: Session, settings: Settings, *, title: str, detail: str, now: datetime,
                case: Case | None = None, dedupe_key: str | None = None) -> list[OutboxItem]:
    """An operator alert (template ``staff_alert``) to ``[intake] staff_alerts`` or every active technician."""
    return send(session, settings, "staff_alert", to=staff_recipients(session, settings), now=now, case=case,
                auto_kind="auto-generated", dedupe_key=dedupe_key, alert={"title": title, "detail": detail})
