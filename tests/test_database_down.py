"""With the database unreachable, the API answers 503 problem+json quickly instead of hanging or 500."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.settings import Settings
from tests.support import SECRETS_KEYS, assert_problem, count_rows, eventually


@pytest.fixture
async def client_without_database() -> AsyncIterator[AsyncTestClient[Any]]:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{port}/notifier",
        database_pool_min_size=1,
        database_timeout_seconds=1.0,
        secrets_keys=SECRETS_KEYS,
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def test_publish_answers_503_with_retry_after_when_the_database_is_down(
    client_without_database: AsyncTestClient[Any],
) -> None:
    started = time.monotonic()
    # A well-formed key: checking it needs the database, which is what is down.
    response = await client_without_database.post(
        "/api/v1/events/",
        json={"type": "user.signup", "payload": {}},
        headers={"Authorization": "Bearer ntf_0123456789abcdef_" + "A" * 43},
    )

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == "5"
    assert response.json()["title"] == "Service Unavailable"
    assert time.monotonic() - started < 5


async def test_health_reports_the_database_unavailable(
    client_without_database: AsyncTestClient[Any],
) -> None:
    response = await client_without_database.get("/health")

    assert response.status_code == 503
    assert response.json()["checks"]["database"]["status"] == "unavailable"


async def test_readiness_reports_the_database_unavailable(
    client_without_database: AsyncTestClient[Any],
) -> None:
    started = time.monotonic()
    response = await client_without_database.get("/health/ready")

    assert response.status_code == 503
    readiness = response.json()
    assert readiness["status"] == "not_ready"
    assert readiness["checks"]["database"]["status"] == "unavailable"
    # Whichever of the pool's wait and the probe's own deadline (equal here) expires first.
    assert readiness["checks"]["database"]["error"] in {"PoolTimeout", "TimeoutError"}
    assert readiness["checks"]["migrations"] is None
    assert time.monotonic() - started < 5


async def test_metrics_still_show_the_process_counters(
    client_without_database: AsyncTestClient[Any],
) -> None:
    response = await client_without_database.get("/metrics")

    assert response.status_code == 200
    assert "notifier_metrics_database_up 0.0" in response.text
    assert "notifier_delivery_lag_seconds_count 0.0" in response.text
    assert "notifier_queue_depth" not in response.text


async def test_liveness_does_not_depend_on_the_database(
    client_without_database: AsyncTestClient[Any],
) -> None:
    response = await client_without_database.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_losing_the_connection_while_deferring_the_job_is_a_503(
    live_api: str, db: psycopg.AsyncConnection[Any], api_headers: dict[str, str]
) -> None:
    # procrastinate wraps the error of its defer query in its own exception; a restart that
    # lands there must still be a 503 to retry, not a 500.
    async with db.transaction():
        await db.execute("LOCK TABLE procrastinate_jobs IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=30) as http:
            publish = asyncio.create_task(
                http.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
            )

            async def api_waiting_on_the_lock() -> list[dict[str, Any]]:
                cursor = await db.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'notifier-api' "
                    "AND wait_event_type = 'Lock'"
                )
                return list(await cursor.fetchall())

            (waiting,) = await eventually(api_waiting_on_the_lock)
            await db.execute("SELECT pg_terminate_backend(%s)", [waiting["pid"]])
            response = await publish

    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert await count_rows(db, "notifier.events") == 0


async def test_the_dashboard_answers_a_503_page_when_the_database_is_down(
    client_without_database: AsyncTestClient[Any],
) -> None:
    response = await client_without_database.get("/ui/sign-in")

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["retry-after"] == "5"
    assert "The database is unavailable" in response.text
