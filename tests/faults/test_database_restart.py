"""PostgreSQL restarted under load: 503 while down, back by itself, nothing acknowledged is lost.

The cluster is one this test owns (``tests/faults/cluster.py``): the shared one at
127.0.0.1:5432 is never stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from notifier import migrate
from notifier.settings import Settings
from tests.conftest import CreateApiKey
from tests.faults.cluster import OwnedCluster, find_bindir
from tests.faults.support import (
    DedupReceiver,
    WorkerProcesses,
    full_only,
    size,
    summary,
    wait_until,
    worker_environment,
)
from tests.figures import Figures
from tests.support import PROBLEM_JSON, SECRETS_KEYS, WEBHOOK_SECRET, bearer, eventually

DATABASE_TIMEOUT = 2.0

pytestmark = full_only


@pytest.fixture
def cluster() -> Iterator[OwnedCluster]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl on this machine")
    owned = OwnedCluster(bindir)
    try:
        owned.init()
        owned.start()
        yield owned
    finally:
        owned.remove()


@pytest.fixture
def settings(cluster: OwnedCluster) -> Settings:
    """The API's settings, against the owned cluster (overrides the shared-database ones)."""
    url = cluster.url("notifier")
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE notifier")
    migrate.upgrade(url)
    return Settings(
        database_url=url,
        database_pool_min_size=2,
        database_timeout_seconds=DATABASE_TIMEOUT,
        webhook_secret=WEBHOOK_SECRET,
        secrets_keys=SECRETS_KEYS,
    )


@dataclass
class Answer:
    started: float
    finished: float
    status: int
    problem: bool
    event_id: str | None


async def publish_until(
    http: httpx.AsyncClient, stop: asyncio.Event, answers: list[Answer], n: int
) -> None:
    """Publish events one after another until told to stop, recording every answer."""
    while not stop.is_set():
        started = time.monotonic()
        response = await http.post(
            "/api/v1/events/", json={"type": "order.placed", "payload": {"n": n}}
        )
        problem = response.headers.get("content-type", "").startswith(PROBLEM_JSON)
        event_id = response.json()["id"] if response.status_code == 201 else None
        answers.append(Answer(started, time.monotonic(), response.status_code, problem, event_id))
        if response.status_code != 201:
            await asyncio.sleep(0.05)


async def test_database_restart_under_load_loses_nothing_acknowledged(
    settings: Settings,
    cluster: OwnedCluster,
    live_api: str,
    create_api_key: CreateApiKey,
    dedup_receiver: DedupReceiver,
    tmp_path: Path,
    figure: Figures,
) -> None:
    down_seconds = size(10, 4)
    dedup_receiver.hold_seconds = 0.05
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notifier.routing_rules (event_type, channel, recipient) "
            "VALUES ('order.*', 'webhook', %s)",
            [dedup_receiver.url + "/hooks"],
        )
    workers = WorkerProcesses(
        worker_environment(settings.database_url, webhook_secret=WEBHOOK_SECRET), tmp_path
    )
    try:
        processes = [workers.start(), workers.start()]
        answers: list[Answer] = []
        stop = asyncio.Event()
        # A key limited far above this load: the answers to count are the restart's.
        key = await create_api_key(rate_limit_per_second=100_000, rate_limit_burst=100_000)
        async with httpx.AsyncClient(base_url=live_api, headers=bearer(key), timeout=30) as http:
            load = [asyncio.create_task(publish_until(http, stop, answers, n)) for n in range(4)]
            await asyncio.sleep(3)
            went_down = time.monotonic()
            await asyncio.to_thread(cluster.stop, "immediate")
            await asyncio.sleep(down_seconds)
            await asyncio.to_thread(cluster.start)
            came_back = time.monotonic()

            def back() -> bool:
                return any(a.status == 201 and a.started > came_back for a in answers)

            await wait_until(back, timeout=30)
            await asyncio.sleep(2)  # and some more ingest after recovery
            stop.set()
            await asyncio.gather(*load)

        statuses = {a.status for a in answers}
        assert statuses <= {201, 503}, statuses  # never a 500, never a hang
        unavailable = [a for a in answers if a.status == 503]
        assert unavailable, "the API never noticed the database was down"
        assert all(a.problem for a in unavailable)
        waits = [a.finished - a.started for a in unavailable]
        assert max(waits) < DATABASE_TIMEOUT + 5  # bounded by the pool's timeout
        recovered = [
            a.finished - came_back for a in answers if a.status == 201 and a.started > came_back
        ]
        assert recovered, "the API did not recover"
        recovery = min(recovered)
        assert recovery < 5, f"first 2xx {recovery:.1f}s after the database came back"

        acknowledged = {a.event_id for a in answers if a.event_id is not None}

        async def all_processed() -> bool:
            async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
                cursor = await conn.execute(
                    "SELECT id::text, processed_at IS NOT NULL AS done FROM notifier.events"
                )
                events = {row[0]: row[1] for row in await cursor.fetchall()}
                cursor = await conn.execute(
                    "SELECT status::text, count(*) FROM procrastinate_jobs "
                    "WHERE task_name <> 'notifier.maintenance' GROUP BY 1"
                )
                jobs: dict[str, int] = dict(await cursor.fetchall())
                cursor = await conn.execute(
                    "SELECT status, count(*) FROM notifier.notifications GROUP BY 1"
                )
                notifications: dict[str, int] = dict(await cursor.fetchall())
            missing = acknowledged - set(events)
            assert not missing, f"{len(missing)} acknowledged events are gone"
            return (
                all(events.values())
                and set(jobs) == {"succeeded"}
                and notifications == {"sent": len(events)}
            )

        await eventually(all_processed, timeout=120, interval=0.5)
        assert all(p.poll() is None for p in processes), workers.logs()  # they reconnected
        assert len(dedup_receiver.unique_ids()) >= len(acknowledged)
        figure(
            f"database down {down_seconds}s under 4 publishing clients and 2 workers: "
            f"{len(answers)} requests, {len(acknowledged)} acknowledged (all processed and "
            f"delivered), {len(unavailable)} answered 503 problem+json, 0 answered 500"
        )
        figure(f"503 answer time while down: {summary(waits)}")
        figure(
            f"first 2xx {recovery:.2f}s after the database came back "
            f"(it was down {came_back - went_down:.1f}s); workers alive, no job lost"
        )
    finally:
        workers.stop_all()
