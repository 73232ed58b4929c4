# SPDX-License-Identifier: MIT
"""Per-recipient caps on automatic mail, so a responder that ignores RFC 3834 cannot make us loop.

RELIABILITY rule 5 and L3: acknowledgements to one address are capped over several windows (an hour
and a day, as Zammad and Znuny do), a case acknowledges one sender at most once per kind of
acknowledgement, and the "please go through your main point of contact" reply goes out at most
``unauthorised_reply_per_day`` times a day. The counts come from the outbox itself (every row ever
queued, whatever became of it), over the ``ix_outbox_recipient`` (to_addr, template, created_at)
index, so they hold across restarts and across several maild processes. One prepared SELECT answers
every cap of one check.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import BindParameter, bindparam, exists, func, select
from sqlalchemy.orm import Session, aliased

from maild.config import Settings
from maild.models import OutboxItem

ACK_TEMPLATES = frozenset({"ack_new_case", "ack_reopened", "ack_linked_case", "macd_awaiting_approval"})
UNAUTHORISED = "unauthorised_sender"
# Told to an MPOC once per held message: a flood from one of their users must not flood them too.
MPOC_NOTICE = "mpoc_unauthorised_notice"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# The address's rows of ``templates`` in the last day (over the ix_outbox_recipient index), those in
# the last hour among them, and whether ``template`` ever went to it on case ``case_id`` (an EXISTS,
# over ix_outbox_case_id; a NULL ``case_id`` matches nothing): one SELECT with conditional aggregates,
# the same on SQLite and PostgreSQL, instead of one COUNT per cap. Built once, with bound parameters:
# building a statement costs SQLAlchemy far more time than SQLite takes to answer it.
_address: BindParameter[str] = bindparam("address")
_other = aliased(OutboxItem)  # the EXISTS's own rows, not correlated with the outer query's
_CAPS = select(
    func.count().filter(OutboxItem.created_at > bindparam("hour")),
    func.count(),
    exists().where(_other.to_addr == _address, _other.template == bindparam("template"),
                   _other.case_id == bindparam("case_id")),
).where(
    OutboxItem.to_addr == _address,
    OutboxItem.template.in_(bindparam("templates", expanding=True)),
    OutboxItem.created_at > bindparam("day"),
)  # fmt: skip


def _within(
    session: Session, address: str, templates: Collection[str], now: datetime, *, per_hour: int, per_day: int,
    once_per_case: tuple[str, int | None] = ("", None),
) -> bool:  # fmt: skip
    """Fewer than ``per_hour``/``per_day`` rows of ``templates`` to ``address`` in the last hour/day
    and, for ``(template, case_id)``, none of that template on that case ever."""
    template, case_id = once_per_case
    params = {"address": address, "templates": sorted(templates), "hour": now - HOUR, "day": now - DAY,
              "template": template, "case_id": case_id}  # fmt: skip
    hour, day, acked = session.execute(_CAPS, params).one()
    return not acked and hour < per_hour and day < per_day


def allow_automatic(
    session: Session, settings: Settings, to: str, template: str, now: datetime, case_id: int | None
) -> bool:
    """Whether automatic mail ``template`` may go to ``to`` now. Other templates are never capped."""
    address = to.strip().lower()
    intake = settings.intake
    if template in ACK_TEMPLATES:
        return _within(session, address, ACK_TEMPLATES, now, per_hour=intake.ack_per_sender_per_hour,
                       per_day=intake.ack_per_sender_per_day, once_per_case=(template, case_id))  # fmt: skip
    if template == UNAUTHORISED:
        # Capped per day only: the hour's count is no limit of its own.
        return _within(session, address, {UNAUTHORISED}, now, per_hour=intake.unauthorised_reply_per_day,
                       per_day=intake.unauthorised_reply_per_day)  # fmt: skip
    if template == MPOC_NOTICE:
        return _within(session, address, {MPOC_NOTICE}, now, per_hour=intake.ack_per_sender_per_hour,
                       per_day=intake.ack_per_sender_per_day)  # fmt: skip
    return True
