"""``GET /health``: liveness plus the state of the database."""

from __future__ import annotations

import asyncio
import time

import msgspec
import psycopg
from litestar import Response, get
from litestar.di import NamedDependency

from notifier.services import Services


class DependencyCheck(msgspec.Struct):
    """One dependency's state."""

    status: str
    latency_ms: float | None = None
    error: str | None = None


class Health(msgspec.Struct):
    """The service's state: ``ok`` or ``unavailable``."""

    status: str
    checks: dict[str, DependencyCheck]


@get("/health", tags=["health"], summary="Liveness and dependencies")
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
