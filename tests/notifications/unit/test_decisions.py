"""The delivery's decisions, without a database: what an attempt comes to, when a retry goes,
whether a reminder is still in time, and what becomes of the jobs a batch took along."""

from __future__ import annotations

import datetime

import pytest

from notifier.channels.base import DeliveryError, DeliveryReceipt
from notifier.notifications.decisions import (
    QuietWindow,
    RetryPolicy,
    Verdict,
    judge_attempt,
    outside_quiet_hours,
    retry_delay,
    settle_jobs_taken_along,
    too_late,
)
from notifier.notifications.localtime import QuietHours
from notifier.notifications.schemas import AttemptOutcome, NotificationStatus

NOW = datetime.datetime(2026, 3, 2, 12, 0, tzinfo=datetime.UTC)
POLICY = RetryPolicy(max_attempts=3, base_seconds=10.0, max_seconds=100.0)
NO_QUIET_HOURS = QuietWindow(None)
DAY = datetime.timedelta(days=1)


def judge(
    result: DeliveryReceipt | DeliveryError | str,
    attempt: int = 1,
    window: QuietWindow = NO_QUIET_HOURS,
) -> Verdict:
    return judge_attempt(result, attempt=attempt, policy=POLICY, window=window, now=NOW)


@pytest.mark.parametrize(
    ("target_date", "lead_time", "late"),
    [
        (None, DAY, False),
        (NOW + DAY, DAY, False),
        (NOW, DAY, True),
        (NOW - DAY, DAY, True),
        # Due at the target date itself: the date passing cannot make it late.
        (NOW - DAY, datetime.timedelta(0), False),
    ],
    ids=["no-target", "target-ahead", "target-now", "target-passed", "lead-time-zero"],
)
def test_a_reminder_is_too_late_once_its_target_date_passed(
    target_date: datetime.datetime | None, lead_time: datetime.timedelta, late: bool
) -> None:
    assert too_late(target_date, lead_time, NOW) is late


def test_an_accepted_send_is_delivered_and_sent() -> None:
    verdict = judge(DeliveryReceipt(status_code=202))

    assert verdict == Verdict(
        outcome=AttemptOutcome.DELIVERED, status=NotificationStatus.SENT, status_code=202
    )
    assert verdict.counted_as == "delivered"


def test_a_message_that_cannot_be_sent_fails_at_once() -> None:
    verdict = judge("recipient must be an absolute http:// or https:// URL", attempt=1)

    assert verdict.outcome is AttemptOutcome.FAILED
    assert verdict.status is NotificationStatus.FAILED
    assert verdict.error == "recipient must be an absolute http:// or https:// URL"
    assert verdict.retry_in_seconds is None
    assert verdict.counted_as == "failed"


def test_a_permanent_error_fails_whatever_attempts_are_left() -> None:
    verdict = judge(DeliveryError("receiver answered 400", retryable=False, status_code=400))

    assert verdict.outcome is AttemptOutcome.FAILED
    assert verdict.status is NotificationStatus.FAILED
    assert (verdict.status_code, verdict.error) == (400, "receiver answered 400")
    assert verdict.retry_in_seconds is None


def test_a_retryable_error_is_retried_with_backoff_until_the_last_attempt() -> None:
    error = DeliveryError("receiver answered 503", retryable=True, status_code=503)

    first, second = judge(error, attempt=1), judge(error, attempt=2)
    last = judge(error, attempt=POLICY.max_attempts)

    for verdict in (first, second):
        assert verdict.outcome is AttemptOutcome.RETRY
        assert verdict.status is None
        assert verdict.counted_as == "retry"
    # Equal jitter: between half the ceiling and the ceiling, base * 2^(attempt - 1).
    assert first.retry_in_seconds is not None
    assert 5.0 <= first.retry_in_seconds <= 10.0
    assert second.retry_in_seconds is not None
    assert 10.0 <= second.retry_in_seconds <= 20.0
    # Dead-lettered: the outcome recorded is a failure, the notification dead (replayable).
    assert last.outcome is AttemptOutcome.FAILED
    assert last.status is NotificationStatus.DEAD
    assert last.retry_in_seconds is None
    assert last.counted_as == "dead"
    assert (last.status_code, last.error) == (503, "receiver answered 503")


def test_a_retry_waits_for_retry_after_but_never_past_the_cap() -> None:
    assert retry_delay(POLICY, 1, retry_after=60.0) == 60.0
    assert retry_delay(POLICY, 1, retry_after=10_000.0) == POLICY.max_seconds
    assert retry_delay(POLICY, 20, retry_after=None) <= POLICY.max_seconds
    throttled = DeliveryError(
        "receiver answered 429", retryable=True, status_code=429, retry_after_seconds=60.0
    )
    assert judge(throttled).retry_in_seconds == 60.0


def test_a_retry_due_in_quiet_hours_waits_for_their_end() -> None:
    # 12:00 UTC is 21:00 in Tokyo: a retry a minute later falls in 21:00-08:00 there.
    window = QuietWindow(QuietHours(start="21:00", end="08:00"), "Asia/Tokyo")
    end = datetime.datetime(2026, 3, 2, 23, 0, tzinfo=datetime.UTC)  # 08:00 in Tokyo

    assert outside_quiet_hours(60.0, window, NOW) == (end - NOW).total_seconds()
    assert outside_quiet_hours(60.0, NO_QUIET_HOURS, NOW) == 60.0
    # Outside the window, nothing changes: 11 hours later is 08:00 in Tokyo.
    assert outside_quiet_hours(11 * 3600.0, window, NOW) == 11 * 3600.0
    throttled = DeliveryError("x", retryable=True, retry_after_seconds=60.0)
    assert judge(throttled, window=window).retry_in_seconds == (end - NOW).total_seconds()


def test_jobs_taken_along_finish_unless_retried_or_put_off() -> None:
    retried = judge(DeliveryError("x", retryable=True, retry_after_seconds=30.0))
    sent = judge(DeliveryReceipt(status_code=200))
    failed = judge("no template")

    settlement = settle_jobs_taken_along(
        # 14 was expired or suppressed: never attempted, its job is done all the same.
        [11, 12, 13, 14, 15],
        {11: sent, 12: retried, 13: None, 15: failed},
        NOW,
    )

    assert settlement.finished == [11, 14, 15]
    assert settlement.due_again == {12: NOW + datetime.timedelta(seconds=30)}
