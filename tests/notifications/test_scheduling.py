"""``plan_sends``: when each reminder of a series goes out, or why it never will."""

from __future__ import annotations

import datetime

import pytest

from notifier.notifications.scheduling import (
    ExpiryReason,
    PlannedSend,
    plan_sends,
    target_deadline,
)
from notifier.notifications.schemas import NotificationStatus

NOW = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
PENDING = NotificationStatus.PENDING
SKIPPED = NotificationStatus.SKIPPED
EXPIRED = NotificationStatus.EXPIRED
GRACE = datetime.timedelta(minutes=5)
SECOND = datetime.timedelta(seconds=1)


def test_no_target_date_sends_once_now() -> None:
    assert plan_sends(None, [7 * DAY, DAY], NOW) == [
        PlannedSend(datetime.timedelta(0), NOW, PENDING)
    ]


def test_target_date_passed_by_more_than_the_grace_expires_every_reminder_saying_why() -> None:
    target = NOW - DAY
    plan = plan_sends(target, [7 * DAY, DAY], NOW, grace=GRACE)

    assert [(p.lead_time, p.send_at, p.status, p.expiry) for p in plan] == [
        (7 * DAY, target - 7 * DAY, EXPIRED, ExpiryReason.TARGET_PASSED),
        (DAY, target - DAY, EXPIRED, ExpiryReason.TARGET_PASSED),
    ]
    assert plan[0].why == (
        "target date 2026-03-09T12:00:00+00:00 had passed more than 300 s "
        "(NOTIFIER_EXPIRY_GRACE_SECONDS) before it was accepted"
    )


def test_target_date_exactly_now_sends_the_reminder_now() -> None:
    """The request took its time to reach us (or the client asked "now"): not expired."""
    assert plan_sends(NOW, [DAY], NOW, grace=GRACE) == [PlannedSend(DAY, NOW, PENDING)]


@pytest.mark.parametrize(
    "late_by",
    [datetime.timedelta(0), SECOND, GRACE - SECOND],
    ids=["at-target", "1s-late", "just-within-grace"],
)
def test_lead_time_zero_with_the_target_just_passed_is_sent_now(
    late_by: datetime.timedelta,
) -> None:
    """A "send now" request (target = now, lead 0) that waited inside the API is delivered."""
    plan = plan_sends(NOW - late_by, [datetime.timedelta(0)], NOW, grace=GRACE)
    assert plan == [PlannedSend(datetime.timedelta(0), NOW, PENDING)]


def test_the_grace_ends_exactly_grace_after_the_target() -> None:
    (send,) = plan_sends(NOW - GRACE, [datetime.timedelta(0)], NOW, grace=GRACE)
    assert (send.status, send.expiry) == (EXPIRED, ExpiryReason.TARGET_PASSED)


def test_an_event_processed_late_is_judged_from_when_it_was_accepted() -> None:
    """Accepted 1 s before its target, processed 10 minutes later (an outage): the grace
    counts from the target, so it is expired, saying so; processed 4 minutes late: sent."""
    accepted = NOW - 10 * 60 * SECOND
    late = plan_sends(accepted + SECOND, [DAY], NOW, grace=GRACE, accepted_at=accepted)
    assert [p.expiry for p in late] == [ExpiryReason.TARGET_PASSED]
    recent = NOW - 4 * 60 * SECOND
    sent = plan_sends(recent + SECOND, [DAY], NOW, grace=GRACE, accepted_at=recent)
    assert sent == [PlannedSend(DAY, NOW, PENDING)]


def test_target_deadline_counts_the_grace_from_acceptance_when_that_was_later() -> None:
    assert target_deadline(NOW, NOW - DAY, GRACE) == NOW + GRACE
    assert target_deadline(NOW - 60 * SECOND, NOW, GRACE) == NOW + GRACE
    # Already past the grace when the client asked: no new grace.
    assert target_deadline(NOW - DAY, NOW, GRACE) == NOW - DAY + GRACE


def test_expires_at_is_kept_on_the_send_and_expires_it_when_not_after_the_send_time() -> None:
    target = NOW + 3 * DAY
    (kept,) = plan_sends(target, [DAY], NOW, expires_at=target)
    assert (kept.status, kept.expires_at) == (PENDING, target)

    (expired,) = plan_sends(target, [DAY], NOW, expires_at=target - DAY)
    assert (expired.status, expired.expiry) == (EXPIRED, ExpiryReason.DEADLINE)
    assert expired.why == "its send time is not before its expires_at 2026-03-12T12:00:00+00:00"


def test_deliver_within_sets_the_deadline_after_each_send_time() -> None:
    target = NOW + 3 * DAY
    hour = datetime.timedelta(hours=1)
    plan = plan_sends(target, [2 * DAY, DAY], NOW, deliver_within=hour)
    assert [(p.status, p.expires_at) for p in plan] == [
        (PENDING, target - 2 * DAY + hour),
        (PENDING, target - DAY + hour),
    ]
    # The earlier of the two deadlines holds.
    (send,) = plan_sends(target, [DAY], NOW, expires_at=target - DAY + SECOND, deliver_within=hour)
    assert send.expires_at == target - DAY + SECOND


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
    # 13:00+02:00 is 11:00 UTC, an hour before NOW: passed by more than the grace.
    target = datetime.datetime(
        2026, 3, 10, 13, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    assert [p.status for p in plan_sends(target, [DAY], NOW, grace=GRACE)] == [EXPIRED]
    # 14:00+02:00 is 12:00 UTC: now, sent now.
    now_elsewhere = target + datetime.timedelta(hours=1)
    assert [p.status for p in plan_sends(now_elsewhere, [DAY], NOW, grace=GRACE)] == [PENDING]
