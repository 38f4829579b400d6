"""One tenant's view of the service right now: its queues, the workers, its deliveries.

The use case behind the dashboard's overview page (and anything else that wants the same
picture). Its reads are independent of each other and run at once, each in a short
read-only transaction of its own under a statement timeout: the day's attempts and the
day's lags each scan a day of the tenant's deliveries (docs/ui.md), so side by side they
take the time of the slower, not the sum.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from notifier.db import Connection, Pool, transaction
from notifier.notifications import stats
from notifier.notifications.stats import DeliveryStats
from notifier.queue import ALL_QUEUES, jobs
from notifier.queue.jobs import TenantQueueState
from notifier.settings import Settings
from notifier.telemetry import queries

# A read of the overview that takes longer than this is cancelled (an error page): the
# page must answer, not pile up queries on a struggling database.
OVERVIEW_TIMEOUT_SECONDS = 5.0

IDLE_QUEUE = TenantQueueState(
    due_jobs=0, overdue_jobs=0, running_jobs=0, oldest_due_seconds=0.0, capped=False
)


@dataclass(frozen=True, slots=True)
class Overview:
    """What the overview shows; ``queues`` lists every known queue, idle ones included."""

    tenant_id: str
    workers_alive: int
    queues: dict[str, TenantQueueState]
    deliveries: DeliveryStats
    overdue_after_seconds: float


async def read_overview(
    pool: Pool, settings: Settings, tenant_id: str, now: datetime.datetime | None = None
) -> Overview:
    """The tenant's queues and deliveries, and the live workers (shared by all tenants)."""
    now = now or datetime.datetime.now(datetime.UTC)
    day_since, hour_since = stats.windows(now)
    timeout = min(OVERVIEW_TIMEOUT_SECONDS, settings.database_timeout_seconds)

    @asynccontextmanager
    async def reading() -> AsyncIterator[Connection]:
        async with transaction(pool) as conn:
            await conn.execute("SET TRANSACTION READ ONLY")
            await queries.limit_statement_time(conn, timeout)
            await stats.no_jit(conn)
            yield conn

    async def queue_part() -> tuple[dict[str, TenantQueueState], int]:
        async with reading() as conn:
            return (
                await jobs.tenant_queue_states(
                    conn, tenant_id, overdue_seconds=settings.overdue_job_seconds
                ),
                await jobs.live_workers(
                    conn, heartbeat_within_seconds=settings.stalled_worker_seconds
                ),
            )

    async def attempts_part() -> dict[datetime.datetime, stats.OutcomeCounts]:
        async with reading() as conn:
            return await stats.attempts_per_minute(conn, tenant_id, day_since)

    async def lags_part() -> tuple[dict[datetime.datetime, dict[int, int]], ...]:
        async with reading() as conn:
            return (
                await stats.lag_histograms(conn, tenant_id, day_since, stats.DAY_BUCKET),
                await stats.lag_histograms(conn, tenant_id, hour_since, stats.MINUTE),
            )

    (queues, workers), per_minute, (day_lags, hour_lags) = await asyncio.gather(
        queue_part(), attempts_part(), lags_part()
    )
    return Overview(
        tenant_id=tenant_id,
        workers_alive=workers,
        queues={name: queues.get(name, IDLE_QUEUE) for name in sorted({*ALL_QUEUES, *queues})},
        deliveries=stats.build(now, per_minute, day_lags, hour_lags),
        overdue_after_seconds=settings.overdue_job_seconds,
    )
