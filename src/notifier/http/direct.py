"""Answering a route without Litestar's per-request handling, for the API's busiest route.

For each request Litestar's route resolves the handler's parameters through a signature
model, calls the handler, and turns what it returns into a :class:`~litestar.Response` and
then into an ASGI response: about a third of the Python calls of ``POST /api/v1/events/``,
whose own work is decoding a small body and one shared statement (docs/performance.md,
"The publish route answers directly").

:class:`answer_directly` is a route handler's innermost middleware that does the same steps
itself: the request object Litestar would build, the handler's guards, the app's
``before_request`` checks (an answer they give is sent as Litestar sends it), then
``answer`` (the function the handler calls too), and the answer encoded as Litestar
encodes it. What stays Litestar's: routing, the middleware outside this one (request
metrics, the retry of lost transactions, tracing), and every error answer: an exception is
rendered by Litestar's exception handling (the app's problem documents), as for any other
route. uvicorn writes the access line, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

# Litestar exports no public name for the exception handling it wraps a route's handler in;
# a move breaks the import loudly.
from litestar._asgi.utils import wrap_in_exception_handler
from litestar.enums import MediaType
from litestar.response import Response
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json, get_serializer

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.handlers import HTTPRouteHandler
    from litestar.types import ASGIApp, Receive, Scope, Send

_JSON = MediaType.JSON.value.encode("latin-1")
# What ``answer`` returns: the status and the value to encode as the JSON body.
Answer = Callable[["Request[Any, Any, Any]"], Awaitable[tuple[int, Any]]]


class answer_directly:  # used as a function: middleware=[answer_directly(...)]
    """The middleware for ``middleware=[...]`` of the one handler whose answers ``answer``
    makes: Litestar's own call of the handler (the middleware's ``app``) is not made.

    ``reads``: the handler's parameters, which ``answer`` reads from the request itself
    (Litestar resolves none of them on this path). Only for handlers that declare nothing
    this path leaves out: :func:`check_direct_routes` refuses the others when the app is
    built.
    """

    def __init__(self, answer: Answer, *, reads: Iterable[str]) -> None:
        self.answer = answer
        self.reads = frozenset(reads)

    def __call__(self, app: ASGIApp) -> ASGIApp:  # Litestar passes ``app`` by name
        # Inside the exception handling, as Litestar puts the handler's own call: metrics
        # and the retry of a lost transaction see the problem document's status, not an
        # exception.
        return wrap_in_exception_handler(_DirectRoute(self.answer))


class _DirectRoute:
    """The ASGI app that answers with ``answer``, built once per route handler."""

    __slots__ = ("_answer",)

    def __init__(self, answer: Answer) -> None:
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What Litestar's HTTPRoute.handle and its handler call do, in the same order.
        handler = cast("HTTPRouteHandler", scope["route_handler"])
        request = handler.resolve_request_class()(scope=scope, receive=receive, send=send)
        if handler.resolve_guards():
            await handler.authorize_connection(connection=request)
        if before_request := handler.resolve_before_request():
            early = await before_request(request)
            if early:  # Litestar then answers with it and does not call the handler
                response = await handler.to_response(
                    app=scope["litestar_app"], data=early, request=request
                )
                await response(scope, receive, send)
                return
        status, content = await self._answer(request)
        body = encode_json(content, get_serializer(handler.resolve_type_encoders()))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    # What a litestar.Response answers by default.
                    (b"content-type", _JSON),
                    (b"content-length", str(len(body)).encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def check_direct_routes(app: Litestar) -> None:
    """Refuse to build an app in which a handler answered directly declares what the direct
    path does not do."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            direct = [m for m in handler.middleware or () if isinstance(m, answer_directly)]
            if direct:
                _check_direct(app, handler, direct[0])


def _check_direct(app: Litestar, handler: HTTPRouteHandler, direct: answer_directly) -> None:
    reads = direct.reads
    parameters = set(handler.parsed_fn_signature.parameters) - {"self"}
    # Litestar wraps a route's middleware around the first one it resolves (the last one the
    # handler lists): any other there would run inside, where nothing reaches it.
    if handler.resolve_middleware()[0] is not direct:
        raise RuntimeError(f"{handler} answers directly, but not from its innermost middleware")
    if parameters != reads:
        raise RuntimeError(
            f"{handler} answers directly, reading {sorted(reads)}, but declares "
            f"{sorted(parameters)}"
        )
    leaves_out = {
        # What Litestar puts between a route's middleware and its handler.
        "app's csrf_config": app.csrf_config,
        "app's compression_config": app.compression_config,
        "app's allowed_hosts": app.allowed_hosts,
        # How Litestar would write the answer.
        "response_class": handler.resolve_response_class() is not Response,
        # Unset: the response's own, JSON for what the direct path answers.
        "media_type": handler.media_type not in ("", MediaType.JSON),
        "after_request": any(layer.after_request for layer in handler.ownership_layers),
        "after_response": handler.resolve_after_response(),
        # Its cache_control and etag too.
        "response_headers": handler.resolve_response_headers(),
        "response_cookies": handler.resolve_response_cookies(),
        "cache": handler.cache,
        "background": handler.background,
        "return_dto": handler.resolve_return_dto(),
    }
    declared = sorted(name for name, value in leaves_out.items() if value)
    if declared:
        raise RuntimeError(
            f"{handler} answers directly, which leaves out its {', '.join(declared)}"
        )
