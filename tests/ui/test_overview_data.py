"""The overview's numbers: tenant-scoped, from real rows; percentiles and charts by hand."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg

from notifier.notifications import queries, stats
from notifier.notifications.schemas import AttemptOutcome
from notifier.services import Services
from notifier.telemetry.overview import DeliveryHistory, read_overview
from notifier.ui import charts

NOW = datetime.datetime(2026, 12, 7, 10, 30, 20, tzinfo=datetime.UTC)


async def _delivered(
    db: psycopg.AsyncConnection[Any],
    tenant: str,
    lag_ms: int,
    outcomes: list[str],
    ago: datetime.timedelta = datetime.timedelta(minutes=1),
) -> None:
    """A notification of ``tenant`` sent ``lag_ms`` late ``ago``, with attempts."""
    await db.execute(
        "INSERT INTO notifier.tenants (id, name) VALUES (%s, '') ON CONFLICT DO NOTHING",
        [tenant],
    )
    row = await (
        await db.execute(
            """
            INSERT INTO notifier.notifications (tenant_id, notification_type, channel, recipient,
                send_at, status, sent_at)
            VALUES (%(t)s, 'x', 'log', 'r', now() - %(ago)s - %(lag)s, 'sent', now() - %(ago)s)
            RETURNING id
            """,
            {"t": tenant, "lag": datetime.timedelta(milliseconds=lag_ms), "ago": ago},
        )
    ).fetchone()
    assert row is not None
    lag = datetime.timedelta(milliseconds=lag_ms)
    for attempt, outcome in enumerate(outcomes, 1):
        await db.execute(
            """
            INSERT INTO notifier.delivery_attempts (notification_id, tenant_id, attempt, channel,
                outcome, started_at, finished_at, due_at)
            VALUES (%s, %s, %s, 'log', %s, now() - %s, now() - %s,
                    CASE WHEN %s = 'delivered' THEN now() - %s - %s END)
            """,
            [row["id"], tenant, attempt, outcome, ago, ago, outcome, ago, lag],
        )


async def test_the_overview_counts_only_the_tenants_own_deliveries_and_jobs(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    await _delivered(db, "default", 200, ["retry", "delivered"])
    await _delivered(db, "default", 4000, ["delivered"])
    await _delivered(db, "acme", 50, ["failed", "failed", "failed"])
    # A due job of each tenant, and one of acme's overdue.
    await db.execute(
        """
        INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at)
        VALUES ('deliveries', 'notifier.deliver', '{"tenant_id": "default"}', now()),
               ('deliveries', 'notifier.deliver', '{"tenant_id": "acme"}', now()),
               ('deliveries', 'notifier.deliver', '{"tenant_id": "acme"}',
                now() - interval '10 minutes'),
               ('deliveries', 'notifier.deliver', '{"tenant_id": "acme"}', now() + interval '1 day')
        """
    )

    mine = await read_overview(services.pool, services.settings, "default")
    theirs = await read_overview(services.pool, services.settings, "acme")

    assert mine.deliveries.hour.total_attempts == stats.OutcomeCounts(2, 1, 0)
    assert mine.deliveries.day.total_attempts == stats.OutcomeCounts(2, 1, 0)
    assert mine.deliveries.hour.total_lag.count == 2
    assert theirs.deliveries.hour.total_attempts == stats.OutcomeCounts(0, 0, 3)
    p95 = mine.deliveries.day.total_lag.p95_seconds
    assert p95 is not None
    assert abs(p95 - 4.0) / 4.0 < 0.07
    assert mine.queues["deliveries"].due_jobs == 1
    assert mine.queues["deliveries"].overdue_jobs == 0
    assert theirs.queues["deliveries"].due_jobs == 2
    assert theirs.queues["deliveries"].overdue_jobs == 1
    assert theirs.queues["deliveries"].oldest_due_seconds >= 600
    assert set(mine.queues) >= {"events", "deliveries", "maintenance"}


async def test_the_overview_reads_again_only_the_minutes_it_has_not_kept(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    history = DeliveryHistory()
    await _delivered(db, "default", 200, ["delivered"], ago=datetime.timedelta(minutes=30))
    first = await read_overview(services.pool, services.settings, "default", history=history)
    assert first.deliveries.day.total_attempts == stats.OutcomeCounts(1, 0, 0)

    # Written after the fact into a settled minute (no delivery does that): the kept
    # minutes are not read again, while the last minutes are.
    await _delivered(db, "default", 200, ["failed"], ago=datetime.timedelta(minutes=20))
    await _delivered(db, "default", 4000, ["retry", "delivered"])
    second = await read_overview(services.pool, services.settings, "default", history=history)
    assert second.deliveries.day.total_attempts == stats.OutcomeCounts(2, 1, 0)
    assert second.deliveries.hour.total_lag.count == 2
    p95 = second.deliveries.day.total_lag.p95_seconds
    assert p95 is not None
    assert abs(p95 - 4.0) / 4.0 < 0.07

    # Another tenant's history is its own, and a history due for refresh reads it all.
    fresh = DeliveryHistory(refresh=datetime.timedelta(0))
    await read_overview(services.pool, services.settings, "default", history=fresh)
    third = await read_overview(services.pool, services.settings, "default", history=fresh)
    assert third.deliveries.day.total_attempts == stats.OutcomeCounts(2, 1, 1)
    acme = await read_overview(services.pool, services.settings, "acme", history=history)
    assert acme.deliveries.day.total_attempts == stats.OutcomeCounts(0, 0, 0)


async def test_a_delivery_writes_its_tenant_on_the_attempt(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    """The column the charts read is written by the delivery itself (migration 0013)."""
    await _delivered(db, "acme", 10, [])
    row = await (
        await db.execute("SELECT id FROM notifier.notifications WHERE tenant_id = 'acme'")
    ).fetchone()
    assert row is not None
    async with services.pool.connection() as conn, conn.transaction():
        await queries.record_attempts(
            conn,
            [
                queries.AttemptRecord(
                    notification_id=row["id"],
                    attempt=1,
                    job_id=None,
                    channel="log",
                    outcome=AttemptOutcome.DELIVERED,
                    started_at=datetime.datetime.now(datetime.UTC),
                    status_code=None,
                    error=None,
                    status=None,
                )
            ],
        )

    attempt = await (
        await db.execute("SELECT tenant_id FROM notifier.delivery_attempts")
    ).fetchone()
    assert attempt == {"tenant_id": "acme"}


def test_percentiles_of_a_histogram_are_within_a_bin_of_the_exact_ones() -> None:
    lags = [0.0005, 0.01, 0.2, 0.2, 0.3, 1.5, 2.0, 9.0, 30.0, 120.0]
    histogram: dict[int, int] = {}
    for lag in lags:
        histogram[stats.lag_bin(lag)] = histogram.get(stats.lag_bin(lag), 0) + 1

    p50 = stats.percentile(histogram, 0.5)
    p95 = stats.percentile(histogram, 0.95)

    assert p50 is not None
    assert p95 is not None
    assert abs(p50 - 0.3) / 0.3 < 0.07  # 5th of 10
    assert abs(p95 - 120.0) / 120.0 < 0.07  # 10th of 10
    assert stats.percentile({}, 0.5) is None


def test_windows_end_with_the_bucket_holding_now() -> None:
    day_since, hour_since = stats.windows(NOW)
    built = stats.build(NOW, {NOW.replace(second=0): stats.OutcomeCounts(3, 0, 1)}, {}, {})

    assert hour_since == datetime.datetime(2026, 12, 7, 9, 31, tzinfo=datetime.UTC)
    assert day_since == datetime.datetime(2026, 12, 6, 10, 45, tzinfo=datetime.UTC)
    assert len(built.hour.starts) == 60
    assert len(built.day.starts) == 96
    assert built.hour.attempts[-1] == stats.OutcomeCounts(3, 0, 1)
    assert built.day.attempts[-1] == stats.OutcomeCounts(3, 0, 1)
    assert built.day.bucket_minutes == 15


def test_charts_are_labelled_svg_scaled_to_a_round_maximum() -> None:
    starts = [NOW + datetime.timedelta(minutes=i) for i in range(3)]

    svg = charts.stacked_bars(
        "c",
        "Attempts",
        starts,
        [
            charts.Series("Delivered", "delivered", [1, 3, 0]),
            charts.Series("F", "failed", [0, 4, 0]),
        ],
        x_labels_every=1,
        describe=lambda: "seven in all",
    )

    assert svg.startswith('<svg class="chart" role="img"')
    assert 'aria-labelledby="c-title c-desc"' in svg
    assert '<desc id="c-desc">seven in all</desc>' in svg
    assert svg.count("<rect") == 3  # no bar for zeros
    assert ">8/min</text>" in svg  # 7 rounds up to four steps of 2
    assert charts.nice_ceiling(0.0) == 0.25
    assert charts.nice_ceiling(230) == 250
    assert charts.nice_ceiling(0.031) == 0.05
