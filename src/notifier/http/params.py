"""Litestar parameters and dependencies shared by the API's handlers.

Litestar documents and applies the constraints of its own ``QueryParameter``,
``PathParameter`` and ``HeaderParameter``, not msgspec's ``Meta``: the HTTP shape of an input
lives here, the value's domain type in the feature's ``schemas.py``.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, PathParameter, QueryParameter

from notifier.api_types import MAX_FILTER_LENGTH
from notifier.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH, IdempotentRequest, identify
from notifier.pagination import MAX_CURSOR_LENGTH, MAX_LIMIT
from notifier.templates.schemas import TEMPLATE_NAME_PATTERN
from notifier.tenancy import PRINCIPAL_STATE_KEY, Principal

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size")]
CursorParameter = Annotated[
    str | None,
    QueryParameter(
        max_length=MAX_CURSOR_LENGTH,
        description="From the previous page's `Link` or `X-Next-Cursor` header",
    ),
]

# Handlers name the parameter ``type`` itself: Litestar's errors give the Python name, not
# an alias.
TypeFilter = Annotated[
    str | None, QueryParameter(max_length=MAX_FILTER_LENGTH, description="Exact type")
]
EntityFilter = Annotated[str | None, QueryParameter(max_length=MAX_FILTER_LENGTH)]
KeyFilter = Annotated[
    str | None, QueryParameter(min_length=1, max_length=MAX_FILTER_LENGTH, description="Exact key")
]
RecipientFilter = Annotated[
    str | None,
    QueryParameter(min_length=1, max_length=MAX_FILTER_LENGTH, description="Exact recipient"),
]
ChannelFilter = Annotated[
    str | None,
    QueryParameter(min_length=1, max_length=MAX_FILTER_LENGTH, description="Exact channel"),
]

# A query parameter holding an instant. Litestar's own conversion of query parameters is
# lax (it reads "0.5" as a Unix time) and skips AwareDatetime's zone check: handlers parse
# these with query_instant instead.
InstantQuery = Annotated[
    str | None, QueryParameter(max_length=64, schema_extra={"format": "date-time"})
]
# templates.schemas.TemplateName in a path.
TemplateNameInPath = Annotated[
    str, PathParameter(pattern=TEMPLATE_NAME_PATTERN, min_length=1, max_length=100)
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=HEADER,
        required=False,
        # Documented, not enforced by Litestar: a bad key is a 400 from idempotent_request.
        schema_extra={"min_length": 1, "max_length": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
        description=(
            "Makes the POST safe to repeat: a repeat with the same key and body returns the "
            "first answer and creates nothing new. Keys are kept for at least a day."
        ),
    ),
]


async def idempotent_request(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    idempotency_key: IdempotencyKey = None,
) -> IdempotentRequest | None:
    """Litestar dependency: the request's idempotency identity, if it sent a key."""
    if idempotency_key is None:
        return None
    return idempotent_request_of(request, principal, idempotency_key, await request.body())


def idempotent_request_of(
    request: Request[Any, Any, Any], principal: Principal, idempotency_key: str | None, body: bytes
) -> IdempotentRequest | None:
    """The request's idempotency identity, if it sent a key (``body``: the request's)."""
    if idempotency_key is None:
        return None
    return identify(
        principal.tenant_id,
        idempotency_key,
        method=request.method,
        path=request.url.path,
        body=body,
    )


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Litestar dependency: the caller of this request, as the handler's guard authenticated it."""
    return principal_of(request)


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The caller of this request, as the handler's guard authenticated it.

    A handler without an authenticating guard has no principal: that is a programming
    error, refused loudly (and caught at start-up by :func:`notifier.auth.guard.check_guarded`).
    """
    principal = request.state.get(PRINCIPAL_STATE_KEY)
    if not isinstance(principal, Principal):
        raise RuntimeError(f"{request.url.path} has no authenticating guard")
    return principal
