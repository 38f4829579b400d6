"""Receivers that never answer hold a worker slot no longer than the timeout, and other
receivers' deliveries wait at most ``timeout * ceil(k * attempts / C)`` behind k of them.

The attempts count because a retry keeps its job's place in the queue: the retries of the
hanging notifications that fall due meanwhile run before newer work. A per-host concurrency
cap would bound this by the cap instead (docs/reliability.md).
"""

from __future__ import annotations

import math
import time
from typing import Any

import psycopg

from notifier.services import Services
from tests.faults.conftest import Figures
from tests.faults.support import (
    WorkerProcesses,
    rows,
    schedule_webhooks,
    size,
    start_receiver,
    stop_receiver,
    summary,
    wait_until,
    webhook_id,
)
from tests.support import eventually

TIMEOUT = 2.0
CONCURRENCY = 4
ATTEMPTS = 2


async def test_hanging_receivers_cost_at_most_the_timeout(
    services: Services,
    db: psycopg.AsyncConnection[Any],
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    hanging = size(16, 4)  # k, half never answering, half trickling headers forever
    healthy_count = size(40, 8)
    slow = start_receiver()
    other = start_receiver(hold_seconds=0.02)  # another tenant's receiver
    try:
        worker_processes.start(
            worker_concurrency=CONCURRENCY,
            webhook_timeout_seconds=TIMEOUT,
            # Production-like backoff: a timed-out send comes back after seconds, not at once.
            retry_base_seconds=5,
            retry_max_seconds=5,
            delivery_max_attempts=ATTEMPTS,
        )
        warm = await schedule_webhooks(services, other.receiver.url + "/hooks", 1)
        assert await wait_until(lambda: bool(other.receiver.unique_ids()), timeout=60), (
            worker_processes.logs()
        )

        hangers = await schedule_webhooks(services, slow.receiver.url + "/hang", hanging // 2)
        hangers += await schedule_webhooks(services, slow.receiver.url + "/trickle", hanging // 2)
        queued_at = time.monotonic()
        healthy = await schedule_webhooks(services, other.receiver.url + "/hooks", healthy_count)
        wanted = {webhook_id(i) for i in healthy + warm}
        assert await wait_until(lambda: wanted <= other.receiver.unique_ids(), timeout=120)

        arrivals = {a.webhook_id: a.arrived for a in other.receiver.snapshot()}
        latencies = [arrivals[webhook_id(i)] - queued_at for i in healthy]
        bound = TIMEOUT * math.ceil(hanging * ATTEMPTS / CONCURRENCY)

        async def first_attempts() -> list[dict[str, Any]]:
            found = await rows(
                db,
                "SELECT n.recipient, extract(epoch FROM a.finished_at - a.started_at) AS took "
                "FROM notifier.delivery_attempts a "
                "JOIN notifier.notifications n ON n.id = a.notification_id "
                "WHERE a.notification_id = ANY(%s) AND a.attempt = 1",
                hangers,
            )
            return found if len(found) == len(hangers) else []

        attempts = await eventually(first_attempts, timeout=30, interval=0.2)
        held = {
            kind: [float(a["took"]) for a in attempts if a["recipient"].endswith(kind)]
            for kind in ("/hang", "/trickle")
        }
        for kind, durations in held.items():
            assert max(durations) < TIMEOUT + 1.5, (kind, durations)
        # Generous slack for this shared machine; the figure says what was measured.
        assert max(latencies) < bound + 5, (latencies, bound)
        figure(
            f"timeout {TIMEOUT:.0f}s, concurrency {CONCURRENCY}, k={hanging} hanging: a never-"
            f"answering receiver held a slot {summary(held['/hang'])}; one trickling headers "
            f"{summary(held['/trickle'])}"
        )
        figure(
            f"{healthy_count} deliveries to another receiver, queued behind them: latency "
            f"{summary(latencies)}; stated bound timeout*ceil(k*attempts/C) = {bound:.0f}s"
        )
    finally:
        stop_receiver(slow)
        stop_receiver(other)
