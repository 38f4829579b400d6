"""Prometheus metrics: each process's registry and the counters its work increments.

Two kinds, because the work happens in several processes:

- Counters and the latency histogram live in the process that does the work (the API counts
  the events it accepts, a worker the deliveries it attempts). Each process has its own
  registry; workers serve theirs on ``NOTIFIER_WORKER_METRICS_PORT``, the API on ``/metrics``.
  Prometheus sums them across processes.
- The state of the system (notifications by status, queue depth and age, live workers) is
  the same seen from anywhere: the API reads it from PostgreSQL at scrape time
  (:mod:`notifier.telemetry.stats`). Workers do not export it, so it is never counted once
  per worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

logger = logging.getLogger("notifier.metrics")

# Event types are chosen by producers: the first this many get a label of their own in a
# process, later ones are counted as "other", so a producer inventing types cannot grow
# the series without bound.
MAX_EVENT_TYPE_LABELS = 100
OTHER_EVENT_TYPE = "other"
# From scheduled time to sent: seconds when all is well, hours when retries back off.
DELIVERY_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)
# Events per publish statement (notifier.events.publisher): 1 when requests come one by one.
PUBLISH_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 100)
# Every outcome a delivery attempt has; each configured channel's series start at zero.
DELIVERY_OUTCOMES = ("delivered", "retry", "failed", "dead")
# Why notifications expire (notifier.notifications.scheduling.ExpiryReason's values).
EXPIRY_REASONS = ("deadline", "target_passed", "quiet_hours")
# API requests, from the first byte in to the last byte out.
REQUEST_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Methods that get a label of their own; anything else a client sends is "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """One process's registry and the counters its work increments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The process's CPU, memory, open files and start time; Python's version and GC.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
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
        self.host_slot_waits = Counter(
            "notifier_host_slot_waits",
            "Deliveries put off, without an attempt, because every request slot of their "
            "host was taken (NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST), by channel.",
            ["channel"],
            registry=self.registry,
        )
        # The one channel with a per-host cap, shown from zero so that rate() sees the first.
        self.host_slot_waits.labels(channel="webhook")
        self.endpoints_disabled = Counter(
            "notifier_endpoints_disabled",
            "Webhook endpoints disabled automatically because every attempt failed for "
            "too long (NOTIFIER_ENDPOINT_DISABLE_AFTER_*).",
            registry=self.registry,
        )
        self.delivery_lag = Histogram(
            "notifier_delivery_lag_seconds",
            "From a notification's scheduled send time to a channel accepting it.",
            buckets=DELIVERY_LAG_BUCKETS,
            registry=self.registry,
        )
        self.publish_batch_size = Histogram(
            "notifier_publish_batch_size",
            "Events stored per publish statement: concurrent API requests share one.",
            buckets=PUBLISH_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.notifications_expired = Counter(
            "notifier_notifications_expired",
            "Notifications expired, never sent, by reason: deadline (the client's expires_at "
            "or the rule's deliver_within), target_passed (the target date passed more than "
            "NOTIFIER_EXPIRY_GRACE_SECONDS before), quiet_hours (they end after the target).",
            ["reason"],
            registry=self.registry,
        )
        for reason in EXPIRY_REASONS:
            self.notifications_expired.labels(reason=reason)
        self._event_types: set[str] = set()
        # (type, producer) -> its series, for the types within the limit: as for requests.
        self._event_series: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.http_requests: Counter | None = None
        self.http_request_duration: Histogram | None = None
        # Each (method, route, status)'s two series, looked up once: prometheus_client's
        # labels() checks and joins the label values and takes a lock on every call, a
        # cost the API paid twice per request. Bounded: methods, route templates and
        # statuses are few.
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # (channel label, outcome) -> its series, as for requests: a worker paid labels()
        # once per delivery. Bounded: channel labels are the configured channels' names.
        self._delivery_series: dict[tuple[str, str], Any] = {}

    def expect_channels(self, channels: Iterable[str]) -> None:
        """Create every outcome's series of these channels at zero.

        A series born at its first increment starts at 1, which rate() and increase() cannot
        tell from a series that was always 1: the first dead delivery of a process would
        never fire an alert on ``increase(notifier_deliveries_total{outcome="dead"}[...])``.
        """
        for channel in channels:
            for outcome in DELIVERY_OUTCOMES:
                self.deliveries.labels(channel=channel, outcome=outcome)

    def count_http_requests(self) -> None:
        """Add the API's request counter and latency histogram (only the API serves HTTP)."""
        if self.http_requests is not None:
            return
        self.http_requests = Counter(
            "notifier_http_requests",
            "API requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "notifier_http_request_duration_seconds",
            "API request durations by method, route template and status.",
            ["method", "route", "status"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=self.registry,
        )

    def count_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered API request."""
        series = self._request_series.get((method, route, status))
        if series is None:
            assert self.http_requests is not None, "count_http_requests() first"
            assert self.http_request_duration is not None
            labels = {
                "method": method if method in HTTP_METHODS else "other",
                "route": route,
                "status": str(status),
            }
            series = (
                self.http_requests.labels(**labels),
                self.http_request_duration.labels(**labels),
            )
            if method in HTTP_METHODS:  # other methods are many: looked up each time
                self._request_series[method, route, status] = series
        counter, duration = series
        counter.inc()
        duration.observe(seconds)

    def count_event(self, event_type: str, producer: str) -> None:
        """Count one accepted event."""
        series = self._event_series.get((event_type, producer))
        if series is None:
            with self._lock:
                if event_type not in self._event_types:
                    if len(self._event_types) >= MAX_EVENT_TYPE_LABELS:
                        event_type = OTHER_EVENT_TYPE
                    else:
                        self._event_types.add(event_type)
            series = self.events_received.labels(type=event_type, producer=producer)
            # Types past the limit are not kept: each would be an entry of its own here.
            if event_type != OTHER_EVENT_TYPE:
                self._event_series[event_type, producer] = series
        series.inc()

    def count_delivery(self, channel: str, outcome: str, lag_seconds: float | None = None) -> None:
        """Count one delivery attempt; a successful one also records its lag."""
        series = self._delivery_series.get((channel, outcome))
        if series is None:
            series = self.deliveries.labels(channel=channel, outcome=outcome)
            self._delivery_series[channel, outcome] = series
        series.inc()
        if lag_seconds is not None:
            self.delivery_lag.observe(max(0.0, lag_seconds))

    def count_expired(self, reasons: Iterable[str | None]) -> None:
        """Count the notifications expired for each of ``reasons`` (None: not expired)."""
        for reason in reasons:
            if reason is not None:
                self.notifications_expired.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


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
