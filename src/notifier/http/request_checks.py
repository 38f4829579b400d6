"""Requests are what each operation's OpenAPI document declares, and the document says what
the server checks.

Two halves, so that neither can drift from the other:

- :class:`ClosedStructSchemaPlugin` makes the document say ``additionalProperties: false``
  for every msgspec Struct that refuses unknown fields, as decoding does (Litestar's own
  schema of a Struct leaves that out, so clients and fuzzers took closed objects for open).
- :class:`RequestChecks`, the app's ``before_request`` hook, runs after the guards and before
  a handler or dependency reads the request. It holds each operation to its document:
  - a query parameter the operation does not define is a 422 naming it (a misspelt filter,
    ``?stauts=sent``, would otherwise return everything unfiltered);
  - an operation whose document declares a request body accepts only the media types listed
    there (415 otherwise) and, JSON being UTF-8 (RFC 8259 section 8.1), only a body that is
    UTF-8 (400 otherwise).
  Both are read from the document itself, so a route states its inputs once, in its
  signature and OpenAPI description.

Operations that declare no body (GET, DELETE, ``POST .../retry``, the one-click unsubscribe)
ignore whatever body they are sent, as before; so does any request that carries no body.
Routes outside the document (the document's own pages) are not checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

# Litestar exports no public name for its Struct schema plugin; a move breaks the import
# loudly, and tests/test_app.py checks the closed schemas in the document.
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import OpenAPI, Parameter, RequestBody
from litestar.routes import HTTPRoute

from notifier.errors import FieldProblem, ProblemError, field_error

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.datastructures import Headers
    from litestar.handlers import HTTPRouteHandler
    from litestar.openapi.spec import Schema
    from litestar.typing import FieldDefinition

# The only charset a JSON body may name (RFC 8259 section 8.1); "utf8" is a common alias.
_UTF8 = frozenset({"utf-8", "utf8"})
# RFC 5789 (Accept-Patch) and the W3C Linked Data Platform (Accept-Post): the media types a
# 415 answer to these methods advertises.
_ACCEPT_HEADERS = {"PATCH": "Accept-Patch", "POST": "Accept-Post"}


class ClosedStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's schema of a msgspec Struct, closed when the Struct forbids unknown fields."""

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        config: msgspec.structs.StructConfig = field_definition.type_.__struct_config__
        if config.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


class DeclaredInputs(msgspec.Struct, frozen=True):
    """What one operation's document declares it reads."""

    query: frozenset[str]
    # None: the operation takes no body.
    media_types: tuple[str, ...] | None


def declared_inputs(app: Litestar) -> dict[tuple[int, str], DeclaredInputs]:
    """(id of the route handler, method) -> its declared inputs, for every documented one."""
    openapi: OpenAPI = app.openapi_schema
    paths = openapi.paths or {}
    declared: dict[tuple[int, str], DeclaredInputs] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or (item := paths.get(route.path_format)) is None:
            continue
        for method, (handler, _) in route.route_handler_map.items():
            if (operation := getattr(item, method.lower(), None)) is None:
                continue
            query = frozenset(
                p.name
                for p in operation.parameters or []
                if isinstance(p, Parameter) and p.param_in == "query"
            )
            media_types = None
            if isinstance(body := operation.request_body, RequestBody):
                # Litestar's own keys are RequestEncodingType members: str, but not in f-strings.
                media_types = tuple(str(getattr(key, "value", key)) for key in body.content)
            declared[(id(handler), method)] = DeclaredInputs(query, media_types)
    return declared


def media_type_of(content_type: str) -> tuple[str, dict[str, str]]:
    """``("application/json", {"charset": "utf-8"})`` from a ``Content-Type`` value."""
    media_type, *parameters = content_type.split(";")
    params = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        params[name.strip().lower()] = value.strip().strip('"').lower()
    return media_type.strip().lower(), params


def is_json(media_type: str) -> bool:
    """Whether ``media_type`` is JSON: ``application/json`` or an ``application/*+json``."""
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _has_body(headers: Headers) -> bool:
    """Whether the request carries a body, judged from its framing (the body is not read)."""
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class RequestChecks:
    """The ``before_request`` hook: an undeclared query parameter is a 422, a body in a media
    type the operation's document does not list a 415, a JSON body that is not UTF-8 a 400.
    Each names the input at fault.

    The document is read the first time a request needs it (Litestar builds it on demand:
    about 50 ms, once per process).
    """

    def __init__(self) -> None:
        self._declared: dict[tuple[int, str], DeclaredInputs] | None = None

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        if self._declared is None:
            self._declared = declared_inputs(request.app)
        handler: HTTPRouteHandler = request.route_handler
        declared = self._declared.get((id(handler), request.method))
        if declared is None:
            return
        if request.scope["query_string"]:
            _check_query(request, declared.query)
        headers = request.headers
        if declared.media_types is None or not _has_body(headers):
            return
        media_type, params = media_type_of(headers.get("content-type", ""))
        _check_media_type(request.method, media_type, params, declared.media_types)
        if is_json(media_type):
            _check_utf8(await request.body())


def _check_query(request: Request[Any, Any, Any], declared: frozenset[str]) -> None:
    for name in request.query_params:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise field_error(
                name or "query",
                f"is not a query parameter of this operation (it has: {known})",
                source="query",
            )


def _check_media_type(
    method: str, media_type: str, params: dict[str, str], accepted: tuple[str, ...]
) -> None:
    if not media_type:
        message = f"is required with a body: send {_one_of(accepted)}"
    elif media_type not in accepted:
        message = f"must be {_one_of(accepted)}"
    elif is_json(media_type) and params.get("charset", "utf-8") not in _UTF8:
        message = "charset must be utf-8 (JSON is UTF-8)"
    else:
        return
    header = _ACCEPT_HEADERS.get(method)
    raise ProblemError(
        415,
        "Unsupported Media Type",
        f"Content-Type: {message}",
        errors=[FieldProblem(field="Content-Type", message=message, source="header")],
        headers={header: ", ".join(accepted)} if header else None,
    )


def _one_of(media_types: tuple[str, ...]) -> str:
    return media_types[0] if len(media_types) == 1 else "one of " + ", ".join(media_types)


def _check_utf8(body: bytes) -> None:
    """A 400 naming ``body`` unless it is UTF-8.

    msgspec checks a string's encoding only when it builds the string, and raises a bare
    UnicodeDecodeError then (a 500), wherever in the API the body is decoded.
    """
    if body.isascii():  # nearly every body: no copy, no decoding
        return
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        message = f"is not UTF-8: {exc.reason} at byte {exc.start}"
        raise ProblemError(
            400,
            "Malformed request",
            f"body: {message}",
            errors=[FieldProblem(field="body", message=message)],
        ) from None
