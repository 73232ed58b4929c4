# SPDX-License-Identifier: MIT
"""Which case a message belongs to, strongest evidence first (SPEC §3).

1. In-Reply-To / References name a Message-ID the case sent or received (the ``thread_ids`` index);
2. the subject carries the case tag under any reply/forward prefixes;
3. a recipient is the case's reply address (``support+case-N-<token>@``); a tampered token is no match.
Who may add to the matched case is decided afterwards (``ingest.authorize``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.config import Settings
from maild.ingest.parse import Inbound
from maild.models import Case, ThreadId
from maild.threading.addresses import parse_reply_address
from maild.threading.subject import find_case_tag


@dataclass(frozen=True)
class CaseMatch:
    case: Case
    how: str  # references | subject-tag | reply-address


def by_references(session: Session, inbound: Inbound) -> CaseMatch | None:
    ids = inbound.thread_ids
    if not ids:
        return None
    rows = session.execute(select(ThreadId.message_id, ThreadId.case_id).where(ThreadId.message_id.in_(ids[:100])))
    found: dict[str, int] = {}
    for mid, case_id in rows:
        found[mid] = min(found.get(mid, case_id), case_id)  # shared by two cases: the older one
    for mid in ids:  # In-Reply-To first, then References newest first
        if mid in found:
            case = session.get(Case, found[mid])
            if case is not None:
                return CaseMatch(case, "references")
    return None


def by_subject_tag(session: Session, inbound: Inbound) -> CaseMatch | None:
    number = find_case_tag(inbound.subject)
    if number is None:
        return None
    case = session.get(Case, number)
    return CaseMatch(case, "subject-tag") if case is not None else None


def by_reply_address(session: Session, inbound: Inbound, settings: Settings) -> CaseMatch | None:
    for rcpt in (*inbound.raw.rcpt_tos, *inbound.to, *inbound.cc):
        target = parse_reply_address(rcpt, settings.intake_kinds, settings.secret_bytes)
        if target is None or target.token_valid is False:
            continue
        case = session.get(Case, target.case_number)
        if case is not None:
            return CaseMatch(case, "reply-address")
    return None


def find_case(session: Session, inbound: Inbound, settings: Settings) -> CaseMatch | None:
    return (by_references(session, inbound) or by_subject_tag(session, inbound)
            or by_reply_address(session, inbound, settings))
