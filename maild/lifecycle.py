# SPDX-License-Identifier: MIT
"""Pure case rules (SPEC §4): what a customer's mail does to a case, and which status changes staff
may make. No database here: the inputs are plain values, the output a frozen Decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from maild.enums import Outcome, Status


@dataclass(frozen=True)
class CaseState:
    number: int
    status: Status
    closed_at: datetime | None


@dataclass(frozen=True)
class Decision:
    """``outcome`` with the case it applies to (for new-linked-case: the original), the status the
    case moves to (None: unchanged) and why, in words for the audit trail."""

    outcome: Outcome
    case: int | None
    new_status: Status | None
    reason: str


def decide(case: CaseState | None, *, now: datetime, reopen_days: int = 7) -> Decision:
    """What a customer's (non-automatic) mail does, given the case it threads to, if any."""
    if case is None:
        return Decision(Outcome.NEW_CASE, None, Status.NEW, "new conversation")
    status = case.status
    if status is Status.CLOSED:
        if case.closed_at is not None and now - case.closed_at <= timedelta(days=reopen_days):
            return Decision(Outcome.REOPENED, case.number, Status.CUSTOMER_REOPENED,
                            f"reply within {reopen_days} days of closing")
        return Decision(Outcome.NEW_LINKED_CASE, case.number, Status.NEW,
                        f"reply more than {reopen_days} days after closing")
    if status is Status.CLOSED_NO_RESPONSE:
        return Decision(Outcome.NEW_LINKED_CASE, case.number, Status.NEW, "reply to a case closed for no response")
    if status is Status.RESOLVED_FOLLOW_UP:
        return Decision(Outcome.THREADED, case.number, Status.IN_PROGRESS, "customer answered the follow-up")
    return Decision(Outcome.THREADED, case.number, None, "customer reply")


# Which status staff may move a case to from each status (SPEC §4). New cases are picked up; closed
# cases are reopened only by the customer's mail or explicitly to In Progress.
_OPEN = {Status.IN_PROGRESS, Status.ON_HOLD, Status.SHIPPING, Status.RESOLVED_FOLLOW_UP}
ALLOWED: dict[Status, frozenset[Status]] = {
    Status.NEW: frozenset(_OPEN | {Status.DUPLICATE, Status.CLOSED}),
    Status.IN_PROGRESS: frozenset(_OPEN - {Status.IN_PROGRESS} | {Status.DUPLICATE, Status.CLOSED}),
    Status.ON_HOLD: frozenset({Status.IN_PROGRESS, Status.SHIPPING, Status.RESOLVED_FOLLOW_UP, Status.CLOSED,
                               Status.DUPLICATE}),
    Status.SHIPPING: frozenset({Status.IN_PROGRESS, Status.ON_HOLD, Status.RESOLVED_FOLLOW_UP, Status.CLOSED}),
    Status.RESOLVED_FOLLOW_UP: frozenset({Status.IN_PROGRESS, Status.CLOSED, Status.CLOSED_NO_RESPONSE}),
    Status.CUSTOMER_REOPENED: frozenset(_OPEN | {Status.CLOSED, Status.DUPLICATE}),
    Status.CLOSED: frozenset({Status.IN_PROGRESS}),
    Status.CLOSED_NO_RESPONSE: frozenset({Status.IN_PROGRESS}),
    Status.DUPLICATE: frozenset({Status.IN_PROGRESS}),
}


class TransitionError(ValueError):
    pass


def check_transition(old: Status, new: Status) -> None:
    """Raise TransitionError unless staff may move a case from ``old`` to ``new``."""
    if new == old:
        raise TransitionError(f"case is already {old.label}")
    if new not in ALLOWED[old]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[old]))
        raise TransitionError(f"cannot change status from {old.value} to {new.value} (allowed: {allowed})")
