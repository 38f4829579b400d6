"""Receivers that never answer, or answer without end, cost a worker bounded time and memory.

A request holds a worker slot no longer than the timeout, and reads at most 64 KiB of an
answer. One host has at most NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST requests in flight
across every worker, so with that cap below the workers' concurrency the deliveries to other
receivers never wait behind a hanging one. Without the cap they waited up to
``timeout * ceil(k * attempts / C)`` behind k of them (docs/reliability.md, section 6).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import psycopg

from notifier.services import Services
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
from tests.figures import Figures
from tests.hostile_receiver import HostileReceiver, hostile_receiver
from tests.support import eventually

TIMEOUT = 2.0
CONCURRENCY = 4
ATTEMPTS = 2
CAP = 2


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
            webhook_max_in_flight_per_host=CAP,
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
        # None waited behind a hanging send: each came within one timeout (without the
        # cap: up to the bound).
        assert max(latencies) < TIMEOUT, (latencies, bound)
        figure(
            f"timeout {TIMEOUT:.0f}s, concurrency {CONCURRENCY}, cap {CAP}, k={hanging} "
            f"hanging: a never-answering receiver held a slot {summary(held['/hang'])}; one "
            f"trickling headers {summary(held['/trickle'])}"
        )
        figure(
            f"{healthy_count} deliveries to another receiver, queued behind them: latency "
            f"{summary(latencies)}; without the cap, timeout*ceil(k*attempts/C) = {bound:.0f}s"
        )
    finally:
        stop_receiver(slow)
        stop_receiver(other)


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process ever had (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


async def test_a_1_gib_answer_leaves_the_worker_memory_bounded(
    services: Services,
    db: psycopg.AsyncConnection[Any],
    worker_processes: WorkerProcesses,
    hostile: HostileReceiver,
    figure: Figures,
) -> None:
    worker = worker_processes.start(worker_concurrency=2, webhook_timeout_seconds=10)
    (warm,) = await schedule_webhooks(services, hostile.url + "/hooks", 1)
    assert await wait_until(lambda: webhook_id(warm) in hostile.ids(), timeout=60), (
        worker_processes.logs()
    )
    before = peak_rss_mb(worker.pid)

    (huge,) = await schedule_webhooks(services, hostile.url + "/huge", 1)

    async def settled() -> list[dict[str, Any]]:
        return await rows(
            db,
            "SELECT n.status, a.outcome, a.status_code FROM notifier.notifications n "
            "JOIN notifier.delivery_attempts a ON a.notification_id = n.id WHERE n.id = %s",
            huge,
        )

    # The status decides, as before: the receiver said 200, so it was sent.
    assert await eventually(settled, timeout=60) == [
        {"status": "sent", "outcome": "delivered", "status_code": 200}
    ]
    after = peak_rss_mb(worker.pid)
    await wait_until(lambda: bool(hostile.body_bytes_sent), timeout=10)
    # Before: the whole answer was read, and the peak grew by about 2 GB.
    assert after - before < 64, (before, after)
    assert hostile.body_bytes_sent[0] < 64 * 1024 * 1024  # the rest was never read
    figure(
        f"a 1 GiB answer: worker peak RSS {before:.0f} MB before, {after:.0f} MB after; "
        f"the receiver got {hostile.body_bytes_sent[0] / 1e6:.1f} MB out before the close"
    )


async def test_a_hanging_host_has_at_most_the_cap_in_flight_across_workers(
    services: Services,
    db: psycopg.AsyncConnection[Any],
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    cap, timeout = 2, 3.0
    with hostile_receiver() as hanging, hostile_receiver() as healthy:
        for _ in range(2):
            worker_processes.start(
                worker_concurrency=CONCURRENCY,
                webhook_timeout_seconds=timeout,
                webhook_max_in_flight_per_host=cap,
                retry_base_seconds=1,
                retry_max_seconds=2,
            )
        warm = await schedule_webhooks(services, healthy.url + "/hooks", 2)
        assert await wait_until(
            lambda: {webhook_id(i) for i in warm} <= healthy.ids(), timeout=60
        ), worker_processes.logs()

        stuck = await schedule_webhooks(services, hanging.url + "/hang", size(24, 12))
        queued_at = time.monotonic()
        fine = await schedule_webhooks(services, healthy.url + "/hooks", size(40, 20))
        wanted = {webhook_id(i) for i in fine}
        assert await wait_until(lambda: wanted <= healthy.ids(), timeout=60)
        arrived = {a.webhook_id: a.arrived for a in healthy.snapshot()}
        lags = [arrived[webhook_id(i)] - queued_at for i in fine]
        # Three rounds of hanging attempts: the waiting ones came back for the slots.
        assert await wait_until(lambda: len(hanging.snapshot()) >= 3 * cap, timeout=60)

        # Never waited for a hanging send: each arrived well within one timeout.
        assert max(lags) < timeout, lags
        assert hanging.max_open_requests == cap
        # Every attempt recorded is a request the host got: waiting spent none.
        attempts = await rows(
            db,
            "SELECT count(*) AS n FROM notifier.delivery_attempts WHERE notification_id = ANY(%s)",
            stuck,
        )
        assert attempts[0]["n"] <= len(hanging.snapshot())
        assert "waited for a host slot" in worker_processes.logs()
        figure(
            f"cap {cap}, two workers of concurrency {CONCURRENCY}, timeout {timeout:.0f}s, "
            f"{len(stuck)} notifications to a hanging host: at most "
            f"{hanging.max_open_requests} of its requests open at once; {len(fine)} to "
            f"another host: lag {summary(lags)}"
        )
