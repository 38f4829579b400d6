"""The interactive API docs at ``/schema``: Swagger UI, served by the app itself.

Its files come from the pinned ``openapi-ui-bundles`` package (Swagger UI 5.17, which reads
the OpenAPI 3.1 that Litestar writes), not from a CDN: the page works without internet
access and shows the same UI in every deployment of a release.
"""

from __future__ import annotations

from typing import Any

from litestar import Router
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from openapi_ui_bundles import swagger_ui

DOCS_PATH = "/schema"
ASSETS_PATH = f"{DOCS_PATH}/assets"
# Litestar answers any other single-segment path under the docs with an HTML page of its
# own (``handle_schema_path_not_found``); this module makes it a 404 like every other one.
_LITESTAR_DOCS_NOT_FOUND = "handle_schema_path_not_found"


def _not_found_like_every_other_path(
    connection: ASGIConnection[Any, Any, Any, Any],
    handler: BaseRouteHandler,
) -> None:
    if handler.handler_name == _LITESTAR_DOCS_NOT_FOUND:
        raise NotFoundException


def docs_router() -> Router:
    """The router Litestar's OpenAPI plugin completes with the UI, the schema and the 404s."""
    assets = create_static_files_router(
        path="/assets",
        directories=[swagger_ui.static_path],
        name="docs-assets",
        include_in_schema=False,
        # The files change only with the pinned package, that is with a release.
        cache_control=CacheControlHeader(max_age=86400, public=True),
    )
    return Router(
        DOCS_PATH,
        route_handlers=[assets],
        guards=[_not_found_like_every_other_path],
        include_in_schema=False,
    )


def swagger_ui_plugin() -> SwaggerRenderPlugin:
    """Swagger UI at ``/schema`` (and ``/schema/swagger``), every file from :func:`docs_router`."""
    return SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )
