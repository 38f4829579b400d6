"""The recipient's clock: lead times counted in local days, and quiet hours.

Pure functions over aware datetimes and :class:`zoneinfo.ZoneInfo`; nothing here touches
SQL or HTTP. Wall-clock times that do not exist (a spring-forward gap) or exist twice (a
fall-back fold) are resolved like the "compatible" disambiguation of ECMAScript Temporal and
RFC 5545: a time in a gap moves forward by the gap's length; of the two readings of a
repeated time, the earlier one is taken (unless it is already past, see
:func:`leave_quiet_hours`).
"""

from __future__ import annotations

import datetime
import functools
import zoneinfo
from typing import Annotated, Any

import msgspec
from psycopg.types.json import Jsonb

from notifier.patterns import whole

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)

# "22:00" or "22:00:30", local wall-clock time.
LocalTime = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?"),
        description="Local wall-clock time, HH:MM or HH:MM:SS",
        examples=["22:00"],
    ),
]
# An IANA time zone name such as "Europe/Berlin"; checked against the tz database.
TimeZoneName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, examples=["Europe/Berlin"])]


class QuietHours(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A daily window, in the recipient's local time, when nothing is sent.

    ``start`` is inside the window, ``end`` is not. A window whose end is earlier than its
    start crosses midnight (``22:00``-``08:00``).
    """

    start: LocalTime
    end: LocalTime

    @property
    def start_time(self) -> datetime.time:
        """``start`` as a time."""
        return datetime.time.fromisoformat(self.start)

    @property
    def end_time(self) -> datetime.time:
        """``end`` as a time."""
        return datetime.time.fromisoformat(self.end)

    @property
    def crosses_midnight(self) -> bool:
        """Whether the window runs from one day into the next."""
        return self.end_time < self.start_time

    @classmethod
    def from_column(cls, value: Any) -> QuietHours | None:
        """The window stored in a ``quiet_hours`` jsonb column (NULL: none)."""
        return None if value is None else msgspec.convert(value, cls)

    @staticmethod
    def to_column(quiet_hours: QuietHours | None) -> Jsonb | None:
        """``quiet_hours`` as the parameter of a ``quiet_hours`` jsonb column."""
        return None if quiet_hours is None else Jsonb(msgspec.to_builtins(quiet_hours))

    def contains(self, wall: datetime.time) -> bool:
        """Whether the wall-clock time ``wall`` lies inside the window."""
        start, end = self.start_time, self.end_time
        if self.crosses_midnight:
            return wall >= start or wall < end
        return start <= wall < end


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone_named(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name``; ValueError if the tz database does not know it."""
    if name not in _known_zones():
        raise ValueError(f"unknown IANA time zone {name!r}, e.g. 'Europe/Berlin'")
    return zoneinfo.ZoneInfo(name)


def check_quiet_hours(quiet_hours: QuietHours) -> None:
    """ValueError if the window is empty (start equals end): it would mean nothing."""
    if quiet_hours.start_time == quiet_hours.end_time:
        raise ValueError("start and end must differ")


def _round_trips(local: datetime.datetime) -> bool:
    """Whether the aware local time ``local`` names a wall-clock time that exists."""
    back = local.astimezone(UTC).astimezone(local.tzinfo)
    return back.replace(tzinfo=None) == local.replace(tzinfo=None)


def instants_at(
    day: datetime.date, wall: datetime.time, zone: zoneinfo.ZoneInfo
) -> list[datetime.datetime]:
    """The instants (UTC, ascending) at which the clocks in ``zone`` show ``wall`` on ``day``.

    One instant normally, two in a fall-back fold. In a spring-forward gap, none exists:
    the one instant returned is ``wall`` shifted forward by the gap's length.
    """
    local = datetime.datetime.combine(day, wall, tzinfo=zone)
    if not _round_trips(local):
        # In a gap, fold=0 reads the time with the offset from before the jump: later.
        return [local.replace(fold=0).astimezone(UTC)]
    readings = {local.replace(fold=fold).astimezone(UTC) for fold in (0, 1)}
    return sorted(readings)


def days_before(
    target: datetime.datetime, lead: datetime.timedelta, zone: zoneinfo.ZoneInfo | None
) -> datetime.datetime:
    """``target - lead``, with the whole days of ``lead`` counted on the clocks of ``zone``.

    "7 days before 09:00" is 09:00 on the calendar day a week earlier, even when a DST
    change lies in between (167 or 169 hours, not 168); the rest of ``lead`` (hours,
    minutes) is exact elapsed time. Without a zone, every day is 24 hours.
    """
    if zone is None or lead.days == 0:
        return target - lead
    local = target.astimezone(zone)
    wall = local.replace(tzinfo=None) - datetime.timedelta(days=lead.days)
    instants = instants_at(wall.date(), wall.time(), zone)
    # Of a repeated time, the reading with the same offset as the target, else the earlier.
    same_offset = [i for i in instants if i.astimezone(zone).utcoffset() == local.utcoffset()]
    start = (same_offset or instants)[0]
    return start - datetime.timedelta(seconds=lead.seconds, microseconds=lead.microseconds)


def leave_quiet_hours(
    instant: datetime.datetime, zone: zoneinfo.ZoneInfo, quiet_hours: QuietHours
) -> datetime.datetime:
    """``instant`` if it lies outside the quiet window in ``zone``, else the window's end.

    The result is never earlier than ``instant`` and never inside the window. It is at most
    the window's length later, plus an hour when a DST change falls inside the window; in
    the odd case where a spring-forward gap swallows the window's end (a window ending in
    the skipped hour and starting right after it), the next day's end.
    """
    local = instant.astimezone(zone)
    if not quiet_hours.contains(local.time()):
        return instant
    end = quiet_hours.end_time
    day = local.date()
    if quiet_hours.crosses_midnight and local.time() >= quiet_hours.start_time:
        day += DAY  # the window started this evening and ends tomorrow
    for _ in range(3):
        for candidate in instants_at(day, end, zone):
            if candidate > instant and not quiet_hours.contains(candidate.astimezone(zone).time()):
                return candidate
        day += DAY
    raise AssertionError(f"no end of quiet hours {quiet_hours} found after {instant}")


def next_wall_time(
    after: datetime.datetime, wall: datetime.time, zone: zoneinfo.ZoneInfo
) -> datetime.datetime:
    """The first instant strictly after ``after`` at which the clocks in ``zone`` show
    ``wall``, counting each calendar day once.

    In a spring-forward gap the time is taken shifted forward by the gap (02:30 is 03:30
    that day), so every day has one. In a fall-back fold only the earlier reading counts:
    a digest "until 01:30" goes out once that night, and an instant between the two
    readings waits for the next day's 01:30, not for the repeat an hour later.
    """
    day = after.astimezone(zone).date() - DAY  # a day earlier: its time may map after `after`
    for _ in range(4):
        first = instants_at(day, wall, zone)[0]
        if first > after:
            return first
        day += DAY
    raise AssertionError(f"no {wall} in {zone} found after {after}")
