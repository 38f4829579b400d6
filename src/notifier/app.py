"""The Litestar application: wires the feature controllers to the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin

from notifier.bootstrap import open_services
from notifier.events.api import EventController
from notifier.health import health
from notifier.idempotency import idempotent_request
from notifier.notifications.api import NotificationController
from notifier.problems import EXCEPTION_HANDLERS
from notifier.rules.api import RuleController
from notifier.services import Services
from notifier.settings import Settings
from notifier.templates.api import TemplateController
from notifier.tenancy import provide_principal


def create_app(settings: Settings) -> Litestar:
    """Build the API. The pool opens on startup and closes on shutdown."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(settings, name="notifier-api") as services:
            app.state.services = services
            yield

    def provide_services() -> Services:
        services: Services = app.state.services
        return services

    app = Litestar(
        route_handlers=[
            EventController,
            NotificationController,
            RuleController,
            TemplateController,
            health,
        ],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "idempotent": Provide(idempotent_request),
            "principal": Provide(provide_principal),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="notifier",
            version="0.1.0",
            description="Transactional outbox for event-driven and scheduled notifications.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
    )
    return app
