"""The Litestar application: wires the feature controllers to the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import Message, Scope

from notifier import recipients
from notifier.auth.guard import BEARER_SCHEME, Authenticator, check_guarded
from notifier.bootstrap import open_services
from notifier.docs_ui import DOCS_PATH, docs_router, swagger_ui_plugin
from notifier.endpoints.api import EndpointController, TenantSecretController
from notifier.events.api import EventController
from notifier.events.publisher import EventPublisher
from notifier.health import health, liveness, readiness
from notifier.http.direct import check_direct_routes
from notifier.http.middleware import request_metrics_middleware, tracing_middleware
from notifier.http.params import idempotent_request, provide_principal
from notifier.http.problems import EXCEPTION_HANDLERS
from notifier.http.request_checks import ClosedStructSchemaPlugin, RequestChecks
from notifier.http.request_retry import retry_lost_transactions_middleware
from notifier.migrate import schema_scripts
from notifier.notifications.api import NotificationController
from notifier.preferences.api import PreferenceController, UnsubscribeController
from notifier.rate_limits.api import RateLimitController
from notifier.rules.api import RuleController
from notifier.services import Services
from notifier.settings import Settings
from notifier.telemetry.api import metrics_endpoint
from notifier.telemetry.metrics import Metrics
from notifier.telemetry.stats import DatabaseStats
from notifier.telemetry.tracing import tracing_enabled
from notifier.templates.api import TemplateController
from notifier.ui import DashboardPlugin


async def list_every_method_in_allow(message: Message, scope: Scope) -> None:
    """Correct the ``Allow`` header of Litestar's automatic ``OPTIONS`` answers.

    When several handlers share a path, Litestar (2.25) keeps the ``OPTIONS`` handler made
    for the first one, which lists only that handler's methods. Found by the fuzz tests.
    """
    if scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS":
        return
    if message["type"] != "http.response.start" or message["status"] != HTTP_204_NO_CONTENT:
        return
    for route in scope["app"].routes:
        if isinstance(route, HTTPRoute) and scope["route_handler"] in route.route_handlers:
            MutableScopeHeaders(message)["allow"] = ", ".join(sorted(route.methods))
            return


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> Litestar:
    """Build the API. The pool opens on startup and closes on shutdown.

    ``metrics``: a registry shared with a worker in the same process (``notifier dev``).
    """
    recipients.load_checks()  # a worker loads them when first used; the API uses them early

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(
            settings, name="notifier-api", metrics=metrics, runs_jobs=False
        ) as services:
            app.state.services = services
            services.metrics.count_http_requests()
            app.state.event_publisher = EventPublisher(services.pool, services.metrics)
            app.state.database_stats = DatabaseStats(settings, services.pool)
            services.metrics.registry.register(app.state.database_stats)
            try:
                yield
            finally:
                await app.state.event_publisher.close()
                services.metrics.registry.unregister(app.state.database_stats)

    def provide_services() -> Services:
        services: Services = app.state.services
        return services

    # Read once: the scripts do not change while the process runs.
    scripts = schema_scripts()

    def provide_publisher() -> EventPublisher:
        publisher: EventPublisher = app.state.event_publisher
        return publisher

    def provide_database_stats() -> DatabaseStats:
        stats: DatabaseStats = app.state.database_stats
        return stats

    app = Litestar(
        route_handlers=[
            EventController,
            NotificationController,
            RuleController,
            EndpointController,
            TenantSecretController,
            PreferenceController,
            UnsubscribeController,
            RateLimitController,
            TemplateController,
            health,
            liveness,
            readiness,
            metrics_endpoint,
        ],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "publisher": Provide(provide_publisher, sync_to_thread=False),
            "database_stats": Provide(provide_database_stats, sync_to_thread=False),
            "schema": Provide(lambda: scripts, sync_to_thread=False),
            "idempotent": Provide(idempotent_request),
            "principal": Provide(provide_principal),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        # Server spans only when tracing is on: no per-request cost otherwise.
        middleware=[
            *([tracing_middleware()] if tracing_enabled() else []),
            request_metrics_middleware,
            # A request whose connection died before COMMIT runs again on a fresh one.
            retry_lost_transactions_middleware,
        ],
        # The process's entry point configures logging (notifier.telemetry); Litestar's
        # default would replace the root handler with its own text format.
        logging_config=None,
        state=State({"authenticator": Authenticator(settings)}),
        before_send=[list_every_method_in_allow],
        # 422 for a query parameter the operation does not declare, 415 for a body in a media
        # type it does not declare, 400 for one that is not UTF-8: before any handler or
        # dependency reads the request (http/request_checks.py).
        before_request=RequestChecks(),
        # The dashboard at /ui (notifier.ui): its routes, templates, sessions and start-up.
        plugins=[ClosedStructSchemaPlugin(), DashboardPlugin(settings)],
        # Litestar answers 413 (a problem document, see problems.py) before reading more.
        request_max_body_size=settings.api_max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="notifier",
            version="0.1.0",
            description="Transactional outbox for event-driven and scheduled notifications.",
            path=DOCS_PATH,
            # Swagger UI from an installed package: no CDN, so the docs work offline.
            render_plugins=[swagger_ui_plugin()],
            openapi_router=docs_router(),
            components=Components(
                security_schemes={
                    BEARER_SCHEME: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="ntf_<key id>_<secret>",
                        description="An API key from `notifier keys create`.",
                    )
                }
            ),
        ),
    )
    check_guarded(app)
    check_direct_routes(app)
    return app
