# SPDX-License-Identifier: MIT
"""The directory: organisations, contacts and staff, imported from TOML or CSV, and looked up by mail.

Import is an upsert (organisations by name, contacts and staff by email address) in the caller's
transaction, so a bad file changes nothing and a re-import never touches case history. Records
missing from a new file are left as they are.
"""

from __future__ import annotations

import csv
import io
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from maild.enums import Role
from maild.models import Contact, Organisation, OrgDomain, Staff

LOCALES = ("en", "de", "pt")
ROLES = frozenset(r.value for r in Role)


class DirectoryError(Exception):
    """A problem in a directory file, phrased for the operator (names the record)."""


@dataclass
class ImportReport:
    organisations: int = 0
    contacts: int = 0
    staff: int = 0
    created: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"organisations": self.organisations, "contacts": self.contacts, "staff": self.staff,
                "created": self.created}


def _list(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise DirectoryError(f"{where}: expected a list of strings")


def _str(rec: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = rec.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DirectoryError(f"{where}: {key} must be a string")
    if required and not value.strip():
        raise DirectoryError(f"{where}: {key} is required")
    return value.strip()


def read_file(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Records of a TOML or CSV directory file, grouped by kind."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectoryError(f"cannot read {path}: {exc}") from exc
    if path.suffix.lower() == ".csv":
        return _read_csv(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DirectoryError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"organisation", "contact", "staff"}
    if unknown:
        raise DirectoryError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    return {k: list(data.get(k, [])) for k in ("organisation", "contact", "staff")}


def _read_csv(text: str) -> dict[str, list[dict[str, Any]]]:
    """CSV: one row per record; column ``type`` is organisation, contact or staff (see README)."""
    out: dict[str, list[dict[str, Any]]] = {"organisation": [], "contact": [], "staff": []}
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "type" not in reader.fieldnames:
        raise DirectoryError("CSV directory needs a header row with a 'type' column")
    for n, row in enumerate(reader, start=2):
        kind = (row.get("type") or "").strip().lower()
        if kind not in out:
            raise DirectoryError(f"CSV line {n}: type must be organisation, contact or staff")
        out[kind].append({k: (v or "").strip() for k, v in row.items() if k and k != "type"})
    return out


def import_records(session: Session, records: dict[str, list[dict[str, Any]]]) -> ImportReport:
    """Upsert every record; raises DirectoryError (and the caller rolls back) on the first bad one."""
    report = ImportReport()
    orgs: dict[str, Organisation] = {}
    for i, rec in enumerate(records.get("organisation", []), start=1):
        org = _upsert_org(session, rec, f"organisation #{i}", report)
        orgs[org.name] = org
        report.organisations += 1
    session.flush()
    for i, rec in enumerate(records.get("contact", []), start=1):
        _upsert_contact(session, rec, f"contact #{i}", orgs, report)
        report.contacts += 1
    for i, rec in enumerate(records.get("staff", []), start=1):
        _upsert_staff(session, rec, f"staff #{i}", report)
        report.staff += 1
    session.flush()
    return report


def _upsert_org(session: Session, rec: dict[str, Any], where: str, report: ImportReport) -> Organisation:
    name = _str(rec, "name", where, required=True)
    where = f"organisation {name!r}"
    locale = _str(rec, "locale", where) or "en"
    if locale not in LOCALES:
        raise DirectoryError(f"{where}: locale must be one of {', '.join(LOCALES)}")
    tz = _str(rec, "timezone", where) or None
    if tz:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise DirectoryError(f"{where}: unknown time zone {tz!r}") from exc
    org = session.scalar(select(Organisation).where(Organisation.name == name))
    if org is None:
        org = Organisation(name=name)
        session.add(org)
        report.created.append(f"organisation:{name}")
    org.locale = locale
    org.products = [p.lower() for p in _list(rec.get("products"), f"{where}: products")]
    org.timezone = tz
    org.escalation = [e.lower() for e in _list(rec.get("escalation"), f"{where}: escalation")]
    domains = {d.lower().lstrip("@") for d in _list(rec.get("domains"), f"{where}: domains")}
    session.flush()
    for d in domains:
        owner = session.get(OrgDomain, d)
        if owner is None:
            session.add(OrgDomain(domain=d, organisation_id=org.id))
        elif owner.organisation_id != org.id:
            owner.organisation_id = org.id
    for old in list(org.domains):
        if old.domain not in domains:
            session.delete(old)
    return org


def _upsert_contact(
    session: Session, rec: dict[str, Any], where: str, orgs: dict[str, Organisation], report: ImportReport
) -> None:
    email = _str(rec, "email", where, required=True).lower()
    where = f"contact {email}"
    if email.count("@") != 1:
        raise DirectoryError(f"{where}: not an email address")
    org_name = _str(rec, "organisation", where, required=True)
    org = orgs.get(org_name) or session.scalar(select(Organisation).where(Organisation.name == org_name))
    if org is None:
        raise DirectoryError(f"{where}: unknown organisation {org_name!r}")
    roles = [r.lower() for r in _list(rec.get("roles"), f"{where}: roles")]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise DirectoryError(f"{where}: unknown role(s) {', '.join(bad)} (known: {', '.join(sorted(ROLES))})")
    contact = session.scalar(select(Contact).where(Contact.email == email))
    if contact is None:
        contact = Contact(email=email, organisation_id=org.id)
        session.add(contact)
        report.created.append(f"contact:{email}")
    contact.organisation_id = org.id
    contact.name = _str(rec, "name", where)
    contact.title = _str(rec, "title", where)
    contact.phone = _str(rec, "phone", where)
    contact.roles = roles
    active = rec.get("active", True)
    contact.active = active if isinstance(active, bool) else str(active).lower() not in ("0", "false", "no")


def _upsert_staff(session: Session, rec: dict[str, Any], where: str, report: ImportReport) -> None:
    email = _str(rec, "email", where, required=True).lower()
    if email.count("@") != 1:
        raise DirectoryError(f"staff {email}: not an email address")
    staff = session.scalar(select(Staff).where(Staff.email == email))
    if staff is None:
        staff = Staff(email=email)
        session.add(staff)
        report.created.append(f"staff:{email}")
    staff.name = _str(rec, "name", where)
    staff.kinds = [k.lower() for k in _list(rec.get("kinds"), f"staff {email}: kinds")]
    active = rec.get("active", True)
    staff.active = active if isinstance(active, bool) else str(active).lower() not in ("0", "false", "no")


# -- lookups -----------------------------------------------------------------------------------


def contact_by_email(session: Session, email: str | None) -> Contact | None:
    if not email:
        return None
    # The organisation comes in the same query: intake reads it for every contact it finds.
    return session.scalar(select(Contact).options(joinedload(Contact.organisation))
                          .where(Contact.email == email.lower()))


def staff_by_email(session: Session, email: str | None) -> Staff | None:
    if not email:
        return None
    return session.scalar(select(Staff).where(Staff.email == email.lower(), Staff.active.is_(True)))


def org_by_domain(session: Session, address_or_domain: str | None) -> Organisation | None:
    """The organisation owning a mail domain, trying parent domains (mail.acme.example -> acme.example)."""
    if not address_or_domain:
        return None
    domain = address_or_domain.rpartition("@")[2].lower().strip(".")
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        row = session.get(OrgDomain, ".".join(labels[i:]))
        if row is not None:
            return row.organisation
    return None


def primary_mpocs(session: Session, org_id: int) -> list[Contact]:
    contacts = session.scalars(
        select(Contact).where(Contact.organisation_id == org_id, Contact.active.is_(True)).order_by(Contact.id)
    ).all()
    primary = [c for c in contacts if "mpoc-primary" in c.roles]
    return primary or [c for c in contacts if "mpoc-secondary" in c.roles]


def contacts_with_role(session: Session, org_id: int, role: str) -> list[Contact]:
    contacts = session.scalars(
        select(Contact).where(Contact.organisation_id == org_id, Contact.active.is_(True)).order_by(Contact.id)
    ).all()
    return [c for c in contacts if role in c.roles]
