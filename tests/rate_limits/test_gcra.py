"""The GCRA decision: how many sends conform in any window, and when the rest come back."""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.rate_limits.gcra import (
    MAX_BURST,
    MAX_PER_SECOND,
    MAX_WAIT,
    MIN_PER_SECOND,
    Bucket,
    Limit,
    decide,
)

T0 = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
SECOND = datetime.timedelta(seconds=1)


def fresh() -> Bucket:
    return Bucket(tat=T0, queue_tat=T0)


def test_the_first_send_goes_and_the_next_waits_one_interval() -> None:
    limit = Limit(per_second=5)
    first = decide(T0, fresh(), limit)
    second = decide(T0, first.bucket, limit)

    assert first.allowed
    assert not second.allowed
    assert math.isclose(second.wait_seconds, 0.2)


def test_a_burst_goes_back_to_back_then_the_rate_applies() -> None:
    limit = Limit(per_second=2, burst=3)
    bucket = fresh()
    outcomes = []
    for _ in range(4):
        decision = decide(T0, bucket, limit)
        bucket = decision.bucket
        outcomes.append(decision.allowed)
    assert outcomes == [True, True, True, False]


def test_waiting_sends_are_handed_out_one_interval_apart() -> None:
    limit = Limit(per_second=4)
    bucket = decide(T0, fresh(), limit).bucket
    waits = []
    for _ in range(4):
        decision = decide(T0, bucket, limit)
        bucket = decision.bucket
        waits.append(round(decision.wait_seconds, 6))
    assert waits == [0.25, 0.5, 0.75, 1.0]


def test_a_send_at_its_handed_out_time_conforms() -> None:
    limit = Limit(per_second=4)
    bucket = decide(T0, fresh(), limit).bucket
    waiting = decide(T0, bucket, limit)

    later = T0 + datetime.timedelta(seconds=waiting.wait_seconds)
    assert decide(later, waiting.bucket, limit).allowed


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=5_000_000), min_size=1, max_size=200),
    per_second=st.sampled_from([0.5, 1.0, 3.0, 5.0, 10.0, 100.0]),
    burst=st.integers(min_value=1, max_value=5),
    window=st.sampled_from([0.5, 1.0, 2.5]),
)
def test_no_window_holds_more_than_its_share_plus_the_burst(
    offsets: list[int], per_second: float, burst: int, window: float
) -> None:
    """Requests at arbitrary times (microseconds): conforming ones never exceed
    ``ceil(window * per_second) + burst - 1`` in any half-open window."""
    limit = Limit(per_second=per_second, burst=burst)
    bucket = fresh()
    sent = []
    for offset in sorted(offsets):
        now = T0 + datetime.timedelta(microseconds=offset)
        decision = decide(now, bucket, limit)
        bucket = decision.bucket
        if decision.allowed:
            sent.append(now)
        else:
            assert decision.wait_seconds > 0

    most = math.ceil(window * per_second) + burst - 1
    span = datetime.timedelta(seconds=window)
    for i, start in enumerate(sent):
        assert sum(1 for t in sent[i:] if t < start + span) <= most


@pytest.mark.parametrize(
    ("per_second", "burst"),
    [(1e-300, 1), (0.0, 1), (-1.0, 1), (MIN_PER_SECOND / 2, 1), (MAX_PER_SECOND * 2, 1), (1, 0)],
)
def test_no_limit_outside_the_bounds_can_be_made(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError, match="between"):
        Limit(per_second=per_second, burst=burst)


@settings(max_examples=300, deadline=None)
@given(
    per_second=st.floats(min_value=MIN_PER_SECOND, max_value=MAX_PER_SECOND),
    burst=st.integers(min_value=1, max_value=MAX_BURST),
    tat_ahead=st.floats(min_value=-1e9, max_value=1e10),
    queue_ahead=st.floats(min_value=-1e9, max_value=1e11),
    requests=st.integers(min_value=1, max_value=5),
)
def test_any_limit_within_the_bounds_decides_from_any_stored_state(
    per_second: float, burst: int, tat_ahead: float, queue_ahead: float, requests: int
) -> None:
    """No OverflowError, and never a retry time beyond the horizon, whatever the bucket
    holds (up to centuries ahead) and at the extremes of the bounds."""
    limit = Limit(per_second=per_second, burst=burst)
    bucket = Bucket(
        tat=T0 + datetime.timedelta(seconds=tat_ahead),
        queue_tat=T0 + datetime.timedelta(seconds=queue_ahead),
    )
    for _ in range(requests):
        decision = decide(T0, bucket, limit)
        bucket = decision.bucket
        assert 0 <= decision.wait_seconds <= MAX_WAIT.total_seconds()


def test_the_slowest_rate_sends_once_then_hands_out_a_slot_an_interval_later() -> None:
    limit = Limit(per_second=MIN_PER_SECOND)
    first = decide(T0, fresh(), limit)
    second = decide(T0, first.bucket, limit)

    assert first.allowed
    assert math.isclose(second.wait_seconds, 1 / MIN_PER_SECOND)
