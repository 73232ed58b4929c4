# SPDX-License-Identifier: MIT
"""The outbox: every outbound mail is a row written in the transaction of the change that caused it.

``queue_mail`` renders the mail now (the case history keeps the rendered text, the row its Subject)
and fixes its Message-ID, one row per recipient (RELIABILITY O3: each recipient has its own delivery
state, so one refused address never makes the others look failed or sent). The bytes are composed
later, off the intake's SMTP 250 path: the row stores what compose needs (``pending``, a
``compose.Draft``) and ``message_bytes`` composes and stores the bytes once, when the sender claims
the row, before the first delivery attempt. The sender only ever sends stored bytes, so a retry four
days later is byte-identical, Message-ID and Date included (SPEC §6 "nothing is sent twice" + STYLE
§5). Mail with attachments (invoices) is composed at once: a draft would have to carry the files.

Nothing here commits: rows go into the caller's session (STYLE habit 4).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, func, null, or_, select, update
from sqlalchemy.orm import Session, defer, object_session
from sqlalchemy.orm.attributes import set_committed_value

from maild.config import Settings
from maild.enums import Direction, OutboxStatus
from maild.models import BouncingAddress, Case, CaseEvent, CaseMessage, OutboxItem, ThreadId
from maild.outbound import ratelimit
from maild.outbound.compose import Draft, clean_address, compose_draft, subject_text
from maild.outbound.render import Rendered, render
from maild.threading.addresses import message_id_for, reply_address
from maild.threading.subject import format_tag, tag_subject

log = logging.getLogger(__name__)

BOUNCE_BLOCK = timedelta(days=30)  # cf. Zammad's block of hard-bouncing addresses (RELIABILITY L2)
_KEY_MAX = 300  # OutboxItem.dedupe_key column width


@dataclass(frozen=True)
class Recipient:
    name: str
    email: str


def base_context(settings: Settings, case: Case | None, recipient: Recipient) -> dict[str, Any]:
    """The keys every template receives (``desk``, ``recipient``, ``org``, ``case``, ``zone``)."""
    desk = settings.desk
    org = case.organisation if case is not None else None
    return {
        "desk": {
            "name": desk.name,
            "phone": desk.phone,
            "chat_url": desk.chat_url,
            "status_page": desk.status_page,
            "support_address": settings.support_address,
        },
        "recipient": {"name": recipient.name, "email": recipient.email},
        "org": None if org is None else {"name": org.name, "timezone": org.timezone},
        "case": None if case is None else case_context(settings, case),
        "zone": settings.time.zone,
    }


def case_context(settings: Settings, case: Case) -> dict[str, Any]:
    return {
        "number": case.id,
        "tag": format_tag(case.id),
        "subject": case.subject,
        "status": case.status,
        "priority": case.priority,
        "kind": case.kind,
        "reply_address": reply_address(settings.support_address, case.id, settings.secret_bytes),
        "linked_to": case.linked_to_id,
    }


def _row_key(dedupe_key: str, email: str) -> str:
    key = f"{dedupe_key}|{email}"
    if len(key) <= _KEY_MAX:
        return key
    return f"{dedupe_key[:200]}|sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _mid_key(row_key: str | None) -> str:
    # The Message-ID key: derived from the dedupe key when there is one, so a replayed scheduler
    # step produces the same id; otherwise random (RFC 5322 §3.6.4: unique per message).
    if row_key is None:
        return secrets.token_hex(10)
    return hashlib.sha256(row_key.encode()).hexdigest()[:20]


def is_bouncing(session: Session, email: str, now: datetime) -> bool:
    row = session.get(BouncingAddress, email.lower())
    return row is not None and row.until > now


def _recipients(to: Sequence[tuple[str, str]]) -> list[Recipient]:
    seen: set[str] = set()
    out: list[Recipient] = []
    for name, email in to:
        try:
            address = clean_address(email.strip())
            # Also what compose will need: an ASCII local part (RFC 6532 EAI addresses would need
            # SMTPUTF8 end to end, which maild does not send yet) that the header parser accepts.
            Address(addr_spec=address)
        except ValueError:
            log.warning("outbox: skipping malformed recipient %r", email)
            continue
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(Recipient(name=name, email=address))
    return out


# Built once, with a bound parameter: building a statement costs more than the lookup itself.
_QUEUED = select(OutboxItem.id).where(OutboxItem.dedupe_key == bindparam("key"))


def _skip_reason(
    session: Session, settings: Settings, *, template: str, rcpt: Recipient, automatic: bool,
    row_key: str | None, case: Case | None, now: datetime,
) -> str | None:  # fmt: skip
    if row_key is not None and session.scalar(_QUEUED, {"key": row_key}):
        return "already queued"
    if automatic and is_bouncing(session, rcpt.email, now):
        return "address is bouncing"
    case_id = case.id if case is not None else None
    if automatic and not ratelimit.allow_automatic(session, settings, rcpt.email, template, now, case_id):
        return "rate limited"
    return None


def queue_mail(
    session: Session,
    settings: Settings,
    *,
    template: str,
    locale: str,
    to: Sequence[tuple[str, str]],
    context: Mapping[str, Any],
    now: datetime,
    case: Case | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    automatic: bool = True,
    auto_kind: str = "auto-replied",
    attachments: Sequence[tuple[str, str, bytes]] = (),
    dedupe_key: str | None = None,
) -> list[OutboxItem]:
    """Render ``template`` and add one queued OutboxItem per recipient ``(name, email)``.

    Message-IDs are stored without angle brackets, like every id maild.ingest.parse normalises, so
    the ThreadId rows written here match the In-Reply-To of a customer's answer.

    ``context`` holds the template's own keys; ``desk``, ``recipient``, ``org``, ``case`` and ``zone``
    are filled in (``context`` wins where it names them). Skipped, and logged, are: recipients that
    already have a row for ``dedupe_key``, and for automatic mail addresses that hard-bounced
    (``BouncingAddress``) or are over their rate limit (``ratelimit``). Returns the rows added, flushed
    (their ids set). Mail without attachments is stored as a draft, composed when first read
    (``message_bytes``).
    """
    queued: list[OutboxItem] = []
    for rcpt in _recipients(to):
        row_key = _row_key(dedupe_key, rcpt.email.lower()) if dedupe_key else None
        why = _skip_reason(session, settings, template=template, rcpt=rcpt, automatic=automatic,
                           row_key=row_key, case=case, now=now)  # fmt: skip
        if why is not None:
            log.info("outbox: not queueing %s to %s: %s", template, rcpt.email, why)
            continue
        # Rendered per recipient: the greeting names them.
        ctx = {**base_context(settings, case, rcpt), **context}
        rendered = render(template, locale, ctx, settings=settings)
        queued.append(_add_row(session, settings, template=template, rendered=rendered, rcpt=rcpt,
                               now=now, case=case, in_reply_to=in_reply_to, references=references,
                               automatic=automatic, auto_kind=auto_kind, attachments=attachments,
                               row_key=row_key))  # fmt: skip
    if queued:
        session.flush()  # one flush for all rows: callers record the returned rows' ids (case events)
    return queued


def _add_row(
    session: Session, settings: Settings, *, template: str, rendered: Rendered, rcpt: Recipient,
    now: datetime, case: Case | None, in_reply_to: str | None, references: Sequence[str],
    automatic: bool, auto_kind: str, attachments: Sequence[tuple[str, str, bytes]], row_key: str | None,
) -> OutboxItem:  # fmt: skip
    kind = template.replace("_", "-")
    mid = message_id_for(kind, _mid_key(row_key), settings.mail_domain, settings.secret_bytes)
    number = case.id if case is not None else None
    draft = Draft(
        rendered=rendered, to=rcpt.email, to_name=rcpt.name, message_id=mid, case_number=number,
        in_reply_to=in_reply_to, references=tuple(references), automatic=automatic, auto_kind=auto_kind,
        reply_to=None if case is None else reply_address(settings.support_address, case.id, settings.secret_bytes),
        now=now, thread_topic=None if case is None else tag_subject(case.subject, case.id),
        thread_started=None if case is None else case.created_at, from_name=settings.desk.name,
    )  # fmt: skip
    item = OutboxItem(
        case_id=number, template=template, from_addr=settings.support_address, to_addr=rcpt.email.lower(),
        subject=subject_text(rendered.subject, number), message_id=mid, automatic=automatic,
        data=compose_draft(settings, draft, attachments) if attachments else None,
        pending=None if attachments else draft.to_json(),
        status=OutboxStatus.QUEUED.value, attempts=0, created_at=now, next_attempt_at=now,
        expires_at=now + timedelta(hours=settings.relay.give_up_hours), dedupe_key=row_key,
    )  # fmt: skip
    session.add(item)
    if case is not None:
        session.add(ThreadId(message_id=mid, case_id=case.id))
        # Through the relationship: the flush that inserts the row fills in outbox_id.
        item.case_messages.append(CaseMessage(
            case_id=case.id, direction=Direction.OUT.value, author="system" if automatic else "staff",
            from_addr=settings.support_address, to_addrs=[rcpt.email], subject=item.subject,
            message_id=mid, date=now, text=rendered.text, html=rendered.html,
        ))  # fmt: skip
    log.info("outbox: queued %s to %s %s", template, rcpt.email, mid)
    return item


# Stores composed bytes unless another reader stored theirs first (the check and the write are one
# statement, so on PostgreSQL a concurrent one waits for the row lock and then finds data set).
_STORE = (
    update(OutboxItem)
    .where(OutboxItem.id == bindparam("row"), OutboxItem.data.is_(None))
    .values(data=bindparam("composed"), pending=null())
    .execution_options(synchronize_session=False)
)


def message_bytes(item: OutboxItem, settings: Settings) -> bytes:
    """The mail's wire bytes: the stored ones, else composed now from the row's draft and stored.

    Every reader of a row's bytes goes through here (the sender, tests). The bytes are composed once:
    the first reader stores them (a later or concurrent one gets those, not its own: the MIME boundary
    is random), so every delivery attempt sends exactly the same bytes even if the templates, the code
    or the settings changed meanwhile (STYLE §5). The sender calls this in the transaction that claims
    the row, so they are stored before the first attempt.
    """
    if item.data is not None:
        return item.data
    if item.pending is None:
        raise ValueError(f"outbox {item.id} has neither bytes nor a draft")
    data = compose_draft(settings, Draft.from_json(item.pending))
    session = object_session(item)
    if session is None or item.id is None:  # detached, or not inserted yet: it keeps them in memory
        item.data, item.pending = data, None
        return data
    kept = store_bytes(session, item.id, data)
    set_committed_value(item, "data", kept)
    set_committed_value(item, "pending", None)
    return kept


def store_bytes(session: Session, item_id: int, data: bytes) -> bytes:
    """Store a row's composed bytes unless a reader stored some first; the bytes the row now holds."""
    stored = cast("CursorResult[Any]", session.execute(_STORE, {"row": item_id, "composed": data}))
    if stored.rowcount == 1:
        return data
    kept = session.scalar(select(OutboxItem.data).where(OutboxItem.id == item_id))  # another reader's
    if kept is None:
        raise ValueError(f"outbox {item_id} has no bytes after storing them")
    return kept


