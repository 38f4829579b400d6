"""``GET /metrics``: the API process's counters and the gauges read from PostgreSQL."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from notifier.services import Services
from notifier.telemetry.metrics import DatabaseStats


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics_endpoint(
    services: NamedDependency[Services], database_stats: NamedDependency[DatabaseStats]
) -> Response[bytes]:
    """Every metric family in Prometheus' text format (see docs/operations.md)."""
    await database_stats.refresh()
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
