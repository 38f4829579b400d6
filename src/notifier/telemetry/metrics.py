"""Prometheus metrics: what each process counts, and gauges read from PostgreSQL.

Two kinds, because the work happens in several processes:

- Counters and the latency histogram live in the process that does the work (the API counts
  the events it accepts, a worker the deliveries it attempts). Each process has its own
  registry; workers serve theirs on ``NOTIFIER_WORKER_METRICS_PORT``, the API on ``/metrics``.
  Prometheus sums them across processes.
- The state of the system (notifications by status, queue depth and age, live workers) is
  the same seen from anywhere: the API reads it from PostgreSQL at scrape time, a few cheap
  aggregates under a statement timeout, cached for ``NOTIFIER_METRICS_CACHE_SECONDS``.
  Workers do not export it, so it is never counted once per worker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifier.db import Connection, Pool
from notifier.queue import ALL_QUEUES
from notifier.settings import Settings
from notifier.telemetry import queries
from notifier.telemetry.queries import QueueState

logger = logging.getLogger("notifier.metrics")

# Event types are chosen by producers: the first this many get a label of their own in a
# process, later ones are counted as "other", so a producer inventing types cannot grow
# the series without bound.
MAX_EVENT_TYPE_LABELS = 100
OTHER_EVENT_TYPE = "other"
# From scheduled time to sent: seconds when all is well, hours when retries back off.
DELIVERY_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)


class Metrics:
    """One process's registry and the counters its work increments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_received = Counter(
            "notifier_events_received",
            "Events accepted, by type and producer (api: REST, sql: the outbox table).",
            ["type", "producer"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "notifier_deliveries",
            "Delivery attempts by channel and outcome (delivered, retry, failed, dead).",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.delivery_lag = Histogram(
            "notifier_delivery_lag_seconds",
            "From a notification's scheduled send time to a channel accepting it.",
            buckets=DELIVERY_LAG_BUCKETS,
            registry=self.registry,
        )
        self._event_types: set[str] = set()
        self._lock = threading.Lock()

    def count_event(self, event_type: str, producer: str) -> None:
        """Count one accepted event."""
        with self._lock:
            if event_type not in self._event_types:
                if len(self._event_types) >= MAX_EVENT_TYPE_LABELS:
                    event_type = OTHER_EVENT_TYPE
                else:
                    self._event_types.add(event_type)
        self.events_received.labels(type=event_type, producer=producer).inc()

    def count_delivery(self, channel: str, outcome: str, lag_seconds: float | None = None) -> None:
        """Count one delivery attempt; a successful one also records its lag."""
        self.deliveries.labels(channel=channel, outcome=outcome).inc()
        if lag_seconds is not None:
            self.delivery_lag.observe(max(0.0, lag_seconds))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


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
                workers_alive=await queries.live_workers(
                    conn, heartbeat_within_seconds=self._settings.stalled_worker_seconds
                ),
                queues=await queries.queue_states(conn),
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
        for status, count in sorted(notifications.items()):
            by_status.add_metric([status], count)
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


def serve_worker_metrics(metrics: Metrics, host: str, port: int) -> Callable[[], None]:
    """Serve ``metrics`` on ``http://host:port/metrics`` from a thread; returns the stopper."""
    from prometheus_client import start_http_server  # noqa: PLC0415 - only workers serve

    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    logger.info("worker metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
