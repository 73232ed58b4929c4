# SPDX-License-Identifier: MIT
"""Who may do what by mail (SPEC §1, §2, §3).

Only MPOCs of a known organisation open cases. A reply to a case may come from its requester, its
participants, any contact of its organisation, or staff; anyone else is held and the case is left
untouched (ticket-hijack protection). A sender whose upstream DMARC check failed counts as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from maild.directory import contact_by_email, org_by_domain, staff_by_email
from maild.enums import HoldReason
from maild.ingest.parse import Inbound
from maild.models import Case, Contact, Organisation, Staff


@dataclass(frozen=True)
class Allowed:
    contact: Contact | None
    staff: Staff | None
    organisation: Organisation | None


@dataclass(frozen=True)
class Hold:
    reason: HoldReason
    detail: str
    organisation: Organisation | None


def _sender(inbound: Inbound) -> str | None:
    return inbound.from_addr


def for_new_case(session: Session, inbound: Inbound, *, unverified: str | None = None) -> Allowed | Hold:
    """May the sender open a case? Only an active MPOC of a known organisation may.

    ``unverified`` (a trusted upstream DMARC failure, ``maild.ingest.headers``) holds the message.
    """
    sender = _sender(inbound)
    if sender is None:
        detail = "no single readable From address" if inbound.from_count != 1 else "unreadable From address"
        return Hold(HoldReason.UNAUTHORISED, detail, None)
    if unverified is not None:
        return Hold(HoldReason.UNAUTHORISED, f"{sender} is unverified: {unverified}", org_by_domain(session, sender))
    contact = contact_by_email(session, sender)
    if contact is not None and contact.is_mpoc:
        return Allowed(contact, None, contact.organisation)
    org = contact.organisation if contact is not None else org_by_domain(session, sender)
    if contact is not None:
        detail = f"{sender} is a contact of {org.name if org else 'an organisation'} but not an MPOC"
    elif org is not None:
        detail = f"{sender} is not a known contact of {org.name}"
    else:
        detail = f"{sender} is not a contact of any known organisation"
    return Hold(HoldReason.UNAUTHORISED, detail, org)


def for_reply(session: Session, inbound: Inbound, case: Case, *, unverified: str | None = None) -> Allowed | Hold:
    """May the sender add to ``case``? Staff, the requester, participants and the org's contacts may;
    none of them when the sender is ``unverified`` (not even staff: a forged From grants nothing)."""
    sender = _sender(inbound)
    if sender is None:
        return Hold(HoldReason.HIJACK, "no single readable From address", case.organisation)
    if unverified is not None:
        return Hold(HoldReason.HIJACK, f"{sender} is unverified: {unverified}", case.organisation)
    staff = staff_by_email(session, sender)
    if staff is not None:
        return Allowed(None, staff, case.organisation)
    contact = contact_by_email(session, sender)
    if contact is not None and contact.active and case.organisation_id is not None \
            and contact.organisation_id == case.organisation_id:
        return Allowed(contact, None, case.organisation)
    if sender == case.requester or sender in case.participants:
        return Allowed(contact, None, case.organisation)
    return Hold(HoldReason.HIJACK, f"{sender} is neither on case {case.id} nor a contact of its organisation",
                case.organisation)
