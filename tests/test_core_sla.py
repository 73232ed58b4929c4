# SPDX-License-Identifier: MIT
"""Tests for maild.sla: priority targets, MACD clocks and billing, the no-response clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from maild.clock import localize, make_calendar
from maild.enums import Priority
from maild.sla import (
    TARGETS,
    Target,
    first_response_due,
    macd_billable,
    macd_done_due,
    macd_first_response_due,
    next_update_due,
    no_response_close_due,
    no_response_warning_due,
)

DENVER = ZoneInfo("America/Denver")
CAL = make_calendar("America/Denver")


def mt(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return localize(datetime(year, month, day, hour, minute), DENVER)


def test_targets_table_matches_spec() -> None:
    # SPEC §4: P1 15 min/1 h and P2 30 min/2 h round the clock; P3 4 h/1 bday; P4 1/2 bdays; P1G = P1.
    assert TARGETS[Priority.P1] == Target(timedelta(minutes=15), 0, timedelta(hours=1), 0, True)
    assert TARGETS[Priority.P2] == Target(timedelta(minutes=30), 0, timedelta(hours=2), 0, True)
    assert TARGETS[Priority.P3] == Target(timedelta(hours=4), 0, None, 1, False)
    assert TARGETS[Priority.P4] == Target(None, 1, None, 2, False)
    assert TARGETS[Priority.P1G] == TARGETS[Priority.P1]
    assert set(TARGETS) == set(Priority)


def test_target_rejects_ambiguous_forms() -> None:
    # A target is either a duration or business days, and round-the-clock targets are durations.
    with pytest.raises(ValueError):
        Target(timedelta(hours=1), 1, timedelta(hours=1), 0, False)
    with pytest.raises(ValueError):
        Target(None, 0, None, 1, False)
    with pytest.raises(ValueError):
        Target(None, 1, timedelta(hours=1), 0, True)


def test_p1_sunday_night_is_round_the_clock() -> None:
    # A P1 opened Sunday 03:00 MT is due 03:15 the same night; its update an hour after that.
    opened = mt(2026, 10, 18, 3)
    assert first_response_due(Priority.P1, opened, CAL).isoformat() == "2026-10-18T03:15:00-06:00"
    assert next_update_due(Priority.P1, opened, CAL).isoformat() == "2026-10-18T04:00:00-06:00"
    assert first_response_due(Priority.P1G, opened, CAL) == first_response_due(Priority.P1, opened, CAL)


def test_p2_on_a_holiday() -> None:
    # P2 ignores holidays: 30 minutes and 2 hours of elapsed time on Christmas Day.
    opened = mt(2026, 12, 25, 12)
    assert first_response_due(Priority.P2, opened, CAL).isoformat() == "2026-12-25T12:30:00-07:00"
    assert next_update_due(Priority.P2, opened, CAL).isoformat() == "2026-12-25T14:00:00-07:00"


def test_p1_across_dst_is_real_elapsed_time() -> None:
    # Across both DST changes a P1 is due exactly 15 minutes of real time later.
    spring = mt(2027, 3, 14, 1, 50)
    due = first_response_due(Priority.P1, spring, CAL)
    assert due.isoformat() == "2027-03-14T03:05:00-06:00"
    assert due.astimezone(UTC) - spring.astimezone(UTC) == timedelta(minutes=15)
    autumn = mt(2026, 11, 1, 1, 50)  # first 01:50, MDT
    due = first_response_due(Priority.P1, autumn, CAL)
    assert due.isoformat() == "2026-11-01T01:05:00-07:00"
    assert due.astimezone(UTC) - autumn.astimezone(UTC) == timedelta(minutes=15)


def test_p4_friday_evening_due_monday_same_time() -> None:
    # P4 opened Friday 18:00 is due Monday 18:00 (1 business day, same wall-clock time).
    assert first_response_due(Priority.P4, mt(2026, 10, 16, 18), CAL).isoformat() == (
        "2026-10-19T18:00:00-06:00"
    )


def test_p4_update_every_two_business_days() -> None:
    # P4 updates: Thursday 11:00 + 2 business days = Monday 11:00.
    assert next_update_due(Priority.P4, mt(2026, 10, 15, 11), CAL).isoformat() == "2026-10-19T11:00:00-06:00"


def test_p3_four_business_hours_over_weekend() -> None:
    # P3 opened Friday 15:00 with 08:00-17:00 hours: 2 h Friday + 2 h Monday = Monday 10:00.
    assert first_response_due(Priority.P3, mt(2026, 10, 16, 15), CAL).isoformat() == (
        "2026-10-19T10:00:00-06:00"
    )
    # Its update is one business day later at the same wall-clock time.
    assert next_update_due(Priority.P3, mt(2026, 10, 16, 15), CAL).isoformat() == (
        "2026-10-19T15:00:00-06:00"
    )


def test_p4_across_dst_keeps_wall_clock() -> None:
    # P4 opened Friday 2027-03-12 10:00 MST is due Monday 10:00 MDT; likewise over 2026-11-01.
    spring = first_response_due(Priority.P4, mt(2027, 3, 12, 10), CAL)
    assert spring.isoformat() == "2027-03-15T10:00:00-06:00"
    assert mt(2027, 3, 12, 10).utcoffset() == timedelta(hours=-7)
    autumn = first_response_due(Priority.P4, mt(2026, 10, 30, 10), CAL)
    assert autumn.isoformat() == "2026-11-02T10:00:00-07:00"
    assert mt(2026, 10, 30, 10).utcoffset() == timedelta(hours=-6)


def test_p4_over_thanksgiving() -> None:
    # Wednesday before Thanksgiving + 1 business day skips Thursday: due Friday.
    assert first_response_due(Priority.P4, mt(2026, 11, 25, 9), CAL).isoformat() == (
        "2026-11-27T09:00:00-07:00"
    )


def test_macd_standard_saturday_counts_from_monday_0700() -> None:
    # A standard MACD received Saturday starts Monday 07:00: first response Tuesday 07:00,
    # done Wednesday 07:00.
    received = mt(2026, 10, 17, 10)
    assert macd_first_response_due(received, False, CAL).isoformat() == "2026-10-20T07:00:00-06:00"
    assert macd_done_due(received, False, CAL).isoformat() == "2026-10-21T07:00:00-06:00"


def test_macd_expedited_saturday_counts_from_receipt() -> None:
    # Expedited: first response 4 real hours after receipt even on a Saturday; done 1 business day
    # by add_business_days (Saturday -> Monday 08:00 -> Tuesday 08:00).
    received = mt(2026, 10, 17, 10)
    assert macd_first_response_due(received, True, CAL).isoformat() == "2026-10-17T14:00:00-06:00"
    assert macd_done_due(received, True, CAL).isoformat() == "2026-10-20T08:00:00-06:00"


def test_macd_standard_extended_hours_edges() -> None:
    # 18:30 is inside extended hours (counts at once); 19:00 and 06:30 wait for the next 07:00.
    assert macd_first_response_due(mt(2026, 10, 14, 18, 30), False, CAL).isoformat() == (
        "2026-10-15T18:30:00-06:00"
    )
    assert macd_first_response_due(mt(2026, 10, 14, 19), False, CAL).isoformat() == (
        "2026-10-16T07:00:00-06:00"
    )
    assert macd_first_response_due(mt(2026, 10, 14, 6, 30), False, CAL).isoformat() == (
        "2026-10-15T07:00:00-06:00"
    )
    assert macd_done_due(mt(2026, 10, 14, 18, 30), False, CAL).isoformat() == "2026-10-16T18:30:00-06:00"


def test_macd_expedited_weekday_done_next_business_day() -> None:
    # Expedited received Thursday 20:00 (outside hours) counts at once: done Friday 20:00.
    assert macd_done_due(mt(2026, 10, 15, 20), True, CAL).isoformat() == "2026-10-16T20:00:00-06:00"


@pytest.mark.parametrize(
    ("minutes", "quarters", "amount"),
    [
        (0, 0, Decimal("0.00")),
        (1, 1, Decimal("25.00")),
        (15, 1, Decimal("25.00")),
        (16, 2, Decimal("50.00")),
        (60, 4, Decimal("100.00")),
        (61, 5, Decimal("125.00")),
    ],
)
def test_macd_billable_started_quarters(minutes: int, quarters: int, amount: Decimal) -> None:
    # Each started quarter hour is billed at 100 USD/hour.
    assert macd_billable(minutes) == (quarters, amount)


def test_macd_billable_custom_rate_rounds_to_cents() -> None:
    # A rate of 99.99/h for one quarter is 24.9975 -> 25.00 (half up), with two decimals.
    quarters, amount = macd_billable(10, Decimal("99.99"))
    assert (quarters, amount) == (1, Decimal("25.00"))
    assert str(amount) == "25.00"


def test_macd_billable_rejects_negative() -> None:
    # Negative logged time or rate is an input error.
    with pytest.raises(ValueError):
        macd_billable(-1)
    with pytest.raises(ValueError):
        macd_billable(10, Decimal(-1))


def test_no_response_clock() -> None:
    # Asked Thursday 14:00: warning Monday 14:00 (2 bdays); closed Tuesday 14:00 (1 bday grace).
    warned = no_response_warning_due(mt(2026, 10, 15, 14), CAL)
    assert warned.isoformat() == "2026-10-19T14:00:00-06:00"
    assert no_response_close_due(warned, CAL).isoformat() == "2026-10-20T14:00:00-06:00"
    assert no_response_close_due(warned, CAL, grace_bdays=3).isoformat() == "2026-10-22T14:00:00-06:00"
    assert no_response_warning_due(mt(2026, 10, 15, 14), CAL, bdays=1).isoformat() == (
        "2026-10-16T14:00:00-06:00"
    )
