"""The API's Litestar middleware for telemetry: server spans and request metrics.

Here rather than in :mod:`notifier.telemetry`, which workers import too: they run without
Litestar.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from notifier.telemetry.metrics import Metrics
from notifier.telemetry.tracing import UNTRACED_PATHS


def tracing_middleware() -> DefineMiddleware:
    """The server-span middleware, named by route template so span names stay few."""
    config = OpenTelemetryConfig(
        exclude=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],
        scope_span_details_extractor=_route_details,
    )
    return config.middleware


def _route_details(scope: Any) -> tuple[str, dict[str, Any]]:
    route = scope.get("path_template") or scope.get("path", "")
    return f"{scope.get('method', '')} {route}".strip(), {"http.route": route}


def request_metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Litestar middleware counting each request by its route's template, not its path.

    Runs inside routing, so a request that matches no route (a 404 for an unknown path, a
    405) is not counted. The process's :class:`Metrics` is ``app.state.services.metrics``.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts: the server answers 500 to an escaped error

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_counting)
        finally:
            metrics: Metrics = scope["app"].state.services.metrics
            route = scope.get("path_template") or "unmatched"
            metrics.count_request(scope["method"], route, status, time.perf_counter() - started)

    return middleware
