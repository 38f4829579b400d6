"""Gauges read from PostgreSQL at scrape time, for the API's ``/metrics`` and ``/health/ready``.

A few cheap aggregates under a statement timeout, cached for ``NOTIFIER_METRICS_CACHE_SECONDS``
so that scrapes and probes from many sources cost one read per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import psycopg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifier.db import Connection, Pool
from notifier.notifications.schemas import NotificationStatus
from notifier.queue import ALL_QUEUES, jobs
from notifier.queue.jobs import QueueState
from notifier.settings import Settings
from notifier.telemetry import queries

logger = logging.getLogger("notifier.metrics")

T = TypeVar("T")


class _Cached(Generic[T]):
    """A value fetched at most once per ``ttl`` seconds, however many callers ask at once."""

    def __init__(self, ttl: float, fetch: Callable[[], Awaitable[T]]) -> None:
        self._ttl = ttl
        self._fetch = fetch
        self._lock = asyncio.Lock()
        self._value: T | None = None
        self._fetched_at = float("-inf")

    async def get(self) -> T:
        async with self._lock:
            if self._value is None or time.monotonic() - self._fetched_at >= self._ttl:
                self._value = await self._fetch()
                self._fetched_at = time.monotonic()
            return self._value


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """Live workers and each queue's due jobs, at one moment."""

    workers_alive: int
    queues: dict[str, QueueState]


class DatabaseStats(Collector):
    """Gauges read from PostgreSQL, for ``/metrics`` and ``/health/ready`` of the API."""

    def __init__(self, settings: Settings, pool: Pool) -> None:
        self._settings = settings
        self._pool = pool
        ttl = settings.metrics_cache_seconds
        self._queues = _Cached(ttl, self._read_queues)
        self._notifications = _Cached(ttl, self._read_notifications)
        self._last: tuple[QueueSnapshot, dict[str, int]] | None = None

    @property
    def timeout_seconds(self) -> float:
        """How long one read may take: well under a probe's or a scrape's own timeout."""
        return min(2.0, self._settings.database_timeout_seconds)

    async def _query(self, read: Callable[[Connection], Awaitable[T]]) -> T:
        timeout = self.timeout_seconds
        async with (
            asyncio.timeout(timeout),
            self._pool.connection(timeout=timeout) as conn,
            conn.transaction(),
        ):
            await queries.limit_statement_time(conn, timeout)
            return await read(conn)

    async def _read_queues(self) -> QueueSnapshot:
        async def read(conn: Connection) -> QueueSnapshot:
            return QueueSnapshot(
                workers_alive=await jobs.live_workers(
                    conn, heartbeat_within_seconds=self._settings.stalled_worker_seconds
                ),
                queues=await jobs.queue_states(conn),
            )

        return await self._query(read)

    async def _read_notifications(self) -> dict[str, int]:
        return await self._query(queries.notification_counts)

    async def queue_snapshot(self) -> QueueSnapshot:
        """Live workers and due jobs per queue (cached). Raises if the database fails."""
        return await self._queues.get()

    async def refresh(self) -> None:
        """Read what the next :meth:`collect` reports; on failure it reports nothing stale."""
        try:
            self._last = (await self.queue_snapshot(), await self._notifications.get())
        except (psycopg.Error, TimeoutError) as exc:
            logger.warning("metrics: could not read the database: %s", type(exc).__name__)
            self._last = None

    def collect(self) -> Iterable[Metric]:
        """The gauges of the last :meth:`refresh`."""
        up = GaugeMetricFamily(
            "notifier_metrics_database_up",
            "1 if the gauges read from PostgreSQL were read at this scrape, 0 if not.",
            value=0 if self._last is None else 1,
        )
        yield up
        if self._last is None:
            return
        snapshot, notifications = self._last
        by_status = GaugeMetricFamily(
            "notifier_notifications", "Notifications by status.", labels=["status"]
        )
        # Every status, zeros included, so an alert on "dead" has a series to watch.
        for status in NotificationStatus:
            by_status.add_metric([status.value], notifications.get(status.value, 0))
        yield by_status
        depth = GaugeMetricFamily(
            "notifier_queue_depth", "Jobs due now and still waiting, per queue.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "notifier_queue_oldest_due_job_age_seconds",
            "How long the longest-waiting due job of the queue has waited (0 when none).",
            labels=["queue"],
        )
        for queue in sorted(set(ALL_QUEUES) | set(snapshot.queues)):
            state = snapshot.queues.get(queue, QueueState(due_jobs=0, oldest_due_seconds=0.0))
            depth.add_metric([queue], state.due_jobs)
            age.add_metric([queue], state.oldest_due_seconds)
        yield depth
        yield age
        yield GaugeMetricFamily(
            "notifier_workers_alive",
            "Workers whose heartbeat is within NOTIFIER_STALLED_WORKER_SECONDS.",
            value=snapshot.workers_alive,
        )
