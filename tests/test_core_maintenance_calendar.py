# SPDX-License-Identifier: MIT
"""Tests for maild.maintenance_calendar: third Fridays, Connect sprints and notice instants."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from maild.clock import localize
from maild.maintenance_calendar import (
    connect_notice_at,
    connect_windows,
    is_preferred_unscheduled_time,
    monthly_window,
    monthly_windows,
    reminder_at,
    third_friday,
)

DENVER = ZoneInfo("America/Denver")

# Read off a printed calendar (and `cal`) for each month of 2026 and 2027.
THIRD_FRIDAYS = {
    2026: [16, 20, 20, 17, 15, 19, 17, 21, 18, 16, 20, 18],
    2027: [15, 19, 19, 16, 21, 18, 16, 20, 17, 15, 19, 17],
}


def mt(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return localize(datetime(year, month, day, hour, minute), DENVER)


@pytest.mark.parametrize(("year", "month"), [(y, m) for y in (2026, 2027) for m in range(1, 13)])
def test_third_friday_every_month(year: int, month: int) -> None:
    # The third Friday matches the printed calendar and is a Friday in days 15-21.
    day = third_friday(year, month)
    assert day == date(year, month, THIRD_FRIDAYS[year][month - 1])
    assert day.weekday() == 4
    assert 15 <= day.day <= 21


def test_third_friday_known_dates() -> None:
    # Spot checks from the brief.
    assert third_friday(2026, 12) == date(2026, 12, 18)
    assert third_friday(2027, 1) == date(2027, 1, 15)
    assert third_friday(2027, 3) == date(2027, 3, 19)
    assert third_friday(2026, 11) == date(2026, 11, 20)


def test_monthly_window_runs_overnight() -> None:
    # Third Friday 22:00 to 04:00 Saturday, local.
    start, end = monthly_window(2026, 11, DENVER)
    assert start.isoformat() == "2026-11-20T22:00:00-07:00"
    assert end.isoformat() == "2026-11-21T04:00:00-07:00"
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=6)


def test_monthly_windows_in_range_inclusive() -> None:
    # Windows whose start date lies in [start, until], both ends inclusive, across a year end.
    windows = monthly_windows(date(2026, 11, 20), date(2027, 1, 15), DENVER)
    assert [s.date() for s, _ in windows] == [date(2026, 11, 20), date(2026, 12, 18), date(2027, 1, 15)]
    december = monthly_window(2026, 12, DENVER)
    assert monthly_windows(date(2026, 11, 21), date(2027, 1, 14), DENVER) == [december]
    assert monthly_windows(date(2027, 1, 1), date(2026, 1, 1), DENVER) == []


def test_monthly_reminder_after_march_dst_is_2200_local() -> None:
    # The 2027-03-19 window is after DST starts (03-14); its reminder on 03-12 is still 22:00 local.
    start, _ = monthly_window(2027, 3, DENVER)
    assert start.isoformat() == "2027-03-19T22:00:00-06:00"
    reminder = reminder_at(start)
    assert reminder.isoformat() == "2027-03-12T22:00:00-07:00"
    assert start.astimezone(UTC) - reminder.astimezone(UTC) == timedelta(days=7, hours=-1)


def test_reminder_from_utc_needs_zone() -> None:
    # A window start read back in UTC gives the same reminder when the zone is passed, and an
    # error rather than a wrong wall time when it is not.
    start, _ = monthly_window(2027, 3, DENVER)
    in_utc = start.astimezone(UTC)
    assert reminder_at(in_utc, DENVER) == reminder_at(start)
    with pytest.raises(ValueError):
        reminder_at(in_utc)


def test_connect_windows_every_21_days_on_tuesdays() -> None:
    # From a first sprint on Tuesday 2026-11-03: Tuesday 21:00-23:00, 21 days apart.
    windows = connect_windows(date(2026, 11, 3), date(2026, 11, 1), date(2027, 4, 30), DENVER)
    starts = [s for s, _ in windows]
    assert starts[0].isoformat() == "2026-11-03T21:00:00-07:00"
    assert windows[0][1].isoformat() == "2026-11-03T23:00:00-07:00"
    assert len(windows) == 9
    assert all(s.weekday() == 1 for s in starts)
    assert all((b.date() - a.date()).days == 21 for a, b in itertools.pairwise(starts))
    # After DST starts (2027-03-14) the windows stay at 21:00 local.
    assert starts[-1].isoformat() == "2027-04-20T21:00:00-06:00"


def test_connect_windows_start_mid_cycle() -> None:
    # A range starting between sprints begins at the next sprint date; none before first_sprint.
    windows = connect_windows(date(2026, 11, 3), date(2026, 11, 5), date(2026, 12, 15), DENVER)
    assert [s.date() for s, _ in windows] == [date(2026, 11, 24), date(2026, 12, 15)]
    early = connect_windows(date(2026, 11, 3), date(2026, 1, 1), date(2026, 11, 3), DENVER)
    assert [s.date() for s, _ in early] == [date(2026, 11, 3)]


def test_connect_first_sprint_must_be_tuesday() -> None:
    # A first sprint on a Wednesday is a configuration error.
    with pytest.raises(ValueError, match="Tuesday"):
        connect_windows(date(2026, 11, 4), date(2026, 11, 1), date(2026, 12, 31), DENVER)


def test_connect_notice_is_same_time_day_before() -> None:
    # The 24-hour notice is Monday 21:00 local, 24 real hours before a Tuesday window.
    start = mt(2026, 11, 3, 21)
    notice = connect_notice_at(start)
    assert notice.isoformat() == "2026-11-02T21:00:00-07:00"
    assert start - notice == timedelta(hours=24)
    # The rule is wall-clock: a (hypothetical) start on DST day 2027-03-14 gets its notice at
    # 21:00 MST the day before, 23 real hours earlier.
    sunday = mt(2027, 3, 14, 21)
    assert connect_notice_at(sunday).isoformat() == "2027-03-13T21:00:00-07:00"
    assert sunday.astimezone(UTC) - connect_notice_at(sunday).astimezone(UTC) == timedelta(hours=23)


@pytest.mark.parametrize(
    ("hour", "minute", "preferred"),
    [(0, 0, True), (4, 59, True), (5, 0, False), (12, 0, False), (22, 59, False), (23, 0, True)],
)
def test_preferred_unscheduled_time(hour: int, minute: int, preferred: bool) -> None:
    # Unscheduled work is preferred before 05:00 or from 23:00 local.
    assert is_preferred_unscheduled_time(mt(2026, 7, 1, hour, minute), DENVER) is preferred


def test_preferred_unscheduled_time_reads_local_clock() -> None:
    # 06:00 UTC in July is 00:00 MDT: preferred, though 06:00 on a UTC clock would not be.
    assert is_preferred_unscheduled_time(datetime(2026, 7, 1, 6, 0, tzinfo=UTC), DENVER)
    assert not is_preferred_unscheduled_time(datetime(2026, 7, 1, 12, 0, tzinfo=UTC), DENVER)
