# SPDX-License-Identifier: MIT
"""The intake sequence: one message from bytes to a recorded decision, written out step by step.

store raw -> parse -> dedupe -> screen -> thread -> authorise -> decide -> apply (+ outbound mail).
Everything happens in the caller's transaction. The raw bytes are stored first; the rest runs in a
savepoint, so a message whose processing fails is still kept, in quarantine, and the SMTP 250 stays
true (RELIABILITY D5). ``run_ingest`` parses before it opens the transaction (``preparse``): parsing
is CPU work that needs no database, and SQLite's one write lock should not wait for it; a parse
failure is carried into the transaction and handled there exactly as if it happened inside.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session, sessionmaker

from maild import blobio, clock, macd
from maild.cases import add_inbound, follow_duplicates, open_case, record_event, set_status
from maild.config import Settings
from maild.db import transaction
from maild.directory import contact_by_email, primary_mpocs
from maild.enums import HoldReason, Outcome, Status
from maild.escalation import escalate, wants_escalation
from maild.faults import fault_point
from maild.ingest import authorize, bigmail, bounces, headers, limits
from maild.ingest.parse import Inbound, ParseError, parse
from maild.ingest.raw import RawMail
from maild.ingest.screen import ScreenContext, no_ack_reason, screen
from maild.ingest.spool import pieces
from maild.lifecycle import CaseState, Decision, decide
from maild.mail import alert_staff, send
from maild.models import Case, HeldMessage, Organisation, RawBody, RawMessage
from maild.outbound.ratelimit import allow_automatic
from maild.outbound.sender import wake as wake_sender
from maild.scheduler import mark_once
from maild.threading import find_case
from maild.threading.subject import strip_prefixes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    message_id: str
    outcome: Outcome
    case: int | None
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"message_id": self.message_id, "outcome": self.outcome.value, "case": self.case,
                "reason": self.reason}


def run_ingest(
    factory: sessionmaker[Session], settings: Settings, raw: RawMail, now: datetime | None = None
) -> IngestResult:
    """One message in its own transaction; returns only after the commit (or raises)."""
    result = run_ingest_batch(factory, settings, [raw], now)[0]
    if isinstance(result, Exception):
        raise result
    return result


def run_ingest_batch(
    factory: sessionmaker[Session], settings: Settings, raws: Sequence[RawMail], now: datetime | None = None
) -> list[IngestResult | Exception]:
    """Several messages, one commit (group commit: one fsync and one turn of the write lock for all).

    In a batch of several, each message runs in its own savepoint: one that fails (a database error while
    storing it) gets its exception in the returned list and leaves the others alone; a failed commit
    raises for all, and so does a lone message's failure. Returns only after the commit.
    """
    started = time.monotonic()
    parsed = [preparse(raw, settings) for raw in raws]  # CPU only, before the write lock
    results: list[IngestResult | Exception] = []
    with transaction(factory) as session:
        alone = len(raws) == 1  # no savepoint needed: a failure rolls back the transaction and raises
        for raw, ahead in zip(raws, parsed, strict=True):
            try:
                with contextlib.nullcontext() if alone else session.begin_nested():
                    results.append(ingest(session, raw, now=now or clock.now(), settings=settings, parsed=ahead))
            except Exception as exc:
                if alone:
                    raise
                log.exception("message %s could not be stored; it will be answered 451", raw.sha256[:12])
                results.append(exc)
        fault_point("before_commit")
    wake_sender()  # an acknowledgement may be waiting in the outbox
    took = (time.monotonic() - started) * 1000
    for result in results:
        if isinstance(result, IngestResult):
            log.info("message %s: %s case=%s (%s) in %.0f ms", result.message_id, result.outcome.value,
                     result.case, result.reason, took)
    return results


Parsed = Inbound | Exception | None  # preparse's answer: the message, what parse raised, or not parsed


def preparse(raw: RawMail, settings: Settings) -> Parsed:
    """Parse ahead of the transaction; what parse raised is kept, and ``process`` treats it as its own."""
    if limits.check(raw.data, limits.limits_for(settings), raw.whole) is not None:
        return None  # process holds it without parsing (rule 7)
    try:
        return parse(_held_out(raw, settings))
    except Exception as exc:
        return exc


def _held_out(raw: RawMail, settings: Settings) -> RawMail:
    """A large message already in memory (IMAP, ``maild ingest``, SMTP without the queue) is read as
    its skeleton too: the parser's copies of its big attachments are what cost (``bigmail``). Only
    the reading: ``ingest`` stores the bytes as they came."""
    if raw.whole is not None or raw.spool is not None or len(raw.data) <= bigmail.LARGE:
        return raw
    try:
        data, whole = bigmail.split(pieces(raw.data), settings.data_dir / "spool")
    except Exception as exc:  # read whole, as any small message is
        log.info("message of %d bytes is read whole: %s", len(raw.data), exc)
        return raw
    return replace(raw, data=data, whole=whole, digests=(raw.sha256, raw.envelope_key))


def ingest(session: Session, raw: RawMail, *, now: datetime, settings: Settings,
           parsed: Parsed = None) -> IngestResult:
    hint = parsed.message_id[:998] if isinstance(parsed, Inbound) else None
    stored, duplicate = store_raw(session, raw, now, message_id=hint)
    if duplicate is not None:
        return duplicate
    return settle(session, raw, stored, now=now, settings=settings, parsed=parsed)


def settle(session: Session, raw: RawMail, stored: RawMessage, *, now: datetime, settings: Settings,
           parsed: Parsed = None, give_up: str | None = None, arrived: datetime | None = None) -> IngestResult:
    """Process a stored message and record its outcome on its row; a failure quarantines it (D5).

    ``give_up`` quarantines it without processing: the queue's answer to a message whose processing
    has stopped the process before (``maild.ingest.queue``). ``arrived`` is when a queued message was
    accepted: the reopen rule counts its days to then (everything else happens ``now``).
    """
    if give_up is not None:  # nothing may read the message now: reading it is what stopped the process
        result = hold(session, stored, None, HoldReason.UNPROCESSABLE, give_up, None, now, settings, reply=False)
        stored.outcome, stored.reason, stored.case_id = result.outcome.value, result.reason, result.case
        return result
    try:
        with session.begin_nested():
            result = process(session, raw, stored, now=now, settings=settings, parsed=parsed, arrived=arrived)
    except Exception as exc:  # the one boundary: keep the bytes, quarantine, report
        stored.message_id = _message_id_hint(raw)
        log.exception("message %s: processing failed; quarantined", stored.message_id or stored.sha256[:12])
        result = hold(session, stored, None, HoldReason.UNPROCESSABLE, f"{type(exc).__name__}: {exc}"[:500],
                      None, now, settings, reply=False)
    stored.outcome, stored.reason, stored.case_id = result.outcome.value, result.reason, result.case
    return result


def _message_id_hint(raw: RawMail) -> str | None:
    try:
        return parse(raw).message_id[:998]
    except Exception:
        return None


def store_raw(session: Session, raw: RawMail, now: datetime,
              message_id: str | None = None) -> tuple[RawMessage, IngestResult | None]:
    """Keep the bytes and envelope; the same copy arriving again is a duplicate (RELIABILITY rule 2)."""
    key = raw.envelope_key
    query = select(RawMessage).where(RawMessage.envelope_key == key)
    if raw.source_key:
        query = select(RawMessage).where(
            (RawMessage.envelope_key == key) | (RawMessage.source_key == raw.source_key))
    existing = session.scalars(query.limit(1)).first()
    if existing is not None:
        existing.duplicates += 1
        return existing, IngestResult(existing.message_id or "", Outcome.DUPLICATE, existing.case_id,
                                      f"same message already received (raw #{existing.id})")
    stored = RawMessage(envelope_key=key, sha256=raw.sha256, source=raw.source, source_key=raw.source_key,
                        mail_from=raw.mail_from, rcpt_tos=list(raw.rcpt_tos), peer=raw.peer, helo=raw.helo,
                        tls=raw.tls, received_at=raw.received_at or now, size=len(raw.data),
                        data=b"" if len(raw.data) > bigmail.LARGE else raw.data, message_id=message_id)
    session.add(stored)
    session.flush()
    if len(raw.data) > bigmail.LARGE:  # in pieces: sqlite3 would copy the value whole, and SQLite again
        bodies = cast(Table, RawBody.__table__)
        blobio.write(session.connection(), bodies, "data", "id", stored.id, pieces(raw.data), len(raw.data))
        session.expire(stored.body, ["data"])
    return stored, None


def process(session: Session, raw: RawMail, stored: RawMessage, *, now: datetime,
            settings: Settings, parsed: Parsed = None, arrived: datetime | None = None) -> IngestResult:
    # Before the parser sees it (rule 7); a message parsed ahead has passed this check already.
    over = limits.check(raw.data, limits.limits_for(settings), raw.whole) if parsed is None else None
    if over is not None:
        return hold(session, stored, None, HoldReason.UNPROCESSABLE, over, None, now, settings, reply=False)
    try:
        if isinstance(parsed, Exception):
            raise parsed
        inbound = parsed if parsed is not None else parse(raw)
    except ParseError as exc:
        return hold(session, stored, None, HoldReason.UNPROCESSABLE, str(exc), None, now, settings, reply=False)
    screened = headers.screen_headers(inbound, settings.security)  # before any policy reads a header (S7)
    inbound, unverified = screened.inbound, screened.unverified
    stored.message_id = inbound.message_id[:998]  # unchanged (no UPDATE) when parsed ahead
    earlier = _earlier_copy(session, inbound, stored)
    if earlier is not None:
        return earlier
    skip = screen(inbound, screen_context(settings))
    if skip is not None:
        if skip.kind == "bounce":
            return record_bounce(session, inbound, now, skip.reason)
        return record_ignored(session, inbound, stored, now, skip.reason)
    approval = macd.held_for_approval_reply(session, inbound) if unverified is None else None
    answered = macd.answer(session, settings, approval, inbound, stored, now) if approval else None
    if answered is not None:
        return IngestResult(inbound.message_id, *answered)
    match = find_case(session, inbound, settings)
    if match is None:
        return new_conversation(session, inbound, stored, now, settings, unverified)
    case = follow_duplicates(session, match.case)
    auth = authorize.for_reply(session, inbound, case, unverified=unverified)
    if isinstance(auth, authorize.Hold):
        return hold(session, stored, inbound, auth.reason, auth.detail, auth.organisation, now, settings,
                    case=case, reply=False)
    if auth.staff is not None:
        return staff_mail(session, inbound, stored, case, auth.staff.email, now, settings)
    decision = decide(CaseState(case.id, Status(case.status), case.closed_at), now=min(now, arrived or now),
                      reopen_days=settings.intake.reopen_days)
    if decision.outcome is Outcome.NEW_LINKED_CASE and not _may_open(auth, inbound, case):
        return hold(session, stored, inbound, HoldReason.UNAUTHORISED,
                    f"{inbound.from_addr} may not open a new case (not an MPOC)", auth.organisation, now, settings)
    return apply(session, decision, case, inbound, stored, auth.organisation, now, settings)


def _may_open(auth: authorize.Allowed, inbound: Inbound, case: Case) -> bool:
    return (auth.contact is not None and auth.contact.is_mpoc) or inbound.from_addr == case.requester


def _earlier_copy(session: Session, inbound: Inbound, stored: RawMessage) -> IngestResult | None:
    """The same Message-ID already processed: a second copy (another route, a resend) changes nothing."""
    if inbound.message_id_generated:
        return None
    row = session.execute(
        select(RawMessage.id, RawMessage.case_id).where(
            RawMessage.message_id == stored.message_id, RawMessage.id != stored.id,
            RawMessage.outcome.is_not(None)).limit(1)).first()
    if row is None:
        return None
    return IngestResult(inbound.message_id, Outcome.DUPLICATE, row.case_id,
                        f"Message-ID already received (raw #{row.id})")


def screen_context(settings: Settings) -> ScreenContext:
    return ScreenContext(own_addresses=settings.own_addresses, own_domains=frozenset({settings.mail_domain}),
                         loop_token=settings.loop_token, max_received=settings.intake.max_received,
                         secret=settings.secret_bytes)


def intake_kind(inbound: Inbound, settings: Settings) -> str:
    """The case kind the intake address implies (support@ technical, macd@, billing@ ...)."""
    kinds = settings.intake_kinds
    for addr in (*inbound.raw.rcpt_tos, *inbound.to, *inbound.cc):
        addr = addr.lower()
        if addr in kinds:
            return kinds[addr]
    return "technical"


def new_conversation(session: Session, inbound: Inbound, stored: RawMessage, now: datetime,
                     settings: Settings, unverified: str | None = None) -> IngestResult:
    auth = authorize.for_new_case(session, inbound, unverified=unverified)
    if isinstance(auth, authorize.Hold):  # no polite reply to a forged From (backscatter)
        if unverified is None and intake_kind(inbound, settings) == "macd" \
                and _known_contact(session, inbound, auth.organisation):
            return hold_macd(session, stored, inbound, auth.organisation, now, settings)
        return hold(session, stored, inbound, auth.reason, auth.detail, auth.organisation, now, settings,
                    reply=unverified is None)
    decision = decide(None, now=now)
    return apply(session, decision, None, inbound, stored, auth.organisation, now, settings)


def _known_contact(session: Session, inbound: Inbound, org: Organisation | None) -> bool:
    contact = contact_by_email(session, inbound.from_addr)
    return org is not None and contact is not None and contact.active and contact.organisation_id == org.id \
        and bool(primary_mpocs(session, org.id))


def hold_macd(session: Session, stored: RawMessage, inbound: Inbound, org: Organisation | None, now: datetime,
              settings: Settings) -> IngestResult:
    """A MACD request from a known non-MPOC contact waits for an MPOC's approval (SPEC §5)."""
    assert org is not None
    result = hold(session, stored, inbound, HoldReason.MACD_APPROVAL, f"{inbound.from_addr} is not an MPOC; "
                  f"approval requested from {org.name}'s primary MPOC", org, now, settings, reply=False)
    held = session.scalars(select(HeldMessage).where(HeldMessage.raw_id == stored.id)).one()
    macd.request_approval(session, settings, held, inbound, org, now)
    return result


