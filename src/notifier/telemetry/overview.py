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
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

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


T = TypeVar("T")

# A quarter hour's attempts and lags are kept once this long has passed since it ended. A
# delivery batch stamps its attempts' ``finished_at`` (their lag's end too) after its sends
# and commits with the rest of the batch's settling: five minutes leave room for the
# slowest, and a full read every ``refresh`` mends any it missed.
SETTLED_AFTER = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class _Settled:
    """One tenant's deliveries before ``until`` (a quarter hour's start): attempts per
    minute, lag histograms per quarter hour (the day's chart) and per minute (the hour's)."""

    read_at: datetime.datetime
    until: datetime.datetime
    attempts: dict[datetime.datetime, stats.OutcomeCounts]
    day_lags: dict[datetime.datetime, dict[int, int]]
    minute_lags: dict[datetime.datetime, dict[int, int]]


class DeliveryHistory:
    """Per tenant, what the overview read of the last day's settled quarter hours, for the
    ``tenants`` that asked last; each read afresh every ``refresh``."""

    def __init__(
        self, *, tenants: int = 200, refresh: datetime.timedelta = datetime.timedelta(minutes=15)
    ) -> None:
        self.tenants = tenants
        self.refresh = refresh
        self._by_tenant: OrderedDict[str, _Settled] = OrderedDict()
        # Requests of one process share it; the event loop is one thread, but a test or an
        # embedding may call from others.
        self._lock = threading.Lock()

    def settled(self, tenant_id: str, now: datetime.datetime) -> _Settled | None:
        """What is kept of the tenant, unless it is due for a full read."""
        with self._lock:
            kept = self._by_tenant.get(tenant_id)
            if kept is None or not kept.read_at <= now < kept.read_at + self.refresh:
                return None
            self._by_tenant.move_to_end(tenant_id)
            return kept

    def keep(self, tenant_id: str, settled: _Settled) -> None:
        with self._lock:
            self._by_tenant[tenant_id] = settled
            self._by_tenant.move_to_end(tenant_id)
            while len(self._by_tenant) > self.tenants:
                self._by_tenant.popitem(last=False)


def _within(
    periods: Mapping[datetime.datetime, T], since: datetime.datetime, until: datetime.datetime
) -> dict[datetime.datetime, T]:
    return {start: value for start, value in periods.items() if since <= start < until}


@dataclass(frozen=True, slots=True)
class Overview:
    """What the overview shows; ``queues`` lists every known queue, idle ones included."""

    tenant_id: str
    workers_alive: int
    queues: dict[str, TenantQueueState]
    deliveries: DeliveryStats
    overdue_after_seconds: float


async def read_overview(
    pool: Pool,
    settings: Settings,
    tenant_id: str,
    now: datetime.datetime | None = None,
    history: DeliveryHistory | None = None,
) -> Overview:
    """The tenant's queues and deliveries, and the live workers (shared by all tenants).
    With ``history``, only the deliveries since what it kept are read from the database."""
    now = now or datetime.datetime.now(datetime.UTC)
    day_since, hour_since = stats.windows(now)
    kept = history.settled(tenant_id, now) if history is not None else None
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
            since = kept.until if kept is not None else day_since
            return await stats.attempts_per_minute(conn, tenant_id, since)

    async def lags_part() -> tuple[dict[datetime.datetime, dict[int, int]], ...]:
        async with reading() as conn:
            if kept is not None:
                # The minutes since: the hour's chart, and regrouped, the day's end.
                minutes = await stats.lag_histograms(conn, tenant_id, kept.until, stats.MINUTE)
                return stats.regroup(minutes, stats.DAY_BUCKET), minutes
            return (
                await stats.lag_histograms(conn, tenant_id, day_since, stats.DAY_BUCKET),
                await stats.lag_histograms(conn, tenant_id, hour_since, stats.MINUTE),
            )

    (queues, workers), fresh_attempts, (fresh_day, fresh_minutes) = await asyncio.gather(
        queue_part(), attempts_part(), lags_part()
    )
    per_minute = {**(kept.attempts if kept else {}), **fresh_attempts}
    day_lags = {**(kept.day_lags if kept else {}), **fresh_day}
    minute_lags = {**(kept.minute_lags if kept else {}), **fresh_minutes}
    if history is not None:
        until = stats.floor(now - SETTLED_AFTER, stats.DAY_BUCKET)
        if kept is not None:
            until = max(until, kept.until)
        history.keep(
            tenant_id,
            _Settled(
                read_at=kept.read_at if kept is not None else now,
                until=until,
                attempts=_within(per_minute, day_since, until),
                day_lags=_within(day_lags, day_since, until),
                minute_lags=_within(minute_lags, hour_since, until),
            ),
        )
    return Overview(
        tenant_id=tenant_id,
        workers_alive=workers,
        queues={name: queues.get(name, IDLE_QUEUE) for name in sorted({*ALL_QUEUES, *queues})},
        deliveries=stats.build(now, per_minute, day_lags, minute_lags),
        overdue_after_seconds=settings.overdue_job_seconds,
    )
