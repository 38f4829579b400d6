"""A worker killed with SIGKILL mid-delivery loses nothing; deduplicating receivers see each once."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import psycopg

from notifier.services import Services
from tests.faults.support import (
    DedupReceiver,
    WorkerProcesses,
    schedule_webhooks,
    size,
    status_counts,
    summary,
    wait_drained,
    wait_until,
    webhook_id,
)
from tests.figures import Figures


async def test_sigkill_during_deliveries_loses_no_notification(
    services: Services,
    db: psycopg.AsyncConnection[Any],
    dedup_receiver: DedupReceiver,
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    kills = size(20, 2)
    batch = size(100, 20)
    url = dedup_receiver.url + "/hooks"
    expected = {webhook_id(i) for i in await schedule_webhooks(services, url, batch)}

    first_delivery: list[float] = []  # kill -> first request from the replacement
    redelivered: list[float] = []  # kill -> every request that was in flight came again
    in_flight_at_kill: list[int] = []
    started = time.monotonic()
    worker = worker_processes.start()
    for _ in range(kills):
        # In flight from the worker now running: work queued at the end of the previous
        # round may already be in flight by the time this round begins.
        def delivering(since: float = started) -> bool:
            return any(a.arrived > since for a in dedup_receiver.in_flight())

        assert await wait_until(delivering, timeout=60), (
            "the worker never started delivering\n" + worker_processes.logs()
        )
        await asyncio.sleep(random.uniform(0, dedup_receiver.hold_seconds))
        killed_at = time.monotonic()
        worker_processes.kill(worker)
        cut_off = {a.webhook_id for a in dedup_receiver.in_flight()}
        in_flight_at_kill.append(len(cut_off))
        # A batch sends everything due at once: the kill may land just after it committed,
        # leaving the replacement nothing to deliver. Give it work, and the next kill too.
        if not (await status_counts(db)).get("pending", 0):
            expected |= {webhook_id(i) for i in await schedule_webhooks(services, url, batch)}
        worker = worker_processes.start()
        respawned = time.monotonic()

        def arrived_since(after: float) -> list[float]:
            return [a.arrived for a in dedup_receiver.snapshot() if a.arrived > after]

        def came_again(ids: set[str] = cut_off, after: float = killed_at) -> bool:
            return ids <= {a.webhook_id for a in dedup_receiver.snapshot() if a.arrived > after}

        assert await wait_until(came_again, timeout=60), "cut-off deliveries never came again"
        if cut_off:
            redelivered.append(time.monotonic() - killed_at)

        # Requests the killed worker had already sent can still be read after the kill: the
        # replacement's first is the first to arrive after it started.
        def replacement_delivered(since: float = respawned) -> bool:
            return bool(arrived_since(since))

        assert await wait_until(replacement_delivered, timeout=60)
        first_delivery.append(min(arrived_since(respawned)) - killed_at)
        # Keep work queued so that every kill lands in the middle of deliveries.
        pending = (await status_counts(db)).get("pending", 0)
        if pending < batch // 2:
            expected |= {webhook_id(i) for i in await schedule_webhooks(services, url, batch)}
        started = respawned

    await wait_drained(db)

    assert await status_counts(db) == {"sent": len(expected)}
    assert dedup_receiver.unique_ids() == expected  # each once, after deduplication
    duplicates = dedup_receiver.duplicates()
    assert duplicates >= 0
    figure(
        f"{kills} SIGKILLs, {len(expected)} notifications, 0 lost; "
        f"{sum(in_flight_at_kill)} requests were in flight at the kills; "
        f"raw duplicates {duplicates} ({duplicates / len(expected):.1%}); "
        f"unique after dedup by webhook-id {len(dedup_receiver.unique_ids())}"
    )
    figure(f"kill -> first delivery by the replacement: {summary(first_delivery)}")
    figure(f"kill -> every cut-off delivery sent again: {summary(redelivered)}")
