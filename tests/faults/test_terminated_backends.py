"""The service's database connections terminated several times a second (``pg_terminate_backend``,
as the public job-queue harness's pg_backend_kill does): every acknowledged notification is
delivered, no job is left ``doing``, and requests retry on fresh connections instead of
answering 503 where that is safe.

Runs in the normal suite: it needs no cluster of its own, only the test's database.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import time
from typing import Any

import httpx
import psycopg
import psycopg.conninfo
import pytest

from tests.faults.support import (
    DedupReceiver,
    WorkerProcesses,
    job_counts,
    size,
    status_counts,
    wait_drained,
    webhook_id,
)
from tests.figures import Figures
from tests.support import eventually

pytestmark = pytest.mark.serial

SERVICE_CONNECTIONS = ("notifier-api", "notifier-worker", "notifier-worker-fetch")


async def terminate_service_backends(database_url: str, *, per_second: float, until: float) -> int:
    """Terminate every backend of the API and the workers, ``per_second`` times a second."""
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    terminated = 0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        while time.monotonic() < until:
            cursor = await admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n "
                "FROM pg_stat_activity WHERE datname = %s AND application_name = ANY(%s)",
                [name, list(SERVICE_CONNECTIONS)],
            )
            row = await cursor.fetchone()
            terminated += row[0] if row else 0
            await asyncio.sleep(1 / per_second)
    return terminated


async def test_terminated_connections_lose_nothing_and_strand_no_job(
    database_url: str,
    live_api: str,
    api_headers: dict[str, str],
    db: psycopg.AsyncConnection[Any],
    dedup_receiver: DedupReceiver,
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    seconds = size(60, 10)
    dedup_receiver.hold_seconds = 0.02
    workers = [worker_processes.start() for _ in range(2)]
    statuses: collections.Counter[int] = collections.Counter()
    acknowledged: set[str] = set()
    latencies: list[float] = []
    until = time.monotonic() + seconds
    killer = asyncio.create_task(
        terminate_service_backends(database_url, per_second=5, until=until)
    )

    async def produce(http: httpx.AsyncClient) -> None:
        while time.monotonic() < until:
            now = datetime.datetime.now(datetime.UTC)
            started = time.monotonic()
            response = await http.post(
                "/api/v1/notifications/",
                json={
                    "notification_type": "fault.terminate",
                    "entity_id": "e",
                    "target_date": now.isoformat(),
                    "lead_time_days": 0,
                    "channel": "webhook",
                    "recipient": dedup_receiver.url + "/hooks",
                },
            )
            latencies.append(time.monotonic() - started)
            statuses[response.status_code] += 1
            if response.is_success:
                acknowledged.add(webhook_id(response.json()["id"]))
                assert response.json()["status"] == "pending", response.text

    async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=30) as http:
        await asyncio.gather(*(produce(http) for _ in range(4)))
    terminated = await killer
    await wait_drained(db, timeout=120)

    assert all(worker.poll() is None for worker in workers), worker_processes.logs()
    assert set(statuses) <= {201, 503}, statuses
    counts = await status_counts(db)
    assert counts == {"sent": len(acknowledged)}, counts
    assert dedup_receiver.unique_ids() == acknowledged
    assert (await job_counts(db)).get("doing", 0) == 0
    latencies.sort()
    figure(
        f"{terminated} backends terminated over {seconds} s (5 times a second): "
        f"{statuses[201]} acknowledged (201), all delivered, 0 lost, 0 jobs left doing; "
        f"{statuses[503]} answered 503 ({statuses[503] / max(1, sum(statuses.values())):.2%}); "
        f"raw duplicates {dedup_receiver.duplicates()}; request p50 "
        f"{latencies[len(latencies) // 2]:.3f}s, max {latencies[-1]:.3f}s"
    )


async def test_a_request_whose_connection_dies_before_commit_runs_again_and_commits_once(
    live_api: str, db: psycopg.AsyncConnection[Any], api_headers: dict[str, str]
) -> None:
    """The API's backend is terminated mid-transaction (waiting on a lock, before COMMIT):
    the request runs again on a fresh connection and answers 201, with one notification."""
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=30) as http:
        async with db.transaction():
            await db.execute("LOCK TABLE procrastinate_jobs IN ACCESS EXCLUSIVE MODE")
            create = asyncio.create_task(
                http.post(
                    "/api/v1/notifications/",
                    json={
                        "notification_type": "fault.terminate",
                        "entity_id": "once",
                        "target_date": datetime.datetime.now(datetime.UTC).isoformat(),
                        "lead_time_days": 0,
                        "channel": "log",
                        "recipient": "ada@example.com",
                    },
                )
            )

            async def api_waiting_on_the_lock() -> list[dict[str, Any]]:
                # Within `db`'s transaction pg_stat_activity is one snapshot: clear it each time.
                await db.execute("SELECT pg_stat_clear_snapshot()")
                cursor = await db.execute(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE application_name = 'notifier-api' AND wait_event_type = 'Lock'"
                    # The request's defer, not the API's queue statistics, which wait too.
                    " AND query LIKE '%%procrastinate_defer_jobs_v1%%'"
                )
                return list(await cursor.fetchall())

            (waiting,) = await eventually(api_waiting_on_the_lock)
            await db.execute("SELECT pg_terminate_backend(%s)", [waiting["pid"]])
            # The second run waits on the same lock, released when this block commits.
            (again,) = await eventually(api_waiting_on_the_lock)
            assert again["pid"] != waiting["pid"]
        response = await create

    assert response.status_code == 201, response.text
    cursor = await db.execute("SELECT count(*) AS n FROM notifier.notifications")
    assert await cursor.fetchone() == {"n": 1}