def claim_due(session: Session, now: datetime, limit: int, lease: timedelta) -> list[OutboxItem]:
    """Claim up to ``limit`` due rows for ``lease`` (so no other sender takes them meanwhile).

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets several maild processes claim disjoint rows. SQLite
    has one writer at a time (``BEGIN IMMEDIATE`` in maild.db), which serialises claims anyway.
    """
    stmt = (
        select(OutboxItem)
        .where(OutboxItem.status == OutboxStatus.QUEUED.value, OutboxItem.next_attempt_at <= now)
        .where(or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until <= now))
        .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    # Without the bytes: a row with attachments can hold up to the size limit (the sender reads
    # them row by row, just before delivery; ``stored_sizes`` tells which rows have them).
    items = list(session.scalars(stmt.options(defer(OutboxItem.data))))
    for item in items:
        item.claimed_until = now + lease
    session.flush()
    return items


def stored_sizes(session: Session, ids: Sequence[int]) -> dict[int, int]:
    """The length of the stored bytes of each of ``ids`` that has them (rows without: drafts)."""
    if not ids:
        return {}
    rows = session.execute(select(OutboxItem.id, func.length(OutboxItem.data))
                           .where(OutboxItem.id.in_(ids), OutboxItem.data.is_not(None)))
    return {row_id: size for row_id, size in rows}


