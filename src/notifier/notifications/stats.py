"""A tenant's recent deliveries: attempts per minute by outcome, and the delivery lag.

What the dashboard's overview charts, kept free of it (and of HTTP). Functions take a
connection and never commit; every read names the tenant.

- Attempts come from ``delivery_attempts`` by ``(tenant_id, finished_at)`` (migration 0013):
  one index-only range scan over the window.
- Lag is how late a notification went out: ``finished_at - due_at`` of the delivered
  attempts in the window (the time its delivery was answered, against the time it was due),
  read from the same index as the attempts (migration 0021: the notifications keep no
  index of their own for it, one entry less per delivery). Percentiles come
  from a histogram with logarithmic bins (``LAG_BINS_PER_E`` per factor e, so a bin is 13%
  wide and a percentile is within 7% of the exact one): PostgreSQL counts per bin in a hash
  table instead of sorting every lag of the day (60 ms instead of 100 for 200,000).

Both reads cost in proportion to the tenant's deliveries in the last day (docs/ui.md).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from notifier.db import Connection

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
MINUTE = datetime.timedelta(minutes=1)
# The day's charts: one bar per quarter hour (96), each the mean rate per minute.
DAY_BUCKET = datetime.timedelta(minutes=15)
# Histogram resolution of lags: bin k holds lags in [e^(k/8), e^((k+1)/8)) milliseconds;
# bin 0 also holds every lag under a millisecond.
LAG_BINS_PER_E = 8
OUTCOMES = ("delivered", "retry", "failed")


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    """Attempts of one period by outcome."""

    delivered: int = 0
    retry: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        """Every attempt of the period."""
        return self.delivered + self.retry + self.failed

    def __add__(self, other: OutcomeCounts) -> OutcomeCounts:
        return OutcomeCounts(
            self.delivered + other.delivered, self.retry + other.retry, self.failed + other.failed
        )


# Lag histogram: bin -> notifications.
Histogram = Mapping[int, int]


@dataclass(frozen=True, slots=True)
class LagSummary:
    """Lags of one period: how many, and their median and 95th percentile (None: no lags)."""

    count: int
    p50_seconds: float | None
    p95_seconds: float | None


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One window (the last hour, or day) in buckets of ``bucket``, oldest first."""

    bucket: datetime.timedelta
    starts: list[datetime.datetime]
    attempts: list[OutcomeCounts]
    lags: list[LagSummary]
    total_attempts: OutcomeCounts
    total_lag: LagSummary

    @property
    def bucket_minutes(self) -> float:
        """Minutes per bucket: an attempts count divided by it is a rate per minute."""
        return self.bucket / MINUTE


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """The tenant's last hour (by minute) and last day (by quarter hour), until ``now``."""

    now: datetime.datetime
    hour: WindowStats
    day: WindowStats


def lag_bin(seconds: float) -> int:
    """The histogram bin of a lag, as the SQL of :func:`lag_histograms` computes it."""
    return math.floor(math.log(max(seconds * 1000.0, 1.0)) * LAG_BINS_PER_E)


def bin_seconds(lag_bin_index: int) -> float:
    """A bin's representative lag: the geometric middle of its bounds, in seconds."""
    return math.exp((lag_bin_index + 0.5) / LAG_BINS_PER_E) / 1000.0


def percentile(histogram: Histogram, q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) of a lag histogram, in seconds; None when empty.

    The nearest-rank percentile: the bin holding the ``ceil(q * n)``-th smallest lag.
    """
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bin_seconds(index)
    raise AssertionError("unreachable: the ranks are within the total")


def summarise(histogram: Histogram) -> LagSummary:
    """Count, p50 and p95 of one histogram."""
    return LagSummary(
        count=sum(histogram.values()),
        p50_seconds=percentile(histogram, 0.50),
        p95_seconds=percentile(histogram, 0.95),
    )


def merge(histograms: Iterable[Histogram]) -> dict[int, int]:
    """One histogram of all the lags of several."""
    merged: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            merged[index] = merged.get(index, 0) + count
    return merged


async def attempts_per_minute(
    conn: Connection, tenant_id: str, since: datetime.datetime
) -> dict[datetime.datetime, OutcomeCounts]:
    """The tenant's delivery attempts since ``since``, per minute (minutes with none absent)."""
    cursor = await conn.execute(
        """
        SELECT date_trunc('minute', finished_at) AS minute, outcome, count(*) AS n
        FROM notifier.delivery_attempts
        WHERE tenant_id = %(tenant)s AND finished_at >= %(since)s
        GROUP BY 1, 2
        """,
        {"tenant": tenant_id, "since": since},
    )
    per_minute: dict[datetime.datetime, dict[str, int]] = {}
    for row in await cursor.fetchall():
        per_minute.setdefault(row["minute"], {})[row["outcome"]] = int(row["n"])
    return {minute: OutcomeCounts(**counts) for minute, counts in per_minute.items()}


