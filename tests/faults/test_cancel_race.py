"""Cancels racing deliveries: nothing is both reported cancelled and delivered."""

from __future__ import annotations

import asyncio
import collections
import random
import uuid
from typing import Any

import httpx
import psycopg

from notifier.services import Services
from tests.faults.support import (
    FULL,
    DedupReceiver,
    WorkerProcesses,
    rows,
    schedule_webhooks,
    size,
    wait_drained,
    wait_until,
    webhook_id,
)
from tests.figures import Figures


async def test_no_notification_is_both_cancelled_and_delivered(
    services: Services,
    db: psycopg.AsyncConnection[Any],
    live_api: str,
    api_headers: dict[str, str],
    dedup_receiver: DedupReceiver,
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    count = size(1000, 100)
    # Slow enough that the cancels, which start at the first arrival, meet deliveries still
    # to come (8 requests in flight to the host: 400 a second at full size, 80 reduced).
    dedup_receiver.hold_seconds = 0.02 if FULL else 0.1
    ids = await schedule_webhooks(services, dedup_receiver.url + "/hooks", count)
    random.shuffle(ids)
    workers = size(3, 2)
    for _ in range(workers):
        # Small batches: a batch holds its notifications locked until it ends, and at the
        # default size (200) the workers' first batches hold every notification before the
        # first cancel; then each cancel only waits for its batch and answers 409. With 5,
        # at most workers x 6 x 5 are held at once, and the cancels race the rest.
        worker_processes.start(worker_concurrency=6, delivery_batch_size=5)
    assert await wait_until(lambda: bool(dedup_receiver.snapshot()), timeout=60), (
        worker_processes.logs()
    )

    answers: dict[uuid.UUID, int] = {}
    gate = asyncio.Semaphore(16)  # within the API's pool, so waits are on row locks

    async def cancel(http: httpx.AsyncClient, notification_id: uuid.UUID) -> None:
        async with gate:
            response = await http.delete(f"/api/v1/notifications/{notification_id}")
        assert response.status_code in {200, 409, 503}, response.text
        answers[notification_id] = response.status_code

    async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=60) as http:
        await asyncio.gather(*(cancel(http, i) for i in ids))

    await wait_drained(db)

    delivered = dedup_receiver.unique_ids()
    cancelled = {webhook_id(i) for i, status in answers.items() if status == 200}
    assert not cancelled & delivered  # the invariant
    statuses = {
        row["id"]: row["status"]
        for row in await rows(db, "SELECT id, status FROM notifier.notifications")
    }
    for notification_id, answer in answers.items():
        expected = {200: "cancelled", 409: "sent", 503: "sent"}[answer]
        assert statuses[notification_id] == expected, (notification_id, answer)
    assert delivered == {webhook_id(i) for i, s in statuses.items() if s == "sent"}
    tally = collections.Counter(answers.values())
    figure(
        f"{count} notifications due now, {workers} workers x 6, {count} concurrent cancels (16 at a "
        f"time): {tally[200]} answered cancelled, {tally[409]} answered 409 already sent, "
        f"{tally[503]} answered 503; delivered {len(delivered)}; "
        f"cancelled-and-delivered: {len(cancelled & delivered)}"
    )
