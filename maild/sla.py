# SPDX-License-Identifier: MIT
"""The desk's time targets as data, and the due times they give (SPEC §4 priorities, §5 MACD,
§4 no-response clock).

Pure functions over aware datetimes and a ``BusinessCalendar``; results are in the calendar's
zone. 24x7 targets (P1, P2, P1G) are plain elapsed time; business targets use the calendar:
hour targets via ``add_business_hours``, day targets via ``add_business_days``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType

from maild.clock import BusinessCalendar, add_elapsed
from maild.enums import Priority

_CENT = Decimal("0.01")
MACD_RATE_USD_PER_HOUR = Decimal(100)
MACD_EXPEDITED_FIRST_RESPONSE = timedelta(hours=4)


@dataclass(frozen=True)
class Target:
    """One priority's targets: each is either a duration or a number of business days.

    With ``round_the_clock`` the durations are real elapsed time; otherwise they are business
    hours, and the ``*_bdays`` counts are business days.
    """

    first_response: timedelta | None
    first_response_bdays: int
    update: timedelta | None
    update_bdays: int
    round_the_clock: bool

    def __post_init__(self) -> None:
        # Exactly one form per target, so no reader has to guess how the two would combine.
        for name, duration, bdays in (
            ("first response", self.first_response, self.first_response_bdays),
            ("update", self.update, self.update_bdays),
        ):
            if bdays < 0 or (duration is None) == (bdays == 0):
                raise ValueError(f"{name} target needs exactly one of a duration or a positive day count")
            if self.round_the_clock and duration is None:
                raise ValueError(f"a round-the-clock {name} target must be a duration")


_P1 = Target(timedelta(minutes=15), 0, timedelta(hours=1), 0, round_the_clock=True)

TARGETS: Mapping[Priority, Target] = MappingProxyType(
    {
        Priority.P1: _P1,
        Priority.P2: Target(timedelta(minutes=30), 0, timedelta(hours=2), 0, round_the_clock=True),
        Priority.P3: Target(timedelta(hours=4), 0, None, 1, round_the_clock=False),
        Priority.P4: Target(None, 1, None, 2, round_the_clock=False),
        # A global master case is a P1 for every organisation it touches.
        Priority.P1G: _P1,
    }
)


def _due(
    start: datetime, duration: timedelta | None, bdays: int, round_the_clock: bool, cal: BusinessCalendar
) -> datetime:
    if duration is None:
        return cal.add_business_days(start, bdays)
    if round_the_clock:
        return add_elapsed(start, duration, cal.zone)
    return cal.add_business_hours(start, duration)


def first_response_due(priority: Priority, opened_at: datetime, cal: BusinessCalendar) -> datetime:
    """When the first response to a case opened at ``opened_at`` is due."""
    target = TARGETS[priority]
    return _due(opened_at, target.first_response, target.first_response_bdays, target.round_the_clock, cal)


def next_update_due(priority: Priority, since: datetime, cal: BusinessCalendar) -> datetime:
    """When the next update is due, ``since`` being the last update (or the first response)."""
    target = TARGETS[priority]
    return _due(since, target.update, target.update_bdays, target.round_the_clock, cal)


def macd_clock_start(received_at: datetime, expedited: bool, cal: BusinessCalendar) -> datetime:
    """Where a MACD request's clock starts (SPEC §5).

    Expedited: at receipt. Standard: at receipt if inside extended business hours (business days
    07:00–19:00), else at the next opening of extended hours (07:00 the same morning on a business
    day before 07:00, otherwise 07:00 on the next business day).
    """
    if expedited:
        return add_elapsed(received_at, timedelta(0), cal.zone)
    return cal.next_business_start(received_at, extended=True)


def macd_first_response_due(received_at: datetime, expedited: bool, cal: BusinessCalendar) -> datetime:
    """Standard: 1 business day from the clock start. Expedited: 4 hours of real elapsed time
    from receipt, whatever the day or hour (the fee buys a round-the-clock clock)."""
    if expedited:
        return add_elapsed(received_at, MACD_EXPEDITED_FIRST_RESPONSE, cal.zone)
    return cal.add_business_days(macd_clock_start(received_at, False, cal), 1)


def macd_done_due(received_at: datetime, expedited: bool, cal: BusinessCalendar) -> datetime:
    """Standard: 2 business days from the clock start. Expedited: 1 business day from receipt
    (by ``add_business_days``, so a weekend receipt counts from the next business day's
    ``day_start``)."""
    start = macd_clock_start(received_at, expedited, cal)
    return cal.add_business_days(start, 1 if expedited else 2)


def macd_billable(
    minutes_logged: int, rate_usd_per_hour: Decimal = MACD_RATE_USD_PER_HOUR
) -> tuple[int, Decimal]:
    """(billable quarter hours, amount in USD to the cent): each started quarter hour counts."""
    if minutes_logged < 0:
        raise ValueError(f"logged minutes must not be negative, got {minutes_logged}")
    if rate_usd_per_hour < 0:
        raise ValueError(f"rate must not be negative, got {rate_usd_per_hour}")
    quarters = -(-minutes_logged // 15)  # ceiling, in integers
    amount = (rate_usd_per_hour * quarters / 4).quantize(_CENT, rounding=ROUND_HALF_UP)
    return quarters, amount


def no_response_warning_due(asked_at: datetime, cal: BusinessCalendar, bdays: int = 2) -> datetime:
    """When the customer, asked something at ``asked_at`` and silent since, gets the warning."""
    return cal.add_business_days(asked_at, bdays)


def no_response_close_due(warned_at: datetime, cal: BusinessCalendar, grace_bdays: int = 1) -> datetime:
    """When a warned, still-silent case is closed as Closed No Response."""
    return cal.add_business_days(warned_at, grace_bdays)
