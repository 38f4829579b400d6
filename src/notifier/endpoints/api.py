"""HTTP handlers for ``/api/v1/endpoints`` and ``/api/v1/webhook-secret``: decode, call
the use case in :mod:`notifier.endpoints.service`, answer."""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any, TypeVar

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from notifier.api_types import decode_strictly
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.endpoints import service
from notifier.endpoints.schemas import (
    Endpoint,
    EndpointAttempt,
    EndpointCreate,
    EndpointCreated,
    EndpointUpdate,
    Recovered,
    Recovery,
    SecretRotation,
    SigningSecret,
    TestMessage,
    TestResult,
)
from notifier.endpoints.service import EndpointDeps
from notifier.errors import field_error
from notifier.http.body import StrictBody
from notifier.http.params import Limit
from notifier.http.problems import problem_responses
from notifier.pagination import DEFAULT_LIMIT
from notifier.services import Services
from notifier.tenancy import Principal, Scope


class AttemptOutcome(enum.StrEnum):
    """How an attempt ended."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


AttemptCursor = Annotated[
    str | None,
    QueryParameter(max_length=20, description="From the previous page's `X-Next-Cursor` header"),
]


def _attempt_cursor(text: str | None) -> int | None:
    """The attempt id a page starts before; a 400 naming ``cursor`` if it is not one."""
    if text is None:
        return None
    if not text.isdigit() or len(text) > 19:
        raise field_error(
            "cursor", "is not a cursor returned by this API", status=400, source="query"
        )
    return int(text)


T = TypeVar("T", SecretRotation, TestMessage)


def _body_or_defaults(body: bytes, type_: type[T]) -> T:
    """The body as ``type_``; ``null`` means every default. A body is required (the
    document says so): a 400 naming ``body`` without one."""
    if not body.strip():
        raise field_error("body", "is required: send {} for the defaults", status=400)
    if body.strip() == b"null":
        return type_()
    return decode_strictly(body, type_)


class EndpointController(Controller):
    """A tenant's webhook endpoints: where its webhooks go, how they are signed, and how
    their deliveries went."""

    path = "/api/v1/endpoints"
    tags = ["endpoints"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Create a webhook endpoint",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
        dto=StrictBody[EndpointCreate],
        return_dto=None,
    )
    async def create(
        self,
        data: JSONBody[EndpointCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Response[EndpointCreated]:
        """The answer carries the endpoint's signing secret (``whsec_...``); afterwards only
        ``GET .../secret`` shows it."""
        created = await service.create_endpoint(
            EndpointDeps.of(services), principal.tenant_id, data
        )
        return Response(created, status_code=201)

    @get(
        "/",
        summary="List webhook endpoints",
        responses=problem_responses(),
        guards=[requires(Scope.ENDPOINTS_READ)],
    )
    async def list_endpoints(
        self, services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> list[Endpoint]:
        """Every endpoint of the caller's tenant, oldest first."""
        return await service.list_endpoints(services.pool, principal.tenant_id)

    @get(
        "/{endpoint_id:uuid}",
        summary="One webhook endpoint",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.ENDPOINTS_READ)],
    )
    async def get_endpoint(
        self,
        endpoint_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Endpoint:
        """The endpoint (without its secret), or 404."""
        return await service.get_endpoint(services.pool, principal.tenant_id, endpoint_id)

    @patch(
        "/{endpoint_id:uuid}",
        summary="Change, disable or enable a webhook endpoint",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
        dto=StrictBody[EndpointUpdate],
        return_dto=None,
    )
    async def update_endpoint(
        self,
        endpoint_id: FromPath[uuid.UUID],
        data: JSONBody[EndpointUpdate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Endpoint:
        """Change the fields given. ``enabled: false`` (with a ``disabled_reason``) holds
        its notifications, spending no attempt; ``enabled: true`` sends them now."""
        return await service.update_endpoint(
            EndpointDeps.of(services), principal.tenant_id, endpoint_id, data
        )

    @delete(
        "/{endpoint_id:uuid}",
        status_code=204,
        summary="Delete a webhook endpoint",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
    )
    async def delete_endpoint(
        self,
        endpoint_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> None:
        """Its secrets are destroyed and its pending notifications fail."""
        await service.delete_endpoint(services.pool, principal.tenant_id, endpoint_id)

    @get(
        "/{endpoint_id:uuid}/secret",
        summary="The endpoint's signing secret",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
    )
    async def reveal_secret(
        self,
        endpoint_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> SigningSecret:
        """Needs ``endpoints:write``: whoever holds the secret can sign as notifier."""
        return await service.reveal_secret(
            EndpointDeps.of(services), principal.tenant_id, endpoint_id
        )

    @post(
        "/{endpoint_id:uuid}/secret/rotate",
        status_code=200,
        summary="Rotate the endpoint's signing secret",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
    )
    async def rotate_secret(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[SecretRotation | None] = None,
    ) -> SigningSecret:
        """A new secret; for ``overlap`` (default PT24H, at most P7D) every message carries
        a signature by the old secret too, so receivers can switch at their pace."""
        rotation = _body_or_defaults(await request.body(), SecretRotation)
        overlap = service.parse_overlap(rotation.overlap)
        return await service.rotate_secret(
            EndpointDeps.of(services), principal.tenant_id, endpoint_id, overlap
        )

    @get(
        "/{endpoint_id:uuid}/attempts",
        summary="The endpoint's delivery attempts, newest first",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.ENDPOINTS_READ)],
    )
    async def list_attempts(
        self,
        endpoint_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = DEFAULT_LIMIT,
        cursor: AttemptCursor = None,
        outcome: FromQuery[AttemptOutcome | None] = None,
    ) -> Response[list[EndpointAttempt]]:
        """Time, notification, status code, duration, error and the answer's first KiB.
        ``X-Next-Cursor`` (and ``Link``) give the next page."""
        before = _attempt_cursor(cursor)
        rows = await service.list_attempts(
            services.pool,
            principal.tenant_id,
            endpoint_id,
            limit=limit + 1,
            before_id=before,
            outcome=outcome,
        )
        page = rows[:limit]
        headers = {}
        if len(rows) > limit:
            following = str(page[-1].id)
            query = f"limit={limit}" + (f"&outcome={outcome}" if outcome else "")
            headers = {
                "Link": f"<{self.path}/{endpoint_id}/attempts?{query}&cursor={following}>; "
                'rel="next"',
                "X-Next-Cursor": following,
            }
        return Response(page, headers=headers)

    @post(
        "/{endpoint_id:uuid}/test",
        status_code=200,
        summary="Send a signed test message now",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
    )
    async def send_test(
        self,
        request: Request[Any, Any, Any],
        endpoint_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[TestMessage | None] = None,
    ) -> TestResult:
        """The answer says how the endpoint took it: status, duration, error."""
        message = _body_or_defaults(await request.body(), TestMessage)
        return await service.send_test(
            EndpointDeps.of(services), principal.tenant_id, endpoint_id, message
        )

    @post(
        "/{endpoint_id:uuid}/recover",
        status_code=202,
        summary="Replay the endpoint's failed and dead notifications since a time",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
        dto=StrictBody[Recovery],
        return_dto=None,
    )
    async def recover(
        self,
        endpoint_id: FromPath[uuid.UUID],
        data: JSONBody[Recovery],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Recovered:
        """Every one that failed or died at or after ``since`` becomes pending again and is
        sent now, all in one transaction (at most 10,000 per call)."""
        return await service.recover(services.pool, principal.tenant_id, endpoint_id, data.since)


class TenantSecretController(Controller):
    """The secret that signs the tenant's webhooks to bare URLs (not to endpoints)."""

    path = "/api/v1/webhook-secret"
    tags = ["endpoints"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @get(
        "/",
        summary="The tenant's signing secret for bare-URL webhooks",
        responses=problem_responses(),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
    )
    async def reveal(
        self, services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> SigningSecret:
        """Made on first need; no other tenant's webhooks carry its signature."""
        return await service.reveal_tenant_secret(EndpointDeps.of(services), principal.tenant_id)

    @post(
        "/rotate",
        status_code=200,
        summary="Rotate the tenant's signing secret for bare-URL webhooks",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.ENDPOINTS_WRITE)],
    )
    async def rotate(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[SecretRotation | None] = None,
    ) -> SigningSecret:
        """As an endpoint's rotation: the old secret signs beside the new for ``overlap``."""
        rotation = _body_or_defaults(await request.body(), SecretRotation)
        overlap = service.parse_overlap(rotation.overlap)
        return await service.rotate_tenant_secret(
            EndpointDeps.of(services), principal.tenant_id, overlap
        )