def apply(session: Session, decision: Decision, case: Case | None, inbound: Inbound, stored: RawMessage,
          org: Organisation | None, now: datetime, settings: Settings) -> IngestResult:
    """Write the decision and queue the mail it promises, in this transaction."""
    sender = inbound.from_addr or ""
    if decision.outcome in (Outcome.NEW_CASE, Outcome.NEW_LINKED_CASE):
        original = case
        case = open_case(session, settings, kind=intake_kind(inbound, settings), requester=sender,
                         requester_name=inbound.from_name, organisation=org,
                         subject=strip_prefixes(inbound.subject) or "(no subject)", now=now, actor=sender,
                         linked_to=original.id if original else None, reason=decision.reason)
        add_inbound(session, case, inbound, stored, author="customer", now=now, new_case=True)
        template = "ack_linked_case" if original else "ack_new_case"
        extra: dict[str, Any] = {"original": {"number": original.id, "subject": original.subject,
                              "status": original.status}} if original else {}
        if original is not None:
            record_event(session, original, kind="linked-case", actor=sender, now=now, new_case=case.id)
        acknowledge(session, settings, template, inbound, case, now, **extra)
        return IngestResult(inbound.message_id, decision.outcome, case.id, decision.reason)
    assert case is not None
    msg = add_inbound(session, case, inbound, stored, author="customer", now=now)
    record_event(session, case, kind="customer-reply", actor=sender, now=now, message_id=inbound.message_id)
    case.awaiting_customer_since = None  # the no-response clock stops (SPEC §4)
    case.no_response_warned_at = None
    if decision.new_status is not None:
        set_status(session, case, decision.new_status, actor=sender, now=now, reason=decision.reason)
    if decision.outcome is Outcome.REOPENED:
        acknowledge(session, settings, "ack_reopened", inbound, case, now)
    if wants_escalation(msg.text):  # "Please escalate" as the reply's first line (SPEC §4)
        escalate(session, settings, case, actor=sender, now=now, reason="requested by the customer by mail")
    return IngestResult(inbound.message_id, decision.outcome, case.id, decision.reason)