def outbox_json(item: OutboxItem) -> dict[str, Any]:
    """CONTRACT's outbox item. Expired rows are ``failed`` with ``last_error`` "expired after ..."."""
    return {
        "id": item.id,
        "case": item.case_id,
        "template": item.template,
        "to": item.to_addr,
        "subject": item.subject,
        "message_id": item.message_id,
        "status": item.status,
        "attempts": item.attempts,
        "last_error": item.last_error,
    }


def mark_bounced(
    session: Session, message_id: str, recipient: str | None, detail: str, now: datetime,
    *, permanent: bool = True,
) -> OutboxItem | None:  # fmt: skip
    """Record a bounce (DSN) of our mail ``message_id``: row bounced, address blocked, case event.

    A permanent bounce (5.x.x) blocks automatic mail to the address for 30 days, which is what stops
    a bouncing ack from feeding a loop (RELIABILITY L2). Returns the row, or None if not ours.
    """
    mid = message_id.strip().strip("<>").strip()  # stored like inbound ids: without brackets
    stmt = select(OutboxItem).where(OutboxItem.message_id == mid)
    if recipient:
        stmt = stmt.where(OutboxItem.to_addr == recipient.strip().lower())
    item = session.scalars(stmt).first()
    if item is None:
        return None
    item.status = OutboxStatus.BOUNCED.value
    item.last_error = f"bounced: {detail}"[:2000]
    item.claimed_until = None
    address = item.to_addr.lower()
    if permanent:
        block = session.get(BouncingAddress, address)
        if block is None:
            session.add(BouncingAddress(address=address, until=now + BOUNCE_BLOCK, reason=detail[:2000]))
        else:
            block.until = max(block.until, now + BOUNCE_BLOCK)
            block.reason = detail[:2000]
    if item.case_id is not None:
        session.add(CaseEvent(
            case_id=item.case_id, at=now, actor="system", kind="mail-bounced",
            detail={"outbox": item.id, "to": address, "message_id": mid, "detail": detail,
                    "permanent": permanent},
        ))  # fmt: skip
    return item
