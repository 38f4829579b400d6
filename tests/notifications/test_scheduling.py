"""``plan_sends``: when each reminder of a series goes out, or why it never will."""

from __future__ import annotations

import datetime

from notifier.notifications.scheduling import PlannedSend, plan_sends
from notifier.notifications.schemas import NotificationStatus

NOW = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
PENDING = NotificationStatus.PENDING
SKIPPED = NotificationStatus.SKIPPED
EXPIRED = NotificationStatus.EXPIRED


def test_no_target_date_sends_once_now() -> None:
    assert plan_sends(None, [7 * DAY, DAY], NOW) == [
        PlannedSend(datetime.timedelta(0), NOW, PENDING)
    ]


def test_target_date_in_the_past_expires_every_reminder() -> None:
    target = NOW - DAY
    assert plan_sends(target, [7 * DAY, DAY], NOW) == [
        PlannedSend(7 * DAY, target - 7 * DAY, EXPIRED),
        PlannedSend(DAY, target - DAY, EXPIRED),
    ]


def test_target_date_exactly_now_expires() -> None:
    assert plan_sends(NOW, [DAY], NOW) == [PlannedSend(DAY, NOW - DAY, EXPIRED)]


def test_every_send_time_in_the_future_is_pending_at_that_time() -> None:
    target = NOW + 30 * DAY
    assert plan_sends(target, [7 * DAY, DAY], NOW) == [
        PlannedSend(7 * DAY, target - 7 * DAY, PENDING),
        PlannedSend(DAY, target - DAY, PENDING),
    ]


def test_issue_case_seven_day_reminder_skipped_one_day_reminder_pending() -> None:
    """Lead times 7 and 1 days, target 3 days out: the 7-day reminder is already late."""
    target = NOW + 3 * DAY

    plan = plan_sends(target, [7 * DAY, DAY], NOW)

    assert plan == [
        PlannedSend(7 * DAY, target - 7 * DAY, SKIPPED),
        PlannedSend(DAY, target - DAY, PENDING),
    ]
    assert plan[1].send_at == NOW + 2 * DAY


def test_a_single_overdue_reminder_goes_now() -> None:
    target = NOW + 3 * DAY
    assert plan_sends(target, [7 * DAY], NOW) == [PlannedSend(7 * DAY, NOW, PENDING)]


def test_of_several_overdue_reminders_only_the_latest_goes_now() -> None:
    target = NOW + datetime.timedelta(hours=12)
    plan = plan_sends(target, [30 * DAY, 7 * DAY, DAY], NOW)

    assert plan == [
        PlannedSend(30 * DAY, target - 30 * DAY, SKIPPED),
        PlannedSend(7 * DAY, target - 7 * DAY, SKIPPED),
        PlannedSend(DAY, NOW, PENDING),
    ]


def test_overdue_reminders_are_all_skipped_while_a_later_one_is_still_to_come() -> None:
    target = NOW + datetime.timedelta(hours=12)
    hour = datetime.timedelta(hours=1)
    plan = plan_sends(target, [30 * DAY, 7 * DAY, DAY, hour], NOW)

    assert plan == [
        PlannedSend(30 * DAY, target - 30 * DAY, SKIPPED),
        PlannedSend(7 * DAY, target - 7 * DAY, SKIPPED),
        PlannedSend(DAY, target - DAY, SKIPPED),
        PlannedSend(hour, target - hour, PENDING),
    ]


def test_order_of_lead_times_does_not_matter() -> None:
    target = NOW + 3 * DAY
    plan = plan_sends(target, [14 * DAY, 5 * DAY, 7 * DAY], NOW)

    assert plan == [
        PlannedSend(14 * DAY, target - 14 * DAY, SKIPPED),
        PlannedSend(5 * DAY, NOW, PENDING),
        PlannedSend(7 * DAY, target - 7 * DAY, SKIPPED),
    ]
    assert [p.status for p in plan_sends(target, [DAY, 7 * DAY], NOW)] == [PENDING, SKIPPED]


def test_duplicate_overdue_lead_time_is_sent_once() -> None:
    target = NOW + 3 * DAY
    assert plan_sends(target, [7 * DAY, 7 * DAY], NOW) == [
        PlannedSend(7 * DAY, NOW, PENDING),
        PlannedSend(7 * DAY, target - 7 * DAY, SKIPPED),
    ]


def test_send_time_exactly_now_counts_as_due_now() -> None:
    target = NOW + DAY
    assert plan_sends(target, [DAY], NOW) == [PlannedSend(DAY, NOW, PENDING)]


def test_lead_time_zero_is_sent_at_the_target_date() -> None:
    target = NOW + DAY
    assert plan_sends(target, [datetime.timedelta(0)], NOW) == [
        PlannedSend(datetime.timedelta(0), target, PENDING)
    ]


def test_target_date_in_another_time_zone_is_compared_as_an_instant() -> None:
    # 13:00+02:00 is 11:00 UTC, an hour before NOW: passed.
    target = datetime.datetime(
        2026, 3, 10, 13, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    assert [p.status for p in plan_sends(target, [DAY], NOW)] == [EXPIRED]
