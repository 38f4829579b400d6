"""The recipient's clock: lead days across DST changes, and moving sends out of quiet hours."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.notifications.localtime import (
    QuietHours,
    check_quiet_hours,
    days_before,
    instants_at,
    leave_quiet_hours,
    next_wall_time,
    zone_named,
)
from notifier.notifications.scheduling import PlannedSend, plan_sends
from notifier.notifications.schemas import NotificationStatus

UTC = datetime.UTC
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
NIGHT = QuietHours("22:00", "08:00")


def berlin(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0
) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=BERLIN, fold=fold)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- the window --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wall", "inside"),
    [
        ("21:59:59", False),
        ("22:00", True),
        ("23:59", True),
        ("00:00", True),
        ("07:59:59", True),
        ("08:00", False),
        ("12:00", False),
    ],
)
def test_a_window_across_midnight_holds_the_night(wall: str, inside: bool) -> None:
    assert NIGHT.contains(datetime.time.fromisoformat(wall)) is inside


@pytest.mark.parametrize(
    ("wall", "inside"), [("12:59", False), ("13:00", True), ("13:59", True), ("14:00", False)]
)
def test_a_window_within_one_day(wall: str, inside: bool) -> None:
    assert QuietHours("13:00", "14:00").contains(datetime.time.fromisoformat(wall)) is inside


def test_an_empty_window_is_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        check_quiet_hours(QuietHours("08:00", "08:00:00"))


def test_unknown_zones_are_refused() -> None:
    assert zone_named("Europe/Berlin") == BERLIN
    for name in ("Mars/Olympus_Mons", "europe/berlin", "../etc/passwd", ""):
        with pytest.raises(ValueError, match="unknown IANA time zone"):
            zone_named(name)


# --- moving out of quiet hours ------------------------------------------------------------


def test_a_late_evening_send_moves_to_the_next_morning() -> None:
    assert leave_quiet_hours(berlin(2026, 12, 1, 23, 30), BERLIN, NIGHT) == berlin(
        2026, 12, 2, 8, 0
    )


def test_an_early_morning_send_moves_to_that_morning() -> None:
    assert leave_quiet_hours(berlin(2026, 12, 2, 6, 15), BERLIN, NIGHT) == berlin(2026, 12, 2, 8)


@pytest.mark.parametrize("wall", [(12, 0), (8, 0), (21, 59)])
def test_a_send_outside_the_window_stays(wall: tuple[int, int]) -> None:
    instant = berlin(2026, 12, 2, *wall)
    assert leave_quiet_hours(instant, BERLIN, NIGHT) == instant


def test_the_window_is_read_on_the_recipients_clock() -> None:
    """23:30 UTC is 00:30 in Berlin in winter: inside the night there, not in UTC terms."""
    moved = leave_quiet_hours(utc(2026, 12, 1, 23, 30), BERLIN, NIGHT)
    assert moved == utc(2026, 12, 2, 7, 0)  # 08:00 CET


def test_an_end_in_the_spring_forward_gap_moves_forward_by_the_gap() -> None:
    """On 2027-03-28 Berlin's clocks jump from 02:00 to 03:00: 02:30 never happens."""
    window = QuietHours("01:00", "02:30")
    moved = leave_quiet_hours(berlin(2027, 3, 28, 1, 30), BERLIN, window)
    assert moved == berlin(2027, 3, 28, 3, 30)
    assert moved == utc(2027, 3, 28, 1, 30)


def test_in_a_fall_back_fold_the_end_after_the_send_is_taken() -> None:
    """On 2026-10-25 Berlin's 02:00-03:00 happens twice (CEST, then CET)."""
    window = QuietHours("01:00", "02:30")
    first_pass = berlin(2026, 10, 25, 2, 10)  # 00:10 UTC
    second_pass = berlin(2026, 10, 25, 2, 10, fold=1)  # 01:10 UTC
    assert leave_quiet_hours(first_pass, BERLIN, window) == utc(2026, 10, 25, 0, 30)
    assert leave_quiet_hours(second_pass, BERLIN, window) == utc(2026, 10, 25, 1, 30)


