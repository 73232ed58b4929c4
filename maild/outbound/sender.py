# SPDX-License-Identifier: MIT
"""The outbox sender: claim due rows, hand them to the relay, record what happened.

A row queued without its bytes (see maild.outbound.outbox) has them composed and stored in the
transaction that claims it, so they are durable before the first attempt and every retry is the same.

The back-off lives in the row (``next_attempt_at``), not in a sleeping retry loop (RELIABILITY rule 4,
Mailman's persisted ``deliver_until``): a restart loses nothing and never sends early. Delivery runs
outside any transaction, so a slow relay never holds the database's write lock.

At-least-once (STYLE §5): if the process dies between the relay's 250 and the commit that marks the
row sent, the row is sent again once its claim lease runs out, with the same Message-ID and bytes.

A failure that ends a row (5yz, or 4yz past ``give_up_hours``, RFC 5321 §4.5.4.1) tells staff with a
``staff_alert`` and puts an event on the case; nothing goes to the customer (RELIABILITY O2), and a
failing ``staff_alert`` is only recorded (never a notice about a notice, rule 4).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.db import transaction
from maild.enums import OutboxStatus
from maild.faults import fault_point
from maild.models import CaseEvent, OutboxItem, Staff
from maild.outbound.outbox import claim_due, message_bytes, queue_mail
from maild.outbound.relay import Deliverable, PermanentFailure, Relay, TemporaryFailure

log = logging.getLogger(__name__)

ALERT_TEMPLATE = "staff_alert"


@dataclass(frozen=True)
class Claimed:
    """A claimed row's snapshot: what delivery needs, usable after its session closed."""

    id: int
    to_addr: str
    data: bytes
    message_id: str
    attempts: int


def lease_for(settings: Settings) -> timedelta:
    """How long a claim keeps other senders off a row: about ten relay commands' timeouts."""
    return timedelta(seconds=max(60, settings.relay.timeout * 10))


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed try: first * 2^(attempts-1) minutes, capped."""
    r = settings.relay
    minutes = min(r.retry_first_minutes * 2 ** max(attempts - 1, 0), r.retry_max_minutes)
    return timedelta(minutes=minutes)


# Set after a commit that queued mail, so the daemon's sender runs at once instead of at its next turn.
WAKE = threading.Event()


def wake() -> None:
    WAKE.set()


def send_due(
    factory: sessionmaker[Session], settings: Settings, now: datetime, *, limit: int = 100,
    relay: Relay | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Deliver up to ``limit`` due rows one at a time; one JSON-able dict per row handled."""
    relay = relay or Relay(settings)
    actions: list[dict[str, Any]] = []
    while len(actions) < limit:
        with transaction(factory) as session:
            rows = claim_due(session, now, 1, lease_for(settings))
            prepared = _prepare(session, settings, rows[0], now) if rows else None
        if prepared is None:
            break
        if isinstance(prepared, dict):  # could not be composed: the row failed, staff were told
            actions.append(prepared)
            continue
        item = prepared
        error: Exception | None = None
        try:
            relay.deliver(_AsDeliverable(item))
            fault_point("after_send_before_mark")  # tests only (MAILD_FAULT): relayed, row not yet marked
        except (TemporaryFailure, PermanentFailure) as exc:
            error = exc
        with transaction(factory) as session:
            actions.append(record(session, settings, item, error, now))
    return actions


def _prepare(session: Session, settings: Settings, row: OutboxItem, now: datetime) -> Claimed | dict[str, Any]:
    """The claimed row's snapshot, its bytes composed and stored in the claiming transaction (so they
    are in the store before the first delivery attempt), or, if they cannot be composed, the row
    recorded as failed: one bad row must not stop every row queued after it."""
    try:
        data = message_bytes(row, settings)
    except SQLAlchemyError:
        raise  # the store's trouble, not the row's: the claim rolls back and the row is tried again
    except Exception as exc:  # whatever compose raised on this row's stored inputs
        log.exception("outbox %s to %s: cannot compose the mail", row.id, row.to_addr)
        snapshot = Claimed(row.id, row.to_addr, b"", row.message_id, row.attempts)
        return record(session, settings, snapshot, PermanentFailure(f"cannot compose the mail: {exc!r}"), now)
    return Claimed(row.id, row.to_addr, data, row.message_id, row.attempts)


