"""``GET /health`` (liveness plus the database), ``/health/live`` and ``/health/ready``."""

from __future__ import annotations

import asyncio
import time

import msgspec
import psycopg
from litestar import Response, get
from litestar.di import NamedDependency

from notifier.http.problems import problem_responses
from notifier.migrate import SchemaScripts
from notifier.services import Services
from notifier.telemetry.queries import schema_revisions
from notifier.telemetry.stats import DatabaseStats


class DependencyCheck(msgspec.Struct):
    """One dependency's state."""

    status: str
    latency_ms: float | None = None
    error: str | None = None


class Health(msgspec.Struct):
    """The service's state: ``ok`` or ``unavailable``."""

    status: str
    checks: dict[str, DependencyCheck]


@get(
    "/health",
    tags=["health"],
    summary="Liveness and dependencies",
    responses=problem_responses(needs_key=False),
)
async def health(services: NamedDependency[Services]) -> Response[Health]:
    """200 when the database answers within two seconds, 503 otherwise."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(2.0), services.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, TimeoutError) as exc:  # PoolTimeout is a psycopg.Error
        database = DependencyCheck(status="unavailable", error=type(exc).__name__)
    else:
        database = DependencyCheck(
            status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2)
        )
    ok = database.status == "ok"
    return Response(
        Health(status="ok" if ok else "unavailable", checks={"database": database}),
        status_code=200 if ok else 503,
    )


class Liveness(msgspec.Struct):
    """The process answers."""

    status: str = "ok"


@get(
    "/health/live",
    tags=["health"],
    summary="Liveness of this process only",
    responses=problem_responses(needs_key=False),
)
async def liveness() -> Liveness:
    """Always 200 while the process serves requests; touches no dependency.

    For an orchestrator's liveness probe: a database outage must not restart every API
    process (``/health`` and ``/health/ready`` report it instead).
    """
    return Liveness()


class MigrationCheck(msgspec.Struct):
    """``at_head``, ``behind`` (not ready), or ``ahead`` (a newer release migrated it: ready)."""

    status: str
    current: list[str]
    head: list[str]


class WorkersCheck(msgspec.Struct):
    """``ok``, or ``none`` when no worker has heartbeated lately."""

    status: str
    alive: int


class QueueBacklog(msgspec.Struct):
    """One queue's jobs that are due and still waiting."""

    due_jobs: int
    oldest_due_seconds: float
    overdue: bool


class BacklogCheck(msgspec.Struct):
    """``ok``, or ``overdue`` when some job has waited past NOTIFIER_OVERDUE_JOB_SECONDS."""

    status: str
    queues: dict[str, QueueBacklog]


class ReadinessChecks(msgspec.Struct):
    """Each dependency's state; the ones that could not be read are null."""

    database: DependencyCheck
    migrations: MigrationCheck | None = None
    workers: WorkersCheck | None = None
    backlog: BacklogCheck | None = None


class Readiness(msgspec.Struct):
    """``ready`` or ``not_ready``, and why."""

    status: str
    checks: ReadinessChecks


def migration_check(current: set[str], scripts: SchemaScripts) -> MigrationCheck:
    """Compare the database's revisions with the ones this code ships."""
    if current == scripts.heads:
        status = "at_head"
    elif current and not current <= scripts.known:
        status = "ahead"
    else:
        status = "behind"
    return MigrationCheck(status=status, current=sorted(current), head=sorted(scripts.heads))


@get(
    "/health/ready",
    tags=["health"],
    summary="Readiness to serve traffic",
    responses=problem_responses(needs_key=False),
)
async def readiness(
    services: NamedDependency[Services],
    database_stats: NamedDependency[DatabaseStats],
    schema: NamedDependency[SchemaScripts],
) -> Response[Readiness]:
    """200 when the database answers and its schema is at this release's head, 503 otherwise.

    Live workers and the overdue backlog are reported but do not make the API unready:
    without workers it still accepts events, which wait safely in the queue, and taking it
    out of service would turn a delivery delay into refused requests.
    """
    timeout = database_stats.timeout_seconds
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout), services.pool.connection(timeout=timeout) as conn:
            current = await schema_revisions(conn)
        database = DependencyCheck(
            status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2)
        )
    except (psycopg.Error, TimeoutError) as exc:
        checks = ReadinessChecks(
            database=DependencyCheck(status="unavailable", error=type(exc).__name__)
        )
        return Response(Readiness(status="not_ready", checks=checks), status_code=503)
    migrations = migration_check(current, schema)
    checks = ReadinessChecks(database=database, migrations=migrations)
    try:
        snapshot = await database_stats.queue_snapshot()
    except (psycopg.Error, TimeoutError):
        pass  # the database answered a moment ago; report what could be read
    else:
        limit = services.settings.overdue_job_seconds
        queues = {
            name: QueueBacklog(
                due_jobs=state.due_jobs,
                oldest_due_seconds=round(state.oldest_due_seconds, 3),
                overdue=state.oldest_due_seconds > limit,
            )
            for name, state in sorted(snapshot.queues.items())
        }
        checks.workers = WorkersCheck(
            status="ok" if snapshot.workers_alive else "none", alive=snapshot.workers_alive
        )
        checks.backlog = BacklogCheck(
            status="overdue" if any(q.overdue for q in queues.values()) else "ok", queues=queues
        )
    ready = migrations.status != "behind"
    return Response(
        Readiness(status="ready" if ready else "not_ready", checks=checks),
        status_code=200 if ready else 503,
    )