def test_instants_at_a_repeated_time_are_both_readings() -> None:
    assert instants_at(datetime.date(2026, 10, 25), datetime.time(2, 30), BERLIN) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 30),
    ]


# --- lead times in local days -------------------------------------------------------------


def test_seven_days_before_across_spring_forward_is_the_same_wall_clock_time() -> None:
    """The issue's example: 7 days before 2027-03-28 09:00 in Berlin, a DST change between."""
    target = berlin(2027, 3, 28, 9, 0)  # CEST, 07:00 UTC
    send_at = days_before(target, 7 * DAY, BERLIN)
    assert send_at == berlin(2027, 3, 21, 9, 0)  # CET, 08:00 UTC
    assert target - send_at == 167 * HOUR
    assert days_before(target, 7 * DAY, None) == target - 168 * HOUR


def test_seven_days_before_across_fall_back_is_169_hours() -> None:
    target = berlin(2026, 10, 30, 9, 0)
    send_at = days_before(target, 7 * DAY, BERLIN)
    assert send_at == berlin(2026, 10, 23, 9, 0)
    assert target - send_at == 169 * HOUR


def test_hours_of_a_lead_time_are_elapsed_time() -> None:
    target = berlin(2027, 3, 29, 9, 0)
    send_at = days_before(target, DAY + 12 * HOUR, BERLIN)
    # A day back is 09:00 CEST on the 28th (07:00 UTC); twelve hours before that is 20:00 CET.
    assert send_at == utc(2027, 3, 27, 19, 0)
    assert send_at == berlin(2027, 3, 27, 20, 0)


def test_a_day_before_a_time_the_gap_skips_moves_forward() -> None:
    target = berlin(2027, 3, 29, 2, 30)
    assert days_before(target, DAY, BERLIN) == berlin(2027, 3, 28, 3, 30)


# --- plan_sends with a zone and quiet hours ---------------------------------------------


NOW = utc(2026, 11, 23, 12, 0)


def test_plan_counts_lead_days_in_the_recipients_zone() -> None:
    target = berlin(2027, 3, 28, 9, 0)
    assert plan_sends(target, [7 * DAY], NOW, zone=BERLIN) == [
        PlannedSend(7 * DAY, berlin(2027, 3, 21, 9, 0), NotificationStatus.PENDING)
    ]


def test_plan_moves_a_pending_send_out_of_quiet_hours() -> None:
    target = berlin(2026, 12, 10, 23, 0)
    (send,) = plan_sends(target, [DAY], NOW, zone=BERLIN, quiet_hours=NIGHT)
    assert send == PlannedSend(DAY, berlin(2026, 12, 10, 8, 0), NotificationStatus.PENDING)


def test_plan_sends_now_unless_now_is_quiet() -> None:
    night = utc(2026, 11, 23, 23, 0)  # midnight in Berlin
    assert plan_sends(None, [], night, zone=BERLIN, quiet_hours=NIGHT) == [
        PlannedSend(datetime.timedelta(0), berlin(2026, 11, 24, 8, 0), NotificationStatus.PENDING)
    ]
    day = utc(2026, 11, 23, 12, 0)
    assert plan_sends(None, [], day, zone=BERLIN, quiet_hours=NIGHT)[0].send_at == day


def test_a_reminder_pushed_past_its_target_date_expires() -> None:
    """Due 22:30 for a 23:30 target: the morning after would be too late to remind."""
    target = berlin(2026, 12, 10, 23, 30)
    (send,) = plan_sends(target, [HOUR], NOW, zone=BERLIN, quiet_hours=NIGHT)
    assert send.status is NotificationStatus.EXPIRED


