"""Wiring the dashboard into the API's app: one plugin, so ``app.py`` only lists it.

Everything under ``/ui`` goes through, outermost first:

1. :class:`DashboardHeaders`: a Content-Security-Policy that allows nothing but this site
   (no script at all), no caching of signed-in pages, and ``Secure`` on every cookie when
   the browser used https (``X-Forwarded-Proto`` only with ``NOTIFIER_UI_TRUST_FORWARDED_PROTO``).
2. Litestar's CSRF middleware (its shared secret read first, :class:`SharedCsrfSecret`): every POST must carry the token of the form the dashboard
   rendered (double-submit cookie, signed with a secret every API process shares through
   ``notifier.ui_secrets``). The REST API is not behind it: bearer keys are not ambient
   credentials a browser would send on its own.
3. The server-side session middleware (:mod:`notifier.ui.sessions`).

Errors under ``/ui`` are pages in the dashboard's style, not problem documents.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from jinja2 import Environment, PackageLoader, StrictUndefined
from litestar import Litestar, Request, Response, Router
from litestar.config.app import AppConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import CacheControlHeader, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotFoundException, PermissionDeniedException
from litestar.middleware import DefineMiddleware
from litestar.middleware.base import MiddlewareProtocol
from litestar.middleware.csrf import CSRFMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.stores.registry import StoreRegistry
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from notifier.db import single_statement
from notifier.errors import ProblemError
from notifier.services import Services
from notifier.settings import Settings
from notifier.ui import (
    endpoint_pages,
    event_pages,
    key_pages,
    notification_pages,
    pages,
    rule_pages,
    template_pages,
)
from notifier.ui.auth import SignInRequired, UiForbidden, signed_in
from notifier.ui.queries import ui_secret
from notifier.ui.sessions import STORE_NAME, PostgresStore, session_config

logger = logging.getLogger("notifier.ui")

UI_PATH = pages.UI_PATH
STATIC_DIR = Path(__file__).parent / "static"
CSRF_COOKIE = "notifier_ui_csrf"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def is_ui_path(path: str) -> bool:
    """Whether ``path`` is the dashboard's."""
    return path == UI_PATH or path.startswith(f"{UI_PATH}/")


def is_https(scope: Scope, trust_forwarded_proto: bool) -> bool:
    """Whether the browser's request came over https."""
    if scope.get("scheme") == "https":
        return True
    if not trust_forwarded_proto:
        return False
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-proto":
            # A chain of proxies appends: the first is what the browser used.
            return value.decode("latin-1").split(",")[0].strip().lower() == "https"
    return False