def acknowledge(session: Session, settings: Settings, template: str, inbound: Inbound, case: Case,
                now: datetime, **extra: Any) -> None:
    """The automatic answer to a customer's mail, unless the mail asks for none or a cap is reached."""
    sender = inbound.from_addr or ""
    suppressed = no_ack_reason(inbound)
    if suppressed is None:
        items = send(session, settings, template, to=[(inbound.from_name, sender)], now=now, case=case,
                     in_reply_to=inbound.message_id, references=(*inbound.references, inbound.message_id),
                     **extra)
        if items:
            return
        suppressed = "no acknowledgement: sender bouncing or not mailable"
        if not allow_automatic(session, settings, sender, template, now, None):
            suppressed = "no acknowledgement: sender over its acknowledgement rate limit"
            flood_alert(session, settings, sender, now)
    record_event(session, case, kind="suppressed-ack", actor="maild", now=now, reason=suppressed,
                 message_id=inbound.message_id)


def flood_alert(session: Session, settings: Settings, sender: str, now: datetime) -> None:
    """Tell staff, once per sender and day, that a sender's mail outruns the acknowledgement caps
    (RELIABILITY L3/L6): a mail loop or a flood. Every message is still stored and on its case."""
    day = now.astimezone(settings.zone).date().isoformat()
    if not mark_once(session, f"flood:{sender}:{day}", now):
        return  # told today already: one primary-key probe per suppressed ack, nothing more
    since = now - timedelta(hours=1)
    count = session.scalar(select(func.count(RawMessage.id)).join(Case, RawMessage.case_id == Case.id).where(
        Case.requester == sender, RawMessage.received_at > since)) or 0
    alert_staff(session, settings, title=f"Mail flood from {sender}: acknowledgements suppressed",
                detail=f"{count} messages from {sender} in the last hour reached the acknowledgement cap. "
                       "Every message is stored and on its case; no further acknowledgements go to this "
                       "sender until the cap window passes. A mail loop or an automated sender is likely.",
                now=now, dedupe_key=f"flood:{sender}:{day}")


