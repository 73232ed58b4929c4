# SPDX-License-Identifier: MIT
"""Calendar maths for scheduled maintenance (SPEC §7): when the recurring windows fall and when
their notices are due. Storage and the notices themselves live in ``maild.maintenance``.

All rules are wall-clock rules in the given zone (America/Denver by default), done by calendar
arithmetic: a reminder one week before a 22:00 window is at 22:00 local even when a DST change
lies in between. Results are aware datetimes in that zone.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from maild.clock import add_wall_days, localize, wall_clock

Window = tuple[datetime, datetime]

MONTHLY_START = time(22, 0)
MONTHLY_END = time(4, 0)  # the next morning
CONNECT_START = time(21, 0)
CONNECT_END = time(23, 0)
CONNECT_PERIOD = timedelta(days=21)  # 3-week sprints
REMINDER_DAYS_BEFORE = 7
QUIET_ENDS = time(5, 0)  # unscheduled work is preferred before 05:00 ...
QUIET_STARTS = time(23, 0)  # ... or from 23:00 on
_FRIDAY = 4
_TUESDAY = 1


def third_friday(year: int, month: int) -> date:
    """The third Friday of ``month`` in ``year``."""
    first = date(year, month, 1)
    first_friday = 1 + (_FRIDAY - first.weekday()) % 7
    return date(year, month, first_friday + 14)


def monthly_window(year: int, month: int, zone: ZoneInfo) -> Window:
    """The planned window of that month: third Friday 22:00 to 04:00 the next morning, local."""
    day = third_friday(year, month)
    return (
        localize(datetime.combine(day, MONTHLY_START), zone),
        localize(datetime.combine(day + timedelta(days=1), MONTHLY_END), zone),
    )


def monthly_windows(start: date, until: date, zone: ZoneInfo) -> list[Window]:
    """The monthly windows whose start date lies in [start, until], in order."""
    windows: list[Window] = []
    year, month = start.year, start.month
    while (year, month) <= (until.year, until.month):
        if start <= third_friday(year, month) <= until:
            windows.append(monthly_window(year, month, zone))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return windows


def connect_windows(first_sprint: date, start: date, until: date, zone: ZoneInfo) -> list[Window]:
    """Connect update windows, Tuesday 21:00–23:00 local every 21 days from ``first_sprint``,
    whose date lies in [start, until]. No window comes before ``first_sprint``."""
    if first_sprint.weekday() != _TUESDAY:
        raise ValueError(f"first Connect sprint must be a Tuesday, got {first_sprint:%A} {first_sprint}")
    day = first_sprint
    if start > day:
        # Jump to the first sprint date on or after ``start`` (ceiling of whole periods).
        periods = -(-(start - day).days // CONNECT_PERIOD.days)
        day += CONNECT_PERIOD * periods
    windows: list[Window] = []
    while day <= until:
        windows.append(
            (
                localize(datetime.combine(day, CONNECT_START), zone),
                localize(datetime.combine(day, CONNECT_END), zone),
            )
        )
        day += CONNECT_PERIOD
    return windows


def _zone_of(t: datetime, zone: ZoneInfo | None) -> ZoneInfo:
    # Calendar arithmetic needs a named zone; a fixed offset (e.g. a UTC time read back from the
    # database) would silently give 21:00 or 23:00 across DST, so it must come with ``zone``.
    if zone is not None:
        return zone
    if isinstance(t.tzinfo, ZoneInfo):
        return t.tzinfo
    raise ValueError(f"cannot do wall-clock arithmetic on {t.isoformat()}: pass the zone")


def reminder_at(window_start: datetime, zone: ZoneInfo | None = None) -> datetime:
    """One week before the window at the same wall-clock time (22:00 stays 22:00 across DST).

    ``zone`` defaults to ``window_start``'s own zone, which must then be a ``ZoneInfo``; pass it
    when ``window_start`` is in UTC.
    """
    return add_wall_days(window_start, -REMINDER_DAYS_BEFORE, _zone_of(window_start, zone))


def connect_notice_at(window_start: datetime, zone: ZoneInfo | None = None) -> datetime:
    """The "24 hours before" notice: the same wall-clock time the day before (Monday 21:00).

    Calendar arithmetic like the monthly reminder, so across a DST change it is 23 or 25 hours
    of real time; US changes fall on Sunday mornings, so a Tuesday window is never affected.
    """
    return add_wall_days(window_start, -1, _zone_of(window_start, zone))


def is_preferred_unscheduled_time(t: datetime, zone: ZoneInfo) -> bool:
    """Whether ``t`` is outside 05:00–23:00 local: before 05:00, or 23:00 and later."""
    local = wall_clock(t, zone).time()
    return local < QUIET_ENDS or local >= QUIET_STARTS
