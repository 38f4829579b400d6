"""``GET /health/ready``: the database, the schema level, live workers and the backlog."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier import migrate
from notifier.settings import Settings
from tests.support import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Fresh gauges on every probe."""
    return settings.replace(metrics_cache_seconds=0.0)


async def test_ready_at_head_reports_workers_and_an_empty_backlog(
    client: AsyncTestClient[Any], worker: None
) -> None:
    head = sorted(migrate.schema_scripts().heads)

    async def worker_seen() -> dict[str, Any] | None:
        response = await client.get("/health/ready")
        assert response.status_code == 200
        readiness: dict[str, Any] = response.json()
        return readiness if readiness["checks"]["workers"]["alive"] else None

    readiness = await eventually(worker_seen)
    assert readiness["status"] == "ready"
    checks = readiness["checks"]
    assert checks["database"]["status"] == "ok"
    assert checks["migrations"] == {"status": "at_head", "current": head, "head": head}
    assert checks["workers"] == {"status": "ok", "alive": 1}
    assert checks["backlog"]["status"] == "ok"


async def test_ready_without_workers_but_reported(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json()["checks"]["workers"] == {"status": "none", "alive": 0}


async def test_not_ready_while_migrations_are_behind(
    client: AsyncTestClient[Any], database_url: str
) -> None:
    migrate.downgrade(database_url, "-1")

    response = await client.get("/health/ready")

    assert response.status_code == 503
    readiness = response.json()
    assert readiness["status"] == "not_ready"
    migrations = readiness["checks"]["migrations"]
    assert migrations["status"] == "behind"
    assert migrations["current"] != migrations["head"]

    migrate.upgrade(database_url)
    assert (await client.get("/health/ready")).status_code == 200


async def test_ready_when_a_newer_release_has_migrated_the_database(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    # During a rolling upgrade the old release keeps serving against the new schema.
    await db.execute("UPDATE alembic_version SET version_num = 'f00dcafe'")

    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json()["checks"]["migrations"]["status"] == "ahead"


async def test_an_overdue_backlog_is_reported_without_making_the_api_unready(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], settings: Settings
) -> None:
    published = await client.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert published.status_code == 201
    await db.execute(
        "UPDATE procrastinate_events SET at = now() - make_interval(secs => %s)",
        [settings.overdue_job_seconds + 30],
    )

    response = await client.get("/health/ready")

    assert response.status_code == 200
    backlog = response.json()["checks"]["backlog"]
    assert backlog["status"] == "overdue"
    events = backlog["queues"]["events"]
    assert events["due_jobs"] == 1
    assert events["overdue"] is True
    assert events["oldest_due_seconds"] >= settings.overdue_job_seconds + 30


async def test_liveness_stays_cheap_and_unchanged(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert set(response.json()) == {"status", "checks"}
    assert set(response.json()["checks"]) == {"database"}


async def test_not_ready_on_a_database_never_migrated(
    client: AsyncTestClient[Any], database_url: str
) -> None:
    migrate.downgrade(database_url, "base")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE alembic_version")

    response = await client.get("/health/ready")

    assert response.status_code == 503
    assert response.json()["checks"]["migrations"]["status"] == "behind"
    assert response.json()["checks"]["migrations"]["current"] == []
