"""The Litestar application: wires the feature controllers to the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import Message, Scope

from notifier.bootstrap import open_services
from notifier.events.api import EventController
from notifier.health import health
from notifier.idempotency import idempotent_request
from notifier.notifications.api import NotificationController
from notifier.problems import EXCEPTION_HANDLERS
from notifier.rules.api import RuleController
from notifier.services import Services
from notifier.settings import Settings
from notifier.tenancy import provide_principal


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
        route_handlers=[EventController, NotificationController, RuleController, health],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "idempotent": Provide(idempotent_request),
            "principal": Provide(provide_principal),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        before_send=[list_every_method_in_allow],
        # Litestar answers 413 (a problem document, see problems.py) before reading more.
        request_max_body_size=settings.api_max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="notifier",
            version="0.1.0",
            description="Transactional outbox for event-driven and scheduled notifications.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
    )
    return app
