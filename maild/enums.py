# SPDX-License-Identifier: MIT
"""The closed vocabularies of maild, spelled as CONTRACT.md's JSON spells them (kebab case)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    NEW = "new"
    IN_PROGRESS = "in-progress"
    DUPLICATE = "duplicate"
    ON_HOLD = "on-hold"
    SHIPPING = "shipping"
    RESOLVED_FOLLOW_UP = "resolved-follow-up-required"
    CUSTOMER_REOPENED = "customer-reopened"
    CLOSED_NO_RESPONSE = "closed-no-response"
    CLOSED = "closed"

    @property
    def label(self) -> str:
        """The SPEC's English name, e.g. ``Resolved Follow-up Required``."""
        return STATUS_LABELS[self]

    @property
    def is_closed(self) -> bool:
        return self in (Status.CLOSED, Status.CLOSED_NO_RESPONSE, Status.DUPLICATE)


STATUS_LABELS: dict[Status, str] = {
    Status.NEW: "New",
    Status.IN_PROGRESS: "In Progress",
    Status.DUPLICATE: "Duplicate",
    Status.ON_HOLD: "On Hold",
    Status.SHIPPING: "Shipping",
    Status.RESOLVED_FOLLOW_UP: "Resolved Follow-up Required",
    Status.CUSTOMER_REOPENED: "Customer Reopened",
    Status.CLOSED_NO_RESPONSE: "Closed No Response",
    Status.CLOSED: "Closed",
}


class Priority(StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"
    P1G = "P1G"


class CaseKind(StrEnum):
    """What a case is about; the intake address decides it (support@, macd@, billing@)."""

    TECHNICAL = "technical"
    MACD = "macd"
    BILLING = "billing"
    MASTER = "master"


class Outcome(StrEnum):
    """What intake did with one message (CONTRACT's ingest line)."""

    NEW_CASE = "new-case"
    THREADED = "threaded"
    REOPENED = "reopened"
    NEW_LINKED_CASE = "new-linked-case"
    HELD = "held"
    IGNORED = "ignored"
    BOUNCE = "bounce"
    DUPLICATE = "duplicate"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class OutboxStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"


class HeldStatus(StrEnum):
    HELD = "held"
    ACCEPTED = "accepted"
    DROPPED = "dropped"


class HoldReason(StrEnum):
    UNAUTHORISED = "unauthorised-sender"
    HIJACK = "not-a-participant"
    UNPROCESSABLE = "unprocessable"
    MACD_APPROVAL = "macd-awaiting-approval"


class Role(StrEnum):
    MPOC_PRIMARY = "mpoc-primary"
    MPOC_SECONDARY = "mpoc-secondary"
    TECHNICAL = "technical"
    MAJOR_CASES = "major-cases"
    MAINTENANCE = "maintenance"
    FINANCE = "finance"
    ESCALATION = "escalation"


MPOC_ROLES = frozenset({Role.MPOC_PRIMARY, Role.MPOC_SECONDARY})
