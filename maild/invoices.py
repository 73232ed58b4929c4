# SPDX-License-Identifier: MIT
"""Monthly invoices (SPEC §7): each organisation's PDF from the drop directory, mailed once per period.

The billing system drops one PDF per organisation and month into ``[paths] invoices``::

    <invoice_dir>/<YYYY-MM>/<organisation name>.pdf     e.g. invoices/2027-03/Acme GmbH.pdf
    <invoice_dir>/<YYYY-MM>/<slug>.pdf                  e.g. invoices/2027-03/acme-gmbh.pdf

where the slug is the name in lower case with every run of characters other than a-z and 0-9
replaced by one ``-`` (no leading or trailing ``-``). The exact name is tried first; a name that
contains a path separator is only looked up by its slug. The file must start with ``%PDF-``.

From 00:00 MT on the 27th, every tick of that month (so a maild that was down on the 27th catches up
later in the month, but not in the next) mails each organisation that has no ``invoices_sent`` row
for the period: to its ``finance`` contacts, else its primary MPOCs, with the PDF attached byte for
byte. The row (unique organisation + period) is written in the transaction that queues the mail,
whose dedupe key is ``invoice:<org id>:<period>``, so an invoice goes out once however often the rule
runs and however many maild processes run it. A missing or unreadable PDF, or an organisation with
nobody to send to, alerts staff once per organisation and period; the others are still served, and
the missing one goes out on the first tick after the file appears. A period with no directory at all
(nothing dropped yet) is one alert for the period.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.config import Settings
from maild.directory import contacts_with_role, primary_mpocs
from maild.mail import alert_staff, send
from maild.models import InvoiceSent, Organisation
from maild.scheduler import Rule, mark_once
from maild.status_page import iso

log = logging.getLogger(__name__)

INVOICE_DAY = 27
MAX_SIZE = 20 * 1024 * 1024  # a bigger "invoice" is a mistake in the drop directory, not a mail
_PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def candidates(settings: Settings, org_name: str, period: str) -> list[Path]:
    """Where the PDF of ``org_name`` for ``period`` may be, in the order tried."""
    folder = settings.invoice_dir / period
    names = []
    if not any(c in org_name for c in "/\\\0") and org_name.strip(" .") != "":
        names.append(f"{org_name}.pdf")
    names.append(f"{slug(org_name)}.pdf")
    return [folder / n for n in dict.fromkeys(names)]


def find_pdf(settings: Settings, org_name: str, period: str) -> tuple[Path, bytes] | str:
    """The PDF's path and bytes, or why there is none (phrased for staff)."""
    tried = candidates(settings, org_name, period)
    for path in tried:
        if not path.is_file():
            continue
        try:
            if path.stat().st_size > MAX_SIZE:
                return f"{path} is larger than {MAX_SIZE // (1024 * 1024)} MB"
            data = path.read_bytes()
        except OSError as exc:
            return f"{path} cannot be read: {exc.strerror or exc}"
        if not data.startswith(b"%PDF-"):
            return f"{path} is not a PDF file"
        return path, data
    return "no invoice file; looked for " + " and ".join(str(p) for p in tried)


def period_of(settings: Settings, now: datetime) -> str | None:
    """The period whose invoices are due at ``now`` (``YYYY-MM``), or None before the 27th."""
    local = now.astimezone(settings.zone)
    return f"{local:%Y-%m}" if local.day >= INVOICE_DAY else None


def _alert(session: Session, settings: Settings, org: Organisation, period: str, what: str, detail: str,
           now: datetime) -> dict[str, Any] | None:
    key = f"invoice-{what}:{org.id}:{period}"
    if not mark_once(session, key, now):
        return None
    alert_staff(session, settings, title=f"Invoice {period} for {org.name} not sent", detail=detail, now=now,
                dedupe_key=key)
    log.warning("invoice %s for %s not sent: %s", period, org.name, detail)
    return {"action": "invoice-alert", "organisation": org.name, "period": period, "problem": detail}


def send_invoice(session: Session, settings: Settings, org: Organisation, period: str,
                 now: datetime) -> dict[str, Any] | None:
    """Mail one organisation's invoice for ``period`` if it can be; an action for the tick."""
    people = contacts_with_role(session, org.id, "finance") or primary_mpocs(session, org.id)
    if not people:
        return _alert(session, settings, org, period, "nobody",
                      f"{org.name} has no finance contact and no primary MPOC to send the invoice to.", now)
    found = find_pdf(settings, org.name, period)
    if isinstance(found, str):
        return _alert(session, settings, org, period, "missing", found, now)
    path, data = found
    items = send(session, settings, "invoice", to=[(c.name, c.email) for c in people], now=now, org=org,
                 auto_kind="auto-generated", dedupe_key=f"invoice:{org.id}:{period}",
                 attachments=[(path.name, "application/pdf", data)], period=period, filename=path.name)
    if not items:  # every address is blocked as bouncing: record nothing, so it goes out once fixed
        return _alert(session, settings, org, period, "bouncing",
                      f"every address of {org.name} for invoices is bouncing: "
                      + ", ".join(c.email for c in people), now)
    row = InvoiceSent(organisation_id=org.id, period=period, sent_at=now, recipients=[i.to_addr for i in items],
                      filename=path.name, sha256=hashlib.sha256(data).hexdigest())
    session.add(row)
    session.flush()  # the unique (organisation, period) row makes a second sender fail here
    return {"action": "invoice-sent", "organisation": org.name, "period": period, "recipients": row.recipients,
            "filename": path.name}


def send_due_invoices(session: Session, settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Scheduler rule: from the 27th (MT) on, every organisation's invoice not yet sent this month."""
    period = period_of(settings, now)
    if period is None:
        return []
    folder = settings.invoice_dir / period
    if not folder.is_dir():
        # Nothing dropped for the month at all: one alert for the period, not one per organisation.
        if not mark_once(session, f"invoice-nodir:{period}", now):
            return []
        detail = (f"The invoice directory {folder} does not exist; no invoice for {period} was sent. "
                  "Invoices go out on the first tick after the billing system drops them there.")
        alert_staff(session, settings, title=f"No invoices for {period}", detail=detail, now=now,
                    dedupe_key=f"invoice-nodir:{period}")
        return [{"action": "invoice-alert", "organisation": None, "period": period, "problem": detail}]
    done = set(session.scalars(select(InvoiceSent.organisation_id).where(InvoiceSent.period == period)))
    actions: list[dict[str, Any]] = []
    for org in session.scalars(select(Organisation).order_by(Organisation.name)):
        if org.id in done:
            continue
        action = send_invoice(session, settings, org, period, now)
        if action is not None:
            actions.append(action)
    return actions


def check_period(period: str) -> str:
    if not _PERIOD.fullmatch(period):
        raise ValueError(f"bad period {period!r}: expected YYYY-MM, e.g. 2027-03")
    return period


def invoice_json(row: InvoiceSent) -> dict[str, Any]:
    return {"organisation": row.organisation.name, "period": row.period, "sent_at": iso(row.sent_at),
            "recipients": list(row.recipients), "filename": row.filename, "sha256": row.sha256}


def sent_invoices(session: Session, period: str | None = None) -> list[dict[str, Any]]:
    query = select(InvoiceSent).join(InvoiceSent.organisation).order_by(InvoiceSent.period, Organisation.name)
    if period is not None:
        query = query.where(InvoiceSent.period == check_period(period))
    return [invoice_json(r) for r in session.scalars(query)]


RULES: tuple[Rule, ...] = (send_due_invoices,)