def test_a_reminder_due_at_the_target_itself_still_goes_after_quiet_hours() -> None:
    target = berlin(2026, 12, 10, 23, 30)
    (send,) = plan_sends(target, [datetime.timedelta(0)], NOW, zone=BERLIN, quiet_hours=NIGHT)
    assert send == PlannedSend(
        datetime.timedelta(0), berlin(2026, 12, 11, 8, 0), NotificationStatus.PENDING
    )


def test_quiet_hours_without_a_zone_are_utc() -> None:
    (send,) = plan_sends(None, [], utc(2026, 11, 23, 23, 0), quiet_hours=NIGHT)
    assert send.send_at == utc(2026, 11, 24, 8, 0)


# --- properties ---------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
]
instants = st.datetimes(
    min_value=datetime.datetime(2000, 1, 1),
    max_value=datetime.datetime(2040, 1, 1),
    timezones=st.just(UTC),
)
wall_times = st.times().map(lambda t: t.replace(microsecond=0))
windows = st.tuples(wall_times, wall_times).filter(lambda w: w[0] != w[1])


def _window_length(window: QuietHours) -> datetime.timedelta:
    start = datetime.datetime.combine(datetime.date(2000, 1, 1), window.start_time)
    end = datetime.datetime.combine(datetime.date(2000, 1, 1), window.end_time)
    return end - start if end > start else end + DAY - start


def _ends_in_a_gap(instant: datetime.datetime, zone: zoneinfo.ZoneInfo, end: datetime.time) -> bool:
    """Whether ``end`` is skipped by a clock change within two days of ``instant``."""
    day = instant.astimezone(zone).date()
    for offset in range(3):
        local = datetime.datetime.combine(day + offset * DAY, end, tzinfo=zone)
        back = local.astimezone(UTC).astimezone(zone)
        if back.replace(tzinfo=None) != local.replace(tzinfo=None):
            return True
    return False


@settings(max_examples=400, deadline=None)
@given(instant=instants, zone_name=st.sampled_from(ZONES), window=windows)
def test_the_moved_send_is_never_quiet_never_earlier_and_at_most_a_window_later(
    instant: datetime.datetime, zone_name: str, window: tuple[datetime.time, datetime.time]
) -> None:
    zone = zoneinfo.ZoneInfo(zone_name)
    quiet = QuietHours(window[0].isoformat(), window[1].isoformat())

    moved = leave_quiet_hours(instant, zone, quiet)

    assert moved >= instant
    assert not quiet.contains(moved.astimezone(zone).time())
    if not quiet.contains(instant.astimezone(zone).time()):
        assert moved == instant
    if not _ends_in_a_gap(instant, zone, quiet.end_time):
        # A DST change inside the window lengthens it by at most an hour.
        assert moved - instant <= _window_length(quiet) + HOUR
        # The earliest such instant: a second before it was still quiet (or not later).
        before = moved - datetime.timedelta(seconds=1)
        assert before < instant or quiet.contains(before.astimezone(zone).time())


@settings(max_examples=300, deadline=None)
@given(
    target=instants,
    zone_name=st.sampled_from(ZONES),
    days=st.integers(min_value=1, max_value=400),
)
def test_whole_lead_days_keep_the_wall_clock_time_unless_it_is_skipped(
    target: datetime.datetime, zone_name: str, days: int
) -> None:
    zone = zoneinfo.ZoneInfo(zone_name)

    send_at = days_before(target, days * DAY, zone)

    local_target = target.astimezone(zone)
    local_send = send_at.astimezone(zone)
    assert local_send.date() == local_target.date() - days * DAY or (
        # the same time of day did not exist that day: moved forward past the gap
        local_send.time() > local_target.time()
    )
    # Never more than the DST difference (at most an hour here) away from plain 24-hour days.
    assert abs((target - send_at) - days * DAY) <= HOUR
    if not _ends_in_a_gap(send_at, zone, local_target.time().replace(tzinfo=None)):
        assert local_send.time() == local_target.time()


