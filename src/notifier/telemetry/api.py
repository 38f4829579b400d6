"""``GET /metrics``: the API process's counters and the gauges read from PostgreSQL."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from notifier.http.problems import problem_responses
from notifier.services import Services
from notifier.telemetry.stats import DatabaseStats

# The classic text format (what generate_latest writes); Litestar appends the charset.
CONTENT_TYPE = "text/plain; version=0.0.4"


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    media_type=CONTENT_TYPE,
    responses=problem_responses(needs_key=False),
)
async def metrics_endpoint(
    services: NamedDependency[Services], database_stats: NamedDependency[DatabaseStats]
) -> Response[bytes]:
    """Every metric family in Prometheus' text format (see docs/operations.md)."""
    await database_stats.refresh()
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
