# SPDX-License-Identifier: MIT
"""Tests for maild.clock: ISO parsing, DST localisation, business days and business hours."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild.clock import (
    BusinessCalendar,
    add_elapsed,
    add_wall_days,
    default_holidays,
    localize,
    make_calendar,
    now,
    parse_time,
)

DENVER = ZoneInfo("America/Denver")
CAL = make_calendar("America/Denver")  # US default holidays
PLAIN = BusinessCalendar(zone=DENVER)  # weekends only, no holidays


def mt(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return localize(datetime(year, month, day, hour, minute), DENVER)


def test_now_is_aware_utc() -> None:
    # now() is the real-clock seam and must hand out aware UTC instants.
    t = now()
    assert t.tzinfo is UTC
    assert t.year >= 2024


def test_parse_time_without_offset_is_mountain_time() -> None:
    # A bare ISO time is Denver wall-clock time (MST in November, UTC-7), returned as UTC.
    assert parse_time("2026-11-20T10:00", DENVER) == datetime(2026, 11, 20, 17, 0, tzinfo=UTC)
    assert parse_time("2026-11-20T10:00", DENVER).tzinfo is UTC


def test_parse_time_summer_and_offsets() -> None:
    # MDT is UTC-6; an explicit offset or Z is taken as given, whatever the zone argument.
    assert parse_time("2026-07-01T10:00", DENVER) == datetime(2026, 7, 1, 16, 0, tzinfo=UTC)
    assert parse_time("2026-07-01T10:00+02:00", DENVER) == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    assert parse_time("2026-07-01T10:00Z", DENVER) == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)


def test_parse_time_plain_date_is_local_midnight() -> None:
    # A plain date means 00:00 wall-clock in the zone.
    assert parse_time("2026-12-25", DENVER) == datetime(2026, 12, 25, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-13-01", "tomorrow", "", "2026-11-20T25:00", "20.11.2026"])
def test_parse_time_rejects_bad_input_with_one_line(text: str) -> None:
    # Bad input raises ValueError with the one-line message that the CLI prints.
    with pytest.raises(ValueError) as info:
        parse_time(text, DENVER)
    message = str(info.value)
    assert message == f"bad time {text!r}: expected ISO 8601, e.g. 2026-11-20T10:00"
    if text == "2026-13-01":
        assert message == "bad time '2026-13-01': expected ISO 8601, e.g. 2026-11-20T10:00"
    assert "\n" not in message


def test_localize_spring_forward_gap_moves_forward() -> None:
    # 02:30 on 2027-03-14 does not exist in Denver; it becomes 03:30 MDT.
    t = localize(datetime(2027, 3, 14, 2, 30), DENVER)
    assert t.isoformat() == "2027-03-14T03:30:00-06:00"


def test_localize_fall_back_takes_first_occurrence() -> None:
    # 01:30 on 2026-11-01 happens twice; the first (MDT, UTC-6) is chosen.
    t = localize(datetime(2026, 11, 1, 1, 30), DENVER)
    assert t.isoformat() == "2026-11-01T01:30:00-06:00"
    assert t.astimezone(UTC) == datetime(2026, 11, 1, 7, 30, tzinfo=UTC)


def test_localize_rejects_aware_input() -> None:
    # localize is for naive wall-clock times only.
    with pytest.raises(ValueError):
        localize(datetime(2026, 1, 1, tzinfo=UTC), DENVER)


def test_add_wall_days_and_elapsed_across_spring_forward() -> None:
    # Wall-clock days keep 22:00 across DST; elapsed time keeps real duration.
    t = mt(2027, 3, 12, 22)
    assert add_wall_days(t, 7, DENVER).isoformat() == "2027-03-19T22:00:00-06:00"
    assert add_elapsed(t, timedelta(days=7), DENVER).isoformat() == "2027-03-19T23:00:00-06:00"


def test_default_us_holidays() -> None:
    # The holidays package supplies Thanksgiving and Christmas 2026, and the observed 4 July.
    days = default_holidays([2026])
    assert date(2026, 11, 26) in days
    assert date(2026, 12, 25) in days
    assert date(2026, 7, 3) in days
    assert date(2026, 11, 27) not in days


def test_make_calendar_lazy_holidays_cover_far_years() -> None:
    # Holidays are looked up per year on demand: Christmas 2090 is closed, and extras add days.
    cal = make_calendar("America/Denver", [date(2026, 12, 24)])
    assert not cal.is_business_day(date(2090, 12, 25))
    assert not cal.is_business_day(date(2026, 12, 24))
    assert cal.is_business_day(date(2026, 12, 23))
    assert make_calendar("America/Denver", use_default=False).is_business_day(date(2026, 11, 26))


def test_make_calendar_rejects_bad_zone_and_country() -> None:
    # Configuration mistakes surface as ValueError at construction, not later.
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        make_calendar("Mars/Olympus")
    with pytest.raises(ValueError, match="unknown holiday country 'XX'"):
        make_calendar("America/Denver", country="XX")


def test_is_business_day() -> None:
    # Weekdays are business days, weekends and holidays are not.
    assert CAL.is_business_day(date(2026, 10, 16))  # Friday
    assert not CAL.is_business_day(date(2026, 10, 17))  # Saturday
    assert not CAL.is_business_day(date(2026, 10, 18))  # Sunday
    assert not CAL.is_business_day(date(2026, 11, 26))  # Thanksgiving


def test_add_business_days_friday_plus_two_is_tuesday() -> None:
    # Friday 10:00 MT + 2 business days = Tuesday 10:00.
    assert CAL.add_business_days(mt(2026, 10, 2, 10), 2).isoformat() == "2026-10-06T10:00:00-06:00"


def test_add_business_days_skips_monday_holiday() -> None:
    # With Monday a holiday (MLK Day 2026-01-19) Friday 10:00 + 2 = Wednesday 10:00.
    assert CAL.add_business_days(mt(2026, 1, 16, 10), 2).isoformat() == "2026-01-21T10:00:00-07:00"
    # The same without holidays lands on Tuesday.
    assert PLAIN.add_business_days(mt(2026, 1, 16, 10), 2).isoformat() == "2026-01-20T10:00:00-07:00"


def test_add_business_days_keeps_evening_wall_time() -> None:
    # Friday 18:00 is a business day, so + 1 keeps the wall time: Monday 18:00.
    assert CAL.add_business_days(mt(2026, 10, 16, 18), 1).isoformat() == "2026-10-19T18:00:00-06:00"


def test_add_business_days_weekend_rolls_to_next_opening() -> None:
    # Saturday 10:00 starts Monday 08:00, so + 1 = Tuesday 08:00 and + 0 = Monday 08:00.
    assert CAL.add_business_days(mt(2026, 10, 17, 10), 1).isoformat() == "2026-10-20T08:00:00-06:00"
    assert CAL.add_business_days(mt(2026, 10, 17, 10), 0).isoformat() == "2026-10-19T08:00:00-06:00"


def test_add_business_days_across_dst_keeps_wall_clock() -> None:
    # Across both DST changes the due time stays 10:00 local; the UTC offset changes.
    spring = CAL.add_business_days(mt(2027, 3, 12, 10), 1)
    assert spring.isoformat() == "2027-03-15T10:00:00-06:00"
    autumn = CAL.add_business_days(mt(2026, 10, 30, 10), 1)
    assert autumn.isoformat() == "2026-11-02T10:00:00-07:00"


def test_add_business_days_accepts_utc_input_and_returns_zone() -> None:
    # A UTC instant is read on the Denver wall clock; the result is in the calendar's zone.
    due = CAL.add_business_days(datetime(2026, 10, 2, 16, 0, tzinfo=UTC), 2)
    assert due.tzinfo is DENVER
    assert due.isoformat() == "2026-10-06T10:00:00-06:00"


def test_add_business_days_rejects_negative_and_naive() -> None:
    # Negative counts and naive times are programming errors.
    with pytest.raises(ValueError):
        CAL.add_business_days(mt(2026, 10, 2, 10), -1)
    with pytest.raises(ValueError):
        CAL.add_business_days(datetime(2026, 10, 2, 10), 1)


def test_add_business_hours_within_day_and_exact_close() -> None:
    # Hours inside one day add directly; using up the day exactly ends at 17:00, not next morning.
    assert CAL.add_business_hours(mt(2026, 10, 14, 9), 3).isoformat() == "2026-10-14T12:00:00-06:00"
    assert CAL.add_business_hours(mt(2026, 10, 16, 13), 4).isoformat() == "2026-10-16T17:00:00-06:00"


def test_add_business_hours_across_evening_and_weekend() -> None:
    # Thursday 16:00 + 3 h = Friday 10:00; Friday 16:30 + 1 h = Monday 08:30.
    assert CAL.add_business_hours(mt(2026, 10, 15, 16), 3).isoformat() == "2026-10-16T10:00:00-06:00"
    assert CAL.add_business_hours(mt(2026, 10, 16, 16, 30), timedelta(hours=1)).isoformat() == (
        "2026-10-19T08:30:00-06:00"
    )


def test_add_business_hours_starts_at_next_opening() -> None:
    # Outside hours the count starts at the next opening: early morning, evening, weekend, holiday.
    assert CAL.add_business_hours(mt(2026, 10, 14, 6), 1).isoformat() == "2026-10-14T09:00:00-06:00"
    assert CAL.add_business_hours(mt(2026, 10, 14, 20), 1).isoformat() == "2026-10-15T09:00:00-06:00"
    assert CAL.add_business_hours(mt(2026, 10, 17, 12), 2).isoformat() == "2026-10-19T10:00:00-06:00"
    assert CAL.add_business_hours(mt(2026, 11, 25, 16), 2).isoformat() == "2026-11-27T09:00:00-07:00"


def test_add_business_hours_spans_several_days() -> None:
    # 20 business hours from Monday 08:00 = two full 9-hour days + 2 h = Wednesday 10:00.
    assert CAL.add_business_hours(mt(2026, 10, 5, 8), 20).isoformat() == "2026-10-07T10:00:00-06:00"
    # From Columbus Day (2026-10-12, a US federal holiday in the default calendar) it starts Tuesday.
    assert CAL.add_business_hours(mt(2026, 10, 12, 8), 20).isoformat() == "2026-10-15T10:00:00-06:00"


def test_add_business_hours_rejects_negative() -> None:
    # A negative duration is an error, not a silent no-op.
    with pytest.raises(ValueError):
        CAL.add_business_hours(mt(2026, 10, 14, 9), -1)


def test_next_business_start_and_within_hours() -> None:
    # Inside hours the instant itself; otherwise the next opening (business or extended hours).
    inside = mt(2026, 10, 14, 9, 15)
    assert CAL.next_business_start(inside) == inside
    assert CAL.next_business_start(mt(2026, 10, 14, 7, 30)).isoformat() == "2026-10-14T08:00:00-06:00"
    assert CAL.next_business_start(mt(2026, 10, 14, 7, 30), extended=True) == mt(2026, 10, 14, 7, 30)
    assert CAL.next_business_start(mt(2026, 10, 16, 19), extended=True).isoformat() == (
        "2026-10-19T07:00:00-06:00"
    )
    assert CAL.is_within_hours(mt(2026, 10, 14, 8))
    assert not CAL.is_within_hours(mt(2026, 10, 14, 17))
    assert CAL.is_within_hours(mt(2026, 10, 14, 18, 59), extended=True)
    assert not CAL.is_within_hours(mt(2026, 10, 14, 19), extended=True)
    assert not CAL.is_within_hours(mt(2026, 10, 17, 10), extended=True)


def test_calendar_rejects_inverted_hours() -> None:
    # Business hours that end before they start are a configuration error.
    with pytest.raises(ValueError):
        BusinessCalendar(zone=DENVER, day_start=time(17), day_end=time(8))


# No deadline: the first lookup of a year builds its holidays, a one-off cost per year.
@settings(deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)), st.integers(0, 30))
def test_add_business_days_lands_on_business_day(start: datetime, n: int) -> None:
    # Property: the result is a business day, never earlier than the start, and a start on a
    # business day keeps its wall-clock time (US DST changes fall on Sundays, never a result day).
    t = localize(start, DENVER)
    due = CAL.add_business_days(t, n)
    assert CAL.is_business_day(due.date())
    assert due >= t
    if CAL.is_business_day(t.date()):
        assert due.time() == t.time()
        assert (due.date() > t.date()) == (n > 0)
    else:
        assert due.time() == time(8)


@settings(deadline=None)
@given(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 12, 31)),
    st.integers(min_value=0, max_value=60 * 40),
)
def test_add_business_hours_ends_inside_hours(start: datetime, minutes: int) -> None:
    # Property: the result is within business hours (17:00 included as a close) and monotonic.
    t = localize(start, DENVER)
    due = CAL.add_business_hours(t, timedelta(minutes=minutes))
    assert CAL.is_business_day(due.date())
    assert time(8) <= due.time() <= time(17)
    assert due >= t
    assert CAL.add_business_hours(t, timedelta(minutes=minutes + 15)) > due
