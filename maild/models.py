# SPDX-License-Identifier: MIT
"""The store: typed SQLAlchemy 2 models. Nothing here assumes SQLite or PostgreSQL.

Raw mail and attachments are rows (``raw_messages`` with ``raw_bodies``, ``blobs``) rather than files,
so that a message is durable with one commit and every maild process on every machine sharing a
PostgreSQL store sees the same bytes (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from maild.enums import Status

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Organisation(Base):
    __tablename__ = "organisations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    locale: Mapped[str] = mapped_column(String(8), default="en")
    products: Mapped[list[str]] = mapped_column(default=list)
    timezone: Mapped[str | None] = mapped_column(String(64))
    escalation: Mapped[list[str]] = mapped_column(default=list)  # ordered contact emails
    domains: Mapped[list[OrgDomain]] = relationship(back_populates="organisation", cascade="all")


class OrgDomain(Base):
    __tablename__ = "org_domains"
    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    organisation: Mapped[Organisation] = relationship(back_populates="domains")


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    title: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(64), default="")
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    roles: Mapped[list[str]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    organisation: Mapped[Organisation] = relationship()

    @property
    def is_mpoc(self) -> bool:
        return self.active and bool({"mpoc-primary", "mpoc-secondary"} & set(self.roles))


class Staff(Base):
    __tablename__ = "staff"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    kinds: Mapped[list[str]] = mapped_column(default=list)  # empty: every case kind
    last_assigned_at: Mapped[datetime | None]


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (
        # the scheduler's and status page's lookups (master cases, open cases of a kind) without a scan
        Index("ix_cases_kind_status", "kind", "status"),
        # the no-response rule looks only at cases waiting on the customer: a small partial index
        Index("ix_cases_awaiting", "awaiting_customer_since",
              sqlite_where=text("awaiting_customer_since IS NOT NULL"),
              postgresql_where=text("awaiting_customer_since IS NOT NULL")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)  # the case number in "[Case #N]"
    kind: Mapped[str] = mapped_column(String(16), default="technical")
    priority: Mapped[str] = mapped_column(String(4), default="P4")
    status: Mapped[str] = mapped_column(String(32), default=Status.NEW.value, index=True)
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), index=True)
    requester: Mapped[str] = mapped_column(String(320), default="")
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    subject: Mapped[str] = mapped_column(Text, default="")
    platform: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    linked_to_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    master_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    participants: Mapped[list[str]] = mapped_column(default=list)  # addresses allowed to reply
    last_inbound_message_id: Mapped[str | None] = mapped_column(String(998))
    # clocks (SPEC §4); all in UTC
    first_response_due: Mapped[datetime | None]
    first_responded_at: Mapped[datetime | None]
    next_update_due: Mapped[datetime | None]
    etr: Mapped[datetime | None]
    hold_until: Mapped[datetime | None]
    awaiting_customer_since: Mapped[datetime | None]
    no_response_warned_at: Mapped[datetime | None]
    escalation_level: Mapped[int] = mapped_column(Integer, default=1)
    expedited: Mapped[bool] = mapped_column(Boolean, default=False)
    organisation: Mapped[Organisation | None] = relationship()
    assignee: Mapped[Staff | None] = relationship()


class ThreadId(Base):
    """Every Message-ID a case has sent or received: the index threading looks up first."""

    __tablename__ = "thread_ids"
    message_id: Mapped[str] = mapped_column(String(998), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), primary_key=True)


class RawMessage(Base):
    """A message exactly as received, with its envelope: kept whatever happens to it."""

    __tablename__ = "raw_messages"
    __table_args__ = (
        # the SMTP queue: messages accepted but not yet processed (outcome NULL), oldest first
        Index("ix_raw_messages_pending", "id", sqlite_where=text("outcome IS NULL"),
              postgresql_where=text("outcome IS NULL")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    envelope_key: Mapped[str] = mapped_column(String(64), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))
    source_key: Mapped[str | None] = mapped_column(String(600), unique=True)
    mail_from: Mapped[str | None] = mapped_column(String(998))
    rcpt_tos: Mapped[list[str]] = mapped_column(default=list)
    peer: Mapped[str | None] = mapped_column(String(128))
    helo: Mapped[str | None] = mapped_column(String(255))
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime]
    size: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    # processing runs begun on a queued message; one that keeps stopping the process is quarantined
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    body: Mapped[RawBody] = relationship()
    # the bytes, kept in raw_bodies: ``RawMessage(data=...)`` and ``row.data`` read and write them there
    data: AssociationProxy[bytes] = association_proxy("body", "data", creator=lambda data: RawBody(data=data))


class RawBody(Base):
    """A message's bytes, apart from its ``raw_messages`` row: SQLite rewrites a whole row on any
    update, and the queue updates that row several times. Never updated itself."""

    __tablename__ = "raw_bodies"
    id: Mapped[int] = mapped_column(ForeignKey("raw_messages.id"), primary_key=True)  # SQLite's rowid
    data: Mapped[bytes] = mapped_column(LargeBinary)


class CaseMessage(Base):
    __tablename__ = "case_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    author: Mapped[str] = mapped_column(String(16))  # customer | staff | system
    from_addr: Mapped[str] = mapped_column(String(998), default="")
    to_addrs: Mapped[list[str]] = mapped_column(default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    date: Mapped[datetime]
    text: Mapped[str] = mapped_column(Text, default="")
    quoted: Mapped[str] = mapped_column(Text, default="")
    signature: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)  # sanitised
    raw_id: Mapped[int | None] = mapped_column(ForeignKey("raw_messages.id"))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    attachments: Mapped[list[AttachmentRow]] = relationship(back_populates="message")


class Blob(Base):
    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class AttachmentRow(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("case_messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # display only, never a path
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    token: Mapped[str] = mapped_column(String(64), unique=True)  # unguessable handle
    message: Mapped[CaseMessage] = relationship(back_populates="attachments")


class CaseEvent(Base):
    __tablename__ = "case_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class HeldMessage(Base):
    __tablename__ = "held_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    raw_id: Mapped[int] = mapped_column(ForeignKey("raw_messages.id"))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    sender: Mapped[str] = mapped_column(String(998), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    status: Mapped[str] = mapped_column(String(16), default="held", index=True)
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(320))
    result_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))


class OutboxItem(Base):
    """One mail to one recipient. Written in the transaction of the change that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_recipient", "to_addr", "template", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    template: Mapped[str] = mapped_column(String(64))
    from_addr: Mapped[str] = mapped_column(String(320))
    to_addr: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    # The finished bytes. NULL until the sender claims a row queued with ``pending`` (what compose
    # needs, see maild.outbound.outbox): they are composed once then, and every retry sends them.
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    pending: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))  # None is SQL NULL
    automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    # The case history's copy of this mail (CaseMessage.outbox_id), so both are added with one flush.
    case_messages: Mapped[list[CaseMessage]] = relationship()