async def lag_histograms(
    conn: Connection,
    tenant_id: str,
    since: datetime.datetime,
    bucket: datetime.timedelta,
) -> dict[datetime.datetime, dict[int, int]]:
    """Lag histograms of the tenant's notifications sent since ``since``, per ``bucket``
    (aligned on ``since``; buckets with none absent)."""
    cursor = await conn.execute(
        """
        SELECT date_bin(%(bucket)s, finished_at, %(since)s) AS start,
               floor(ln(greatest(date_part('epoch', finished_at - due_at) * 1000, 1))
                     * %(bins)s)::integer AS bin,
               count(*) AS n
        FROM notifier.delivery_attempts
        WHERE tenant_id = %(tenant)s AND finished_at >= %(since)s AND outcome = 'delivered'
        GROUP BY 1, 2
        """,
        {"tenant": tenant_id, "since": since, "bucket": bucket, "bins": LAG_BINS_PER_E},
    )
    histograms: dict[datetime.datetime, dict[int, int]] = {}
    for row in await cursor.fetchall():
        histograms.setdefault(row["start"], {})[row["bin"]] = int(row["n"])
    return histograms


def _window(
    now: datetime.datetime,
    bucket: datetime.timedelta,
    buckets: int,
    per_minute: Mapping[datetime.datetime, OutcomeCounts],
    lags: Mapping[datetime.datetime, Histogram],
) -> WindowStats:
    """``buckets`` buckets ending with the one holding ``now``; attempts summed per bucket."""
    first = floor(now, bucket) - (buckets - 1) * bucket
    starts = [first + i * bucket for i in range(buckets)]
    attempts = [OutcomeCounts()] * buckets
    for minute, counts in per_minute.items():
        index = (minute - first) // bucket
        if 0 <= index < buckets:
            attempts[index] = attempts[index] + counts
    histograms = [lags.get(start, {}) for start in starts]
    return WindowStats(
        bucket=bucket,
        starts=starts,
        attempts=attempts,
        lags=[summarise(h) for h in histograms],
        total_attempts=sum(attempts, OutcomeCounts()),
        total_lag=summarise(merge(histograms)),
    )


def regroup(
    histograms: Mapping[datetime.datetime, Histogram], bucket: datetime.timedelta
) -> dict[datetime.datetime, dict[int, int]]:
    """Histograms of shorter periods (minutes) merged into ``bucket``s, each keyed by its
    start (a multiple of ``bucket`` since the Unix epoch, as :func:`windows` aligns them)."""
    grouped: dict[datetime.datetime, list[Histogram]] = {}
    for start, histogram in histograms.items():
        grouped.setdefault(floor(start, bucket), []).append(histogram)
    return {start: merge(parts) for start, parts in grouped.items()}


def floor(moment: datetime.datetime, step: datetime.timedelta) -> datetime.datetime:
    """``moment`` rounded down to a multiple of ``step`` since the Unix epoch."""
    epoch = datetime.datetime(1970, 1, 1, tzinfo=moment.tzinfo or datetime.UTC)
    return epoch + ((moment - epoch) // step) * step


def windows(now: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime]:
    """Where the day's and the hour's charts start: 96 quarter hours and 60 minutes, each
    ending with the bucket that holds ``now``."""
    day_since = floor(now, DAY_BUCKET) - (DAY // DAY_BUCKET - 1) * DAY_BUCKET
    hour_since = floor(now, MINUTE) - (HOUR // MINUTE - 1) * MINUTE
    return day_since, hour_since


def build(
    now: datetime.datetime,
    per_minute: Mapping[datetime.datetime, OutcomeCounts],
    day_lags: Mapping[datetime.datetime, Histogram],
    hour_lags: Mapping[datetime.datetime, Histogram],
) -> DeliveryStats:
    """The statistics from the three reads, whose windows :func:`windows` gave."""
    return DeliveryStats(
        now=now,
        hour=_window(now, MINUTE, HOUR // MINUTE, per_minute, hour_lags),
        day=_window(now, DAY_BUCKET, DAY // DAY_BUCKET, per_minute, day_lags),
    )


async def no_jit(conn: Connection) -> None:
    """Turn JIT compilation off for the rest of the transaction: these reads are estimated
    costly enough for PostgreSQL to compile them, which took longer (40 ms) than it saved."""
    await conn.execute("SELECT set_config('jit', 'off', true)")


async def delivery_stats(conn: Connection, tenant_id: str, now: datetime.datetime) -> DeliveryStats:
    """The tenant's last hour by minute and last day by quarter hour, until ``now``: the
    three reads one after the other (callers in a hurry run them on three connections)."""
    day_since, hour_since = windows(now)
    return build(
        now,
        await attempts_per_minute(conn, tenant_id, day_since),
        await lag_histograms(conn, tenant_id, day_since, DAY_BUCKET),
        await lag_histograms(conn, tenant_id, hour_since, MINUTE),
    )
