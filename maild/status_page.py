# SPDX-License-Identifier: MIT
"""The status page: a JSON file any web server can serve, listing what customers may see (SPEC §4, §7).

``<data_dir>/status.json`` holds the current and upcoming maintenance windows (with the notices
published about them) and the open master cases (P1G) with their updates, newest first. It is public
by design, so it never names recipients, organisations or requesters. Shape::

    {"generated_at": ISO, "zone": "America/Denver",
     "maintenance": [{"id", "kind", "state": "upcoming"|"in-progress"|"cancelled", "start", "end",
                      "products" ([] = all products), "description", "reason",
                      "notices": [{"type", "sent_at"}]}],
     "incidents": [{"number", "title", "platform", "status", "opened_at", "updated_at", "resolved_at",
                    "updates": [{"at", "body"}]}]}

A master case stays listed for a day after it is closed, so its last update remains readable. The
file is replaced atomically (write a temporary file, fsync, rename) and only when its content
changed, so a web server never serves half a file. It is rewritten by a scheduler rule on every tick
(windows move from upcoming to in-progress with time alone) and by the commands that change windows
or master cases, after their transaction committed.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.db import transaction
from maild.enums import CaseKind, Status
from maild.models import Case, CaseEvent, MaintenanceWindow

FILENAME = "status.json"
RESOLVED_SHOWN = timedelta(days=1)
MAX_UPDATES = 20
UPDATE_EVENT = "master-update"
_CLOSED = (Status.CLOSED.value, Status.CLOSED_NO_RESPONSE.value, Status.DUPLICATE.value)


def iso(t: datetime | None) -> str | None:
    """UTC ISO 8601 with a ``Z``, as every JSON view of maild writes times."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def path_of(settings: Settings) -> Path:
    return settings.data_dir / FILENAME


def _window(w: MaintenanceWindow, now: datetime) -> dict[str, Any]:
    state = "cancelled" if w.status == "cancelled" else ("in-progress" if w.start <= now else "upcoming")
    return {
        "id": w.id, "kind": w.kind, "state": state, "start": iso(w.start), "end": iso(w.end),
        "products": list(w.products), "description": w.description, "reason": w.reason,
        "notices": [{"type": n.type, "sent_at": iso(n.sent_at)} for n in sorted(w.notices, key=lambda n: n.id)],
    }


def _incident(session: Session, case: Case) -> dict[str, Any]:
    events = session.scalars(
        select(CaseEvent).where(CaseEvent.case_id == case.id, CaseEvent.kind == UPDATE_EVENT)
        .order_by(CaseEvent.id.desc()).limit(MAX_UPDATES)
    ).all()
    return {
        "number": case.id, "title": case.subject, "platform": case.platform, "status": case.status,
        "opened_at": iso(case.created_at), "updated_at": iso(case.updated_at), "resolved_at": iso(case.closed_at),
        "updates": [{"at": iso(e.at), "body": str(e.detail.get("body", ""))} for e in events],
    }


def snapshot(session: Session, settings: Settings, now: datetime) -> dict[str, Any]:
    """What the status page shows at ``now``."""
    windows = session.scalars(
        select(MaintenanceWindow).where(MaintenanceWindow.end > now).order_by(MaintenanceWindow.start)
    ).all()
    # A cancelled window is shown only if customers were told about it (so they see it is off).
    shown = [w for w in windows if w.status != "cancelled" or w.notices]
    masters = session.scalars(
        select(Case).where(Case.kind == CaseKind.MASTER.value)
        .where(or_(Case.status.not_in(_CLOSED), Case.closed_at > now - RESOLVED_SHOWN))
        .order_by(Case.id)
    ).all()
    return {
        "generated_at": iso(now), "zone": settings.time.zone,
        "maintenance": [_window(w, now) for w in shown],
        "incidents": [_incident(session, c) for c in masters],
    }


def write(settings: Settings, content: dict[str, Any]) -> bool:
    """Replace the file atomically if anything but ``generated_at`` changed; True if written."""
    target = path_of(settings)
    try:
        old = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and {**old, "generated_at": None} == {**content, "generated_at": None}:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(content, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # served by a web server running as another user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def publish(factory: sessionmaker[Session], settings: Settings, now: datetime) -> bool:
    """Rewrite the status page from committed state (the commands call this after their commit)."""
    with transaction(factory) as session:
        content = snapshot(session, settings, now)
    return write(settings, content)


def publish_rule(session: Session, settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Scheduler rule: keep the status page current. It runs after the notice rules of the same tick,
    each of which committed in its own transaction, so it sees what they published."""
    if write(settings, snapshot(session, settings, now)):
        return [{"action": "status-page", "path": str(path_of(settings))}]
    return []
