# SPDX-License-Identifier: MIT
"""Time for maild: the one real-clock seam, ISO 8601 input, and business-calendar arithmetic.

Every rule elsewhere is a pure function of an injected, timezone-aware instant; only ``now()``
reads the real clock. Wall-clock rules (SPEC §4, §5, §7) are done by calendar arithmetic in the
calendar's zone (America/Denver by default): take the same wall-clock time on another date, then
``localize`` it, so "one business day later" is still 10:00 across a DST change.

Default holidays come from the ``holidays`` package, computed lazily per year and cached, so a
calendar covers any year without a fixed range and without reading the clock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_ZONE = "America/Denver"
_ISO_EXAMPLE = "2026-11-20T10:00"


def now() -> datetime:
    """The current instant, aware, in UTC. The only place maild reads the real clock."""
    return datetime.now(UTC)


def parse_time(text: str, zone: ZoneInfo) -> datetime:
    """Parse ISO 8601 (date-time, or a plain date meaning 00:00) into an aware UTC instant.

    Without a UTC offset the text is wall-clock time in ``zone`` (CONTRACT: "without a UTC offset
    it means Mountain Time"); a wall time in the spring-forward gap or the fall-back overlap is
    resolved as ``localize`` does.
    """
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"bad time {text!r}: expected ISO 8601, e.g. {_ISO_EXAMPLE}") from None
    if parsed.tzinfo is None:
        parsed = localize(parsed, zone)
    return parsed.astimezone(UTC)


def localize(naive_wall: datetime, zone: ZoneInfo) -> datetime:
    """Attach ``zone`` to a naive wall-clock time.

    A wall time in the spring-forward gap (e.g. 02:30 on 2027-03-14 in Denver) does not exist and
    moves forward by the gap (03:30 MDT); an ambiguous one in the fall-back hour takes the first
    occurrence (the daylight-time one).
    """
    if naive_wall.tzinfo is not None:
        raise ValueError(f"localize expects a naive wall-clock time, got {naive_wall.isoformat()}")
    # fold=0 reads a gap time with the pre-transition offset; the round trip through UTC then
    # shows it on the post-transition wall clock, i.e. moved forward by the gap. For an ambiguous
    # time fold=0 is the first occurrence, and the round trip keeps it.
    return naive_wall.replace(tzinfo=zone, fold=0).astimezone(UTC).astimezone(zone)


def wall_clock(t: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall-clock reading of the aware instant ``t`` in ``zone``."""
    if t.tzinfo is None:
        raise ValueError(f"expected a timezone-aware time, got naive {t.isoformat()}")
    return t.astimezone(zone).replace(tzinfo=None, fold=0)


def add_wall_days(t: datetime, days: int, zone: ZoneInfo) -> datetime:
    """The same wall-clock time ``days`` calendar days later (earlier if negative), in ``zone``."""
    return localize(wall_clock(t, zone) + timedelta(days=days), zone)


def add_elapsed(t: datetime, delta: timedelta, zone: ZoneInfo) -> datetime:
    """``t`` plus real elapsed time (24x7 clocks), shown in ``zone``.

    Done in UTC because Python adds a timedelta to an aware datetime on its wall clock.
    """
    if t.tzinfo is None:
        raise ValueError(f"expected a timezone-aware time, got naive {t.isoformat()}")
    return (t.astimezone(UTC) + delta).astimezone(zone)


@functools.cache
def _country_year(country: str, year: int) -> frozenset[date]:
    # Cached per (country, year): the holidays package builds a whole year at a time.
    try:
        import holidays  # here, not at import: the listener process (maild.listener) never needs it

        found = holidays.country_holidays(country, years=year)
    except NotImplementedError:
        raise ValueError(f"unknown holiday country {country!r}") from None
    return frozenset(found.keys())


def default_holidays(years: Iterable[int], country: str = "US") -> frozenset[date]:
    """The public holidays (observed days included) of ``country`` in ``years``."""
    result: frozenset[date] = frozenset()
    for year in years:
        result |= _country_year(country, year)
    return result


@dataclass(frozen=True)
class BusinessCalendar:
    """Business days and hours in one zone.

    ``holidays`` are explicit dates (from config); when ``country`` is set, that country's public
    holidays from the ``holidays`` package are closed days too, looked up lazily per year.
    ``day_start``–``day_end`` are business hours (hour-based targets such as P3's 4 hours);
    ``ext_start``–``ext_end`` are MACD's extended business hours (SPEC §5).
    """

    zone: ZoneInfo
    holidays: frozenset[date] = field(default_factory=frozenset)
    day_start: time = time(8, 0)
    day_end: time = time(17, 0)
    ext_start: time = time(7, 0)
    ext_end: time = time(19, 0)
    country: str | None = None

    def __post_init__(self) -> None:
        if not self.day_start < self.day_end:
            raise ValueError(f"business hours must start before they end: {self.day_start}-{self.day_end}")
        if not self.ext_start < self.ext_end:
            raise ValueError(f"extended hours must start before they end: {self.ext_start}-{self.ext_end}")

    def is_holiday(self, d: date) -> bool:
        if d in self.holidays:
            return True
        return self.country is not None and d in _country_year(self.country, d.year)

    def is_business_day(self, d: date) -> bool:
        """Monday to Friday and not a holiday."""
        return d.weekday() < 5 and not self.is_holiday(d)

    def next_business_day(self, d: date) -> date:
        """The first business day strictly after ``d``."""
        d += timedelta(days=1)
        while not self.is_business_day(d):
            d += timedelta(days=1)
        return d

    def _hours(self, extended: bool) -> tuple[time, time]:
        return (self.ext_start, self.ext_end) if extended else (self.day_start, self.day_end)

    def is_within_hours(self, t: datetime, extended: bool = False) -> bool:
        """Whether ``t`` is on a business day in [start, end) of business (or extended) hours."""
        wall = wall_clock(t, self.zone)
        start, end = self._hours(extended)
        return self.is_business_day(wall.date()) and start <= wall.time() < end

    def _next_opening_wall(self, wall: datetime, extended: bool) -> datetime:
        # The first naive wall time >= ``wall`` that is inside (extended) business hours.
        start, end = self._hours(extended)
        day = wall.date()
        if self.is_business_day(day):
            if wall.time() < start:
                return datetime.combine(day, start)
            if wall.time() < end:
                return wall
        return datetime.combine(self.next_business_day(day), start)

    def next_business_start(self, t: datetime, extended: bool = False) -> datetime:
        """The first instant at or after ``t`` inside business (or extended) hours.

        ``t`` itself when it is already inside; otherwise the next opening: today's start if it
        is a business day before opening, else the start of the next business day.
        """
        return localize(self._next_opening_wall(wall_clock(t, self.zone), extended), self.zone)

    def add_business_days(self, t: datetime, n: int) -> datetime:
        """The same wall-clock time ``n`` business days later.

        If ``t`` is not on a business day it first moves to ``day_start`` of the next business
        day: Friday 10:00 + 2 = Tuesday 10:00; Friday 18:00 + 1 = Monday 18:00; Saturday 10:00
        + 1 = Tuesday 08:00.
        """
        if n < 0:
            raise ValueError(f"business days must not be negative, got {n}")
        wall = wall_clock(t, self.zone)
        day = wall.date()
        if not self.is_business_day(day):
            day = self.next_business_day(day)
            wall = datetime.combine(day, self.day_start)
        for _ in range(n):
            day = self.next_business_day(day)
        return localize(datetime.combine(day, wall.time()), self.zone)

    def add_business_hours(self, t: datetime, hours: float | timedelta) -> datetime:
        """``t`` plus ``hours`` counted only inside business hours on business days.

        A ``t`` outside hours starts at the next opening. Time is counted on the wall clock (a
        business day is always ``day_end - day_start`` long). A target that uses up a day exactly
        falls due at that day's ``day_end`` (Friday 13:00 + 4 h = Friday 17:00), not at the next
        opening.
        """
        left = hours if isinstance(hours, timedelta) else timedelta(hours=hours)
        if left < timedelta(0):
            raise ValueError(f"business hours must not be negative, got {left}")
        cur = self._next_opening_wall(wall_clock(t, self.zone), extended=False)
        while True:
            available = datetime.combine(cur.date(), self.day_end) - cur
            if left <= available:
                return localize(cur + left, self.zone)
            left -= available
            cur = datetime.combine(self.next_business_day(cur.date()), self.day_start)


def make_calendar(
    zone_name: str,
    extra_holidays: Iterable[date] = (),
    use_default: bool = True,
    country: str = "US",
) -> BusinessCalendar:
    """A calendar in ``zone_name`` closed on ``extra_holidays`` and, by default, ``country``'s
    public holidays (looked up lazily per year, so every year is covered)."""
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone_name!r}") from None
    if use_default:
        _country_year(country, 2000)  # fail now, not at the first date lookup, on a bad country
    return BusinessCalendar(
        zone=zone, holidays=frozenset(extra_holidays), country=country if use_default else None
    )