# --- digests "until" a time of day ---------------------------------------------------------

NINE = datetime.time(9, 0)


def test_the_next_nine_oclock_is_today_before_it_and_tomorrow_from_it() -> None:
    assert next_wall_time(berlin(2026, 12, 7, 8, 59), NINE, BERLIN) == berlin(2026, 12, 7, 9)
    assert next_wall_time(berlin(2026, 12, 7, 9), NINE, BERLIN) == berlin(2026, 12, 8, 9)
    assert next_wall_time(berlin(2026, 12, 7, 23), NINE, BERLIN) == berlin(2026, 12, 8, 9)


def test_the_next_nine_oclock_across_spring_forward_is_23_hours_after_the_last() -> None:
    """Berlin 2027-03-28: 09:00 CET on the 27th is 08:00 UTC, 09:00 CEST the next day 07:00."""
    saturday = next_wall_time(utc(2027, 3, 27, 7), NINE, BERLIN)
    sunday = next_wall_time(saturday, NINE, BERLIN)
    assert (saturday, sunday) == (utc(2027, 3, 27, 8), utc(2027, 3, 28, 7))
    assert sunday - saturday == 23 * HOUR


def test_the_next_nine_oclock_across_fall_back_is_25_hours_after_the_last() -> None:
    saturday = next_wall_time(utc(2026, 10, 24, 6), NINE, BERLIN)
    sunday = next_wall_time(saturday, NINE, BERLIN)
    assert (saturday, sunday) == (utc(2026, 10, 24, 7), utc(2026, 10, 25, 8))
    assert sunday - saturday == 25 * HOUR


def test_a_time_in_the_spring_forward_gap_is_shifted_by_the_gap() -> None:
    """02:30 does not happen in Berlin on 2027-03-28: the digest goes at 03:30 CEST."""
    until = datetime.time(2, 30)
    assert next_wall_time(berlin(2027, 3, 28, 0), until, BERLIN) == berlin(2027, 3, 28, 3, 30)
    assert next_wall_time(berlin(2027, 3, 28, 0), until, BERLIN) == utc(2027, 3, 28, 1, 30)


def test_a_repeated_time_counts_once_a_night() -> None:
    """02:30 happens twice in Berlin on 2026-10-25 (00:30 and 01:30 UTC): only the first is a
    window's end; from between the two readings the next end is the next night's."""
    until = datetime.time(2, 30)
    assert next_wall_time(utc(2026, 10, 25, 0), until, BERLIN) == utc(2026, 10, 25, 0, 30)
    assert next_wall_time(utc(2026, 10, 25, 0, 30), until, BERLIN) == utc(2026, 10, 26, 1, 30)
    assert next_wall_time(utc(2026, 10, 25, 1), until, BERLIN) == utc(2026, 10, 26, 1, 30)


@settings(max_examples=300, deadline=None)
@given(
    after=st.datetimes(
        min_value=datetime.datetime(2026, 1, 1),
        max_value=datetime.datetime(2028, 12, 31),
        timezones=st.just(UTC),
    ),
    wall=st.times(),
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]),
)
def test_the_next_wall_time_is_after_within_a_day_and_once_a_day(
    after: datetime.datetime, wall: datetime.time, zone: str
) -> None:
    clock = zoneinfo.ZoneInfo(zone)
    end = next_wall_time(after, wall, clock)
    following = next_wall_time(end, wall, clock)

    assert after < end <= after + DAY + 2 * HOUR
    # Windows follow each other a calendar day apart on the recipient's clock.
    assert following.astimezone(clock).date() == end.astimezone(clock).date() + DAY
    # ... and each is the first reading of `wall` that day (shifted forward in a gap).
    assert end == instants_at(end.astimezone(clock).date(), wall, clock)[0]