def staff_mail(session: Session, inbound: Inbound, stored: RawMessage, case: Case, staff: str,
               now: datetime, settings: Settings) -> IngestResult:
    """A technician answered a case by mail: record it as a staff reply and relay it to the requester."""
    from maild.staff import staff_reply

    msg = add_inbound(session, case, inbound, stored, author="staff", now=now)
    staff_reply(session, settings, case, body=msg.text, staff_email=staff, now=now, recorded=True,
                attachments=[(a.filename, a.content_type, a.read()) for a in inbound.attachments])
    return IngestResult(inbound.message_id, Outcome.THREADED, case.id, f"staff reply by mail from {staff}")


def record_ignored(session: Session, inbound: Inbound, stored: RawMessage, now: datetime,
                   reason: str) -> IngestResult:
    """Auto-replies, bulk and looped mail: no case, no reply. One that answers a case is kept on it."""
    if reason.startswith(("loop", "own")):
        return IngestResult(inbound.message_id, Outcome.IGNORED, None, reason)
    settings_free_match = find_case_for_ignored(session, inbound)
    if settings_free_match is not None:
        add_inbound(session, settings_free_match, inbound, stored, author="auto", now=now)
        record_event(session, settings_free_match, kind="suppressed-ack", actor=inbound.from_addr or "", now=now,
                     reason=reason, message_id=inbound.message_id)
        return IngestResult(inbound.message_id, Outcome.IGNORED, settings_free_match.id, reason)
    return IngestResult(inbound.message_id, Outcome.IGNORED, None, reason)