class DashboardHeaders(MiddlewareProtocol):
    """Security headers on every dashboard answer, and ``Secure`` cookies over https."""

    def __init__(self, app: ASGIApp, trust_forwarded_proto: bool) -> None:
        self.app = app
        self.trust_forwarded_proto = trust_forwarded_proto

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        secure = is_https(scope, self.trust_forwarded_proto)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                headers["content-security-policy"] = CSP
                headers["x-content-type-options"] = "nosniff"
                headers["referrer-policy"] = "same-origin"
                headers["cache-control"] = "no-store"
                if secure:
                    cookies = headers.getall("set-cookie", [])
                    if cookies:
                        del headers["set-cookie"]
                        for cookie in cookies:
                            attributes = cookie.lower().replace(" ", "").split(";")
                            secured = cookie if "secure" in attributes else f"{cookie}; Secure"
                            headers.add("set-cookie", secured)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def template_environment() -> Environment:
    """Jinja2 over the package's templates: autoescaped, and a typo is an error."""
    environment = Environment(
        loader=PackageLoader("notifier.ui", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["duration"] = pages.duration
    environment.filters["utc"] = pages.utc
    environment.filters["utc_seconds"] = pages.utc_seconds
    return environment


# Error pages ---------------------------------------------------------------------------

_TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Unavailable",
}


def error_page(request: Request[Any, Any, Any], status: int, detail: str) -> Template:
    """An error in the dashboard's style, with its navigation if the guard let the key in."""
    return Template(
        "error.html",
        context={
            "ui": pages.ui_context(request),
            "status": status,
            "title": _TITLES.get(status, "Request failed"),
            "detail": detail,
        },
        status_code=status,
    )


def _sign_in_required(request: Request[Any, Any, Any], exc: SignInRequired) -> Response[Any]:
    query: dict[str, str] = {}
    if exc.why:
        query["why"] = exc.why
    if request.method == "GET":
        query["next"] = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"{UI_PATH}/sign-in" + (f"?{urlencode(query)}" if query else "")
    return Redirect(target, status_code=303)


def _forbidden(request: Request[Any, Any, Any], exc: PermissionDeniedException) -> Template:
    if isinstance(exc, UiForbidden):
        return error_page(request, 403, exc.detail)
    # Litestar's CSRF middleware: the form's token is missing or not this site's.
    return error_page(
        request,
        403,
        "The form did not carry this dashboard's security token (it may be from another "
        "site, or older than your session). Reload the page and try again.",
    )


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Template:
    if isinstance(exc, NotFoundException):
        # Litestar's own "Not Found" for unknown paths says nothing more useful.
        detail = exc.detail if exc.detail != "Not Found" else "There is no such page."
        return error_page(request, 404, detail)
    return error_page(request, exc.status_code, exc.detail)


def _problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[Any]:
    response = error_page(request, exc.status, exc.detail or exc.title)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _database_down(request: Request[Any, Any, Any], exc: Exception) -> Template:
    logger.warning("dashboard: database unavailable: %r", exc)
    response = error_page(request, 503, "The database is unavailable; try again shortly.")
    response.headers["Retry-After"] = "5"
    return response


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Template:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_page(request, 500, "The error was logged.")


UI_EXCEPTION_HANDLERS: dict[type[Exception] | int, Callable[..., Response[Any]]] = {
    SignInRequired: _sign_in_required,
    PermissionDeniedException: _forbidden,
    HTTPException: _http_error,
    ProblemError: _problem,
    psycopg.OperationalError: _database_down,
    TimeoutError: _database_down,
    Exception: _unexpected,
}


def _ui_pages_for_ui_paths(
    original: Callable[..., Response[Any]],
) -> Callable[..., Response[Any]]:
    """The app's handler, except for paths under /ui that no route matched (404, 405)."""

    def handle(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        if is_ui_path(request.url.path):
            return _http_error(request, exc)
        return original(request, exc)

    return handle


# The plugin ------------------------------------------------------------------------------


class DashboardPlugin(InitPluginProtocol):
    """Adds ``/ui`` (pages, assets, templates, session store) to the API's app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = PostgresStore()
        # The real secret is read from the database at the first request (SharedCsrfSecret):
        # every API process signs and accepts the same tokens.
        self.csrf = CSRFConfig(
            secret=secrets.token_hex(32),
            cookie_name=CSRF_COOKIE,
            cookie_path=UI_PATH,
            cookie_httponly=True,
            cookie_samesite="strict",
        )

    def router(self) -> Router:
        """The pages, behind the headers, CSRF and session middleware."""
        settings = self.settings
        sessions = session_config(
            idle=datetime.timedelta(minutes=settings.ui_session_idle_minutes),
            path=UI_PATH,
        )
        signed_in_pages = Router(
            "/",
            route_handlers=[
                *pages.SIGNED_IN_ROUTES,
                *notification_pages.ROUTES,
                *event_pages.ROUTES,
                *rule_pages.ROUTES,
                *template_pages.ROUTES,
                *key_pages.ROUTES,
                *endpoint_pages.ROUTES,
            ],
            guards=[signed_in],
        )
        return Router(
            UI_PATH,
            route_handlers=[*pages.ROUTES, signed_in_pages],
            middleware=[
                DefineMiddleware(
                    DashboardHeaders, trust_forwarded_proto=settings.ui_trust_forwarded_proto
                ),
                DefineMiddleware(SharedCsrfSecret, csrf=self.csrf),
                DefineMiddleware(CSRFMiddleware, config=self.csrf),
                sessions.middleware,
            ],
            exception_handlers=UI_EXCEPTION_HANDLERS,
            include_in_schema=False,
        )

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Add the routes, the templates, the session store and the start-up step."""
        assets = create_static_files_router(
            path=f"{UI_PATH}/static",
            directories=[STATIC_DIR],
            name="ui-static",
            include_in_schema=False,
            # The files change only with a release.
            cache_control=CacheControlHeader(max_age=3600, public=True),
        )
        app_config.route_handlers = [*app_config.route_handlers, self.router(), assets]
        app_config.template_config = TemplateConfig(
            instance=JinjaTemplateEngine.from_environment(template_environment())
        )
        stores = app_config.stores
        if isinstance(stores, StoreRegistry):
            stores.register(STORE_NAME, self.store)
        else:
            app_config.stores = {**(stores or {}), STORE_NAME: self.store}
        handlers = dict(app_config.exception_handlers)
        if HTTPException in handlers:
            handlers[HTTPException] = _ui_pages_for_ui_paths(handlers[HTTPException])
        app_config.exception_handlers = handlers
        app_config.lifespan = [*app_config.lifespan, self._lifespan]
        return app_config

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Bind the store to the pool the app's own lifespan opened. Nothing is read here:
        the API starts while the database is down, and answers 503 until it is back."""
        services: Services = app.state.services
        self.store.bind(services.pool)
        app.state.ui_session_store = self.store
        try:
            yield
        finally:
            self.store.bind(None)


class SharedCsrfSecret(MiddlewareProtocol):
    """Before the CSRF middleware: make sure its config holds the secret every API process
    shares (``notifier.ui_secrets``), read once, at the first dashboard request."""

    def __init__(self, app: ASGIApp, csrf: CSRFConfig) -> None:
        self.app = app
        self.csrf = csrf
        self.loaded = False
        self.lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.loaded and scope["type"] == ScopeType.HTTP:
            async with self.lock:
                if not self.loaded:
                    services: Services = scope["litestar_app"].state.services
                    async with single_statement(services.pool) as conn:
                        self.csrf.secret = await ui_secret(conn, "csrf", secrets.token_hex(32))
                    self.loaded = True
        await self.app(scope, receive, send)
