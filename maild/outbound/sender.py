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
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, select
from sqlalchemy.orm import Session, defer, sessionmaker

from maild import blobio
from maild.config import Settings
from maild.db import transaction
from maild.enums import OutboxStatus
from maild.faults import fault_point
from maild.models import CaseEvent, OutboxItem, Staff
from maild.outbound.compose import Draft, compose_draft
from maild.outbound.outbox import claim_due, queue_mail, store_bytes, stored_sizes
from maild.outbound.relay import Deliverable, PermanentFailure, Relay, TemporaryFailure

log = logging.getLogger(__name__)

ALERT_TEMPLATE = "staff_alert"


@dataclass(frozen=True)
class Claimed:
    """A claimed row's snapshot: what delivery needs, usable after its session closed.

    ``data`` is None for bytes stored before the claim (mail with attachments, up to the size
    limit): they are read just before their delivery, so a sender batch holds one such mail at a
    time, not twenty.
    """

    id: int
    to_addr: str
    data: bytes | None
    message_id: str
    attempts: int
    size: int = 0


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


CLAIM_BATCH = 20  # rows claimed (and composed) per transaction; each is still recorded on its own


def send_due(
    factory: sessionmaker[Session], settings: Settings, now: datetime, *, limit: int = 100,
    relay: Relay | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Deliver up to ``limit`` due rows; one JSON-able dict per row handled.

    Rows are claimed and composed a batch at a time (one transaction), delivered over one relay
    connection, and each outcome is committed right after its delivery, so a crash re-sends at most
    the one mail that was between the relay's 250 and its commit (at-least-once, STYLE §5).
    """
    relay = relay or Relay(settings)
    actions: list[dict[str, Any]] = []
    # Every claim of this call is stamped from ``now``: measure from the start, not from each batch.
    half_lease = lease_for(settings).total_seconds() / 2
    started = time.monotonic()
    try:
        while len(actions) < limit and time.monotonic() - started <= half_lease:
            with transaction(factory) as session:
                rows = claim_due(session, now, min(CLAIM_BATCH, limit - len(actions)), lease_for(settings))
                sizes = stored_sizes(session, [row.id for row in rows])
                drafts = [_Snapshot.of(row, sizes.get(row.id)) for row in rows]
            if not drafts:
                break
            for item in _compose_and_store(factory, settings, drafts, now):
                if isinstance(item, dict):  # could not be composed: the row failed, staff were told
                    actions.append(item)
                elif time.monotonic() - started > half_lease:
                    # A slow relay: leave the rest of the batch to a later run, long before another
                    # sender could take the rows when their claims run out (no double send).
                    return actions
                else:
                    actions.append(_deliver_one(factory, settings, relay, item, now))
    finally:
        relay.close()
    return actions


@dataclass(frozen=True)
class _Snapshot:
    """A claimed row as read in the claim: its bytes, or the draft they are composed from."""

    id: int
    to_addr: str
    stored: int | None  # the length of the bytes stored, None for a draft
    pending: dict[str, Any] | None
    message_id: str
    attempts: int

    @classmethod
    def of(cls, row: OutboxItem, stored: int | None) -> _Snapshot:
        return cls(row.id, row.to_addr, stored, row.pending, row.message_id, row.attempts)

    def claimed(self, data: bytes | None) -> Claimed:
        return Claimed(self.id, self.to_addr, data, self.message_id, self.attempts, self.stored or 0)


def _compose_and_store(factory: sessionmaker[Session], settings: Settings, drafts: list[_Snapshot],
                       now: datetime) -> list[Claimed | dict[str, Any]]:
    """Compose the drafts outside any transaction (CPU work must not hold SQLite's write lock), then
    store all their bytes in one transaction, before the first delivery attempt. A draft that cannot
    be composed fails its row alone: one bad row must not stop every row queued after it."""
    composed: dict[int, bytes | Exception] = {}
    for draft in drafts:
        if draft.stored is None:
            try:
                composed[draft.id] = compose_draft(settings, Draft.from_json(draft.pending or {}))
            except Exception as exc:  # whatever compose raised on this row's stored inputs
                log.exception("outbox %s to %s: cannot compose the mail", draft.id, draft.to_addr)
                composed[draft.id] = exc
    ready: dict[int, Claimed | dict[str, Any]] = {d.id: d.claimed(None) for d in drafts if d.stored is not None}
    if composed:
        with transaction(factory) as session:
            for draft in drafts:
                made = composed.get(draft.id)
                if isinstance(made, Exception):
                    failure = PermanentFailure(f"cannot compose the mail: {made!r}")
                    ready[draft.id] = record(session, settings, draft.claimed(b""), failure, now)
                elif made is not None:
                    ready[draft.id] = draft.claimed(store_bytes(session, draft.id, made))
    return [ready[d.id] for d in drafts if d.id in ready]


def _deliver_one(factory: sessionmaker[Session], settings: Settings, relay: Relay, item: Claimed,
                 now: datetime) -> dict[str, Any]:
    error: Exception | None = None
    try:
        if item.data is None:  # stored bytes, read only now: one large mail in memory at a time
            item = replace(item, data=_read_stored(factory, item))
        relay.deliver(_AsDeliverable(item))
        fault_point("after_send_before_mark")  # tests only (MAILD_FAULT): relayed, row not yet marked
    except (TemporaryFailure, PermanentFailure) as exc:
        error = exc
    item = replace(item, data=None)  # the bytes are not needed to record the outcome
    with transaction(factory) as session:
        return record(session, settings, item, error, now)


def _read_stored(factory: sessionmaker[Session], item: Claimed) -> bytes:
    """A claimed row's stored bytes, read in one piece outside any transaction (maild.blobio)."""
    engine = cast(Engine, factory.kw["bind"])
    table = cast(Table, OutboxItem.__table__)
    try:
        data = blobio.read_whole(engine, table, "data", item.id, item.size)
    except Exception as exc:  # the store is down or failing: this attempt is deferred like a relay's 4xx
        log.warning("outbox %s: cannot read the stored mail: %s", item.id, exc)
        raise TemporaryFailure(f"cannot read the stored mail: {type(exc).__name__}: {exc}") from exc
    if len(data) != item.size:
        raise PermanentFailure(f"the stored mail was {item.size} bytes at the claim and is {len(data)} now")
    return data


@dataclass(frozen=True)
class _AsDeliverable:
    item: Claimed

    @property
    def to_addr(self) -> str:
        return self.item.to_addr

    @property
    def data(self) -> bytes:
        assert self.item.data is not None
        return self.item.data

    @property
    def message_id(self) -> str:
        return self.item.message_id


def record(
    session: Session, settings: Settings, claimed: Claimed, error: Exception | None, now: datetime
) -> dict[str, Any]:
    """Write the outcome of one delivery attempt to its row (in the caller's transaction)."""
    row = session.get(OutboxItem, claimed.id, options=[defer(OutboxItem.data)])  # not the bytes again
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
