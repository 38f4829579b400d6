"""SIGTERM during deliveries: every job is finished or handed back within the graceful timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from notifier.services import Services
from tests.faults.support import (
    WorkerProcesses,
    full_only,
    job_counts,
    schedule_webhooks,
    size,
    start_receiver,
    status_counts,
    stop_receiver,
    wait_until,
    webhook_id,
)
from tests.figures import Figures
from tests.support import eventually


@pytest.mark.parametrize(
    ("hold_seconds", "grace_seconds"),
    [
        pytest.param(1.0, 5.0, id="sends-finish-within-the-grace"),
        pytest.param(3.0, 1.0, id="sends-outlast-the-grace", marks=full_only),
    ],
)
async def test_sigterm_finishes_or_hands_back_every_job(
    services: Services,
    db: psycopg.AsyncConnection[Any],
    worker_processes: WorkerProcesses,
    figure: Figures,
    hold_seconds: float,
    grace_seconds: float,
) -> None:
    running = start_receiver(hold_seconds=hold_seconds)
    receiver = running.receiver
    try:
        count = size(40, 8)
        ids = await schedule_webhooks(services, receiver.url + "/hooks", count)
        worker = worker_processes.start(
            worker_concurrency=4, worker_shutdown_timeout_seconds=grace_seconds
        )
        assert await wait_until(lambda: len(receiver.in_flight()) >= 4, timeout=60), (
            worker_processes.logs()
        )

        asked = time.monotonic()
        worker.terminate()
        exit_code = await asyncio.to_thread(worker.wait, 30)
        took = time.monotonic() - asked
        jobs_after = await job_counts(db)
        statuses_after = await status_counts(db)

        assert exit_code == 0, worker_processes.logs()
        assert took < grace_seconds + 5, worker_processes.logs()
        assert not jobs_after.get("doing"), jobs_after  # finished, or back in the queue
        if hold_seconds < grace_seconds:
            assert statuses_after.get("sent", 0) >= 4  # those in flight were finished

        worker_processes.start()

        async def all_sent() -> bool:
            return (await status_counts(db)) == {"sent": count}

        await eventually(all_sent, timeout=90, interval=0.2)
        assert receiver.unique_ids() == {webhook_id(i) for i in ids}
        figure(
            f"hold {hold_seconds:g}s, grace {grace_seconds:g}s: exited {took:.2f}s after "
            f"SIGTERM (code {exit_code}); jobs then {jobs_after}; "
            f"{statuses_after.get('sent', 0)} sent before exit; all {count} sent once after "
            f"dedup, raw duplicates {receiver.duplicates()}"
        )
    finally:
        stop_receiver(running)