class TimeEntry(Base):
    """Time staff logged on a case (MACD billing, SPEC §5)."""

    __tablename__ = "time_entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    staff: Mapped[str] = mapped_column(String(320))
    minutes: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    note: Mapped[str] = mapped_column(Text, default="")


class Subscription(Base):
    """A contact subscribed to one master case, or to every update of a platform."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("email", "master_case_id", "platform"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    master_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    platform: Mapped[str | None] = mapped_column(String(64))


class MaintenanceWindow(Base):
    __tablename__ = "maintenance_windows"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # monthly | connect | unscheduled
    start: Mapped[datetime] = mapped_column(index=True)
    end: Mapped[datetime]
    products: Mapped[list[str]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="planned")  # planned | cancelled
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    notices: Mapped[list[MaintenanceNotice]] = relationship(back_populates="window")


class MaintenanceNotice(Base):
    __tablename__ = "maintenance_notices"
    __table_args__ = (UniqueConstraint("window_id", "type", "revision"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    window_id: Mapped[int] = mapped_column(ForeignKey("maintenance_windows.id"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    sent_at: Mapped[datetime]
    recipients: Mapped[list[str]] = mapped_column(default=list)
    window: Mapped[MaintenanceWindow] = relationship(back_populates="notices")


class InvoiceSent(Base):
    __tablename__ = "invoices_sent"
    __table_args__ = (UniqueConstraint("organisation_id", "period"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    sent_at: Mapped[datetime]
    recipients: Mapped[list[str]] = mapped_column(default=list)
    filename: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    organisation: Mapped[Organisation] = relationship()


class ImapState(Base):
    """Where the poller of one mailbox stands (RFC 3501 UIDVALIDITY + last committed UID)."""

    __tablename__ = "imap_state"
    mailbox: Mapped[str] = mapped_column(String(600), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)  # 32-bit unsigned: beyond PostgreSQL's int4
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    last_message_at: Mapped[datetime | None]
    last_alert_at: Mapped[datetime | None]


class Mark(Base):
    """A once-only guard for scheduled work: a row per thing done (e.g. an SLA miss told)."""

    __tablename__ = "marks"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    at: Mapped[datetime]


class BouncingAddress(Base):
    """An address that hard-bounced our mail: no automatic mail to it until ``until``."""

    __tablename__ = "bouncing_addresses"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    until: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")