def find_case_for_ignored(session: Session, inbound: Inbound) -> Case | None:
    from maild.threading.match import by_references

    match = by_references(session, inbound)
    if match is None or inbound.from_addr is None:
        return None
    case = match.case
    return case if inbound.from_addr == case.requester or inbound.from_addr in case.participants else None


def record_bounce(session: Session, inbound: Inbound, now: datetime, reason: str) -> IngestResult:
    """A DSN: matched to the outbound mail it reports on, recorded on that mail's case."""
    from maild.outbound.outbox import mark_bounced

    info = bounces.read_dsn(inbound)
    case_id: int | None = None
    for mid in info.original_message_ids:
        item = mark_bounced(session, mid, info.failed_recipients[0] if info.failed_recipients else None,
                            info.diagnostic or info.status or reason, now, permanent=info.permanent)
        if item is not None:
            case_id = item.case_id
            break
    detail = f"{reason}; matched outbound mail" if case_id else f"{reason}; no outbound mail of ours matched"
    return IngestResult(inbound.message_id, Outcome.BOUNCE, case_id, detail)


def hold(session: Session, stored: RawMessage, inbound: Inbound | None, reason: HoldReason, detail: str,
         org: Organisation | None, now: datetime, settings: Settings, *, case: Case | None = None,
         reply: bool = True) -> IngestResult:
    """Keep the message for staff; tell the sender (rate-limited) and, per config, the org's primary MPOC."""
    sender = inbound.from_addr if inbound else None
    held = HeldMessage(raw_id=stored.id, reason=reason.value, detail=detail, sender=sender or "",
                       subject=inbound.subject if inbound else "", organisation_id=org.id if org else None,
                       case_id=case.id if case else None, created_at=now)
    session.add(held)
    session.flush()
    if reply and inbound is not None and sender and reason is HoldReason.UNAUTHORISED:
        send(session, settings, "unauthorised_sender", to=[(inbound.from_name, sender)], now=now, org=org,
             in_reply_to=inbound.message_id, held_subject=inbound.subject)
        if org is not None and settings.intake.notify_mpoc_on_unauthorised:
            mpocs = [(c.name, c.email) for c in primary_mpocs(session, org.id) if c.email != sender]
            send(session, settings, "mpoc_unauthorised_notice", to=mpocs, now=now, org=org,
                 auto_kind="auto-generated", sender={"name": inbound.from_name, "email": sender},
                 held_subject=inbound.subject, held_id=held.id)
    mid = inbound.message_id if inbound else (stored.message_id or f"raw-{stored.id}")
    where = f" (case {case.id} untouched)" if case is not None else ""
    return IngestResult(mid, Outcome.HELD, None, f"{reason.value}: {detail}{where} [held #{held.id}]")