@dataclass(frozen=True)
class _AsDeliverable:
    item: Claimed

    @property
    def to_addr(self) -> str:
        return self.item.to_addr

    @property
    def data(self) -> bytes:
        return self.item.data

    @property
    def message_id(self) -> str:
        return self.item.message_id


def record(
    session: Session, settings: Settings, claimed: Claimed, error: Exception | None, now: datetime
) -> dict[str, Any]:
    """Write the outcome of one delivery attempt to its row (in the caller's transaction)."""
    row = session.get(OutboxItem, claimed.id)
    if row is None or row.status != OutboxStatus.QUEUED.value:
        return {"action": "skipped", "outbox": claimed.id, "reason": "row changed meanwhile"}
    row.attempts += 1
    row.claimed_until = None
    base = {"outbox": row.id, "to": row.to_addr, "message_id": row.message_id, "attempts": row.attempts}
    if error is None:
        row.status = OutboxStatus.SENT.value
        row.sent_at = now
        row.last_error = None
        log.info("outbox %s sent to %s %s", row.id, row.to_addr, row.message_id)
        return {"action": "sent", **base}
    if isinstance(error, TemporaryFailure) and now < row.expires_at:
        row.last_error = str(error)
        # Never later than the expiry, so the last try happens when the row's lifetime ends.
        row.next_attempt_at = min(now + backoff(settings, row.attempts), row.expires_at)
        log.info("outbox %s to %s deferred: %s", row.id, row.to_addr, error)
        return {"action": "retry", **base, "next_attempt_at": row.next_attempt_at.isoformat(),
                "error": str(error)}  # fmt: skip
    if isinstance(error, TemporaryFailure):
        row.last_error = f"expired after {row.attempts} attempts: {error}"
    else:
        row.last_error = f"permanent failure: {error}"
    row.status = OutboxStatus.FAILED.value
    log.warning("outbox %s to %s failed: %s", row.id, row.to_addr, row.last_error)
    _tell_staff(session, settings, row, now)
    return {"action": "failed", **base, "error": row.last_error}


def staff_recipients(session: Session, settings: Settings) -> list[tuple[str, str]]:
    """``[intake] staff_alerts`` (comma-separated addresses), else every active staff member."""
    configured = [a.strip() for a in settings.intake.staff_alerts.split(",") if a.strip()]
    if configured:
        return [("", a) for a in configured]
    staff = session.scalars(select(Staff).where(Staff.active.is_(True)).order_by(Staff.id))
    return [(s.name, s.email) for s in staff]


def _tell_staff(session: Session, settings: Settings, row: OutboxItem, now: datetime) -> None:
    detail = {"outbox": row.id, "to": row.to_addr, "template": row.template, "error": row.last_error}
    if row.case_id is not None:
        session.add(CaseEvent(case_id=row.case_id, at=now, actor="system", kind="mail-failed", detail=detail))
    if row.template == ALERT_TEMPLATE:
        return  # never an alert about an alert (RELIABILITY rule 4)
    recipients = staff_recipients(session, settings)
    if not recipients:
        log.warning("outbox %s failed and there is no staff address to tell", row.id)
        return
    where = f" (case #{row.case_id})" if row.case_id is not None else ""
    alert = {
        "title": f"Mail to {row.to_addr} could not be delivered{where}",
        "detail": f"Mail '{row.template}' {row.message_id} to {row.to_addr}: {row.last_error}",
    }
    queue_mail(session, settings, template=ALERT_TEMPLATE, locale="en", to=recipients,
               context={"alert": alert}, now=now, auto_kind="auto-generated",
               dedupe_key=f"alert:outbox-failed:{row.id}")  # fmt: skip


def run_until_empty(
    factory: sessionmaker[Session], settings: Settings, now: datetime, *, relay: Relay | None = None,
    max_rounds: int = 20,
) -> list[dict[str, Any]]:  # fmt: skip
    """Call ``send_due`` until nothing is due at ``now`` (alerts queued by failures included)."""
    actions: list[dict[str, Any]] = []
    for _ in range(max_rounds):
        batch = send_due(factory, settings, now, relay=relay)
        if not batch:
            break
        actions.extend(batch)
    return actions


__all__ = ["Claimed", "Deliverable", "backoff", "record", "run_until_empty", "send_due", "staff_recipients"]
