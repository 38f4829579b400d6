"""Every API route needs a key, and a key needs the route's scope."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from notifier.auth.guard import check_guarded, required_scope, requires
from notifier.tenancy import Scope
from tests.conftest import CreateApiKey
from tests.support import assert_problem, bearer

# What each operation needs. A route added without a row here fails the first test, so
# nobody adds an endpoint without deciding (and testing) who may call it.
ROUTE_SCOPES: dict[tuple[str, str], Scope] = {
    ("POST", "/api/v1/events"): Scope.EVENTS_WRITE,
    ("GET", "/api/v1/events"): Scope.EVENTS_READ,
    ("GET", "/api/v1/events/{event_id}"): Scope.EVENTS_READ,
    ("POST", "/api/v1/notifications"): Scope.NOTIFICATIONS_WRITE,
    ("GET", "/api/v1/notifications"): Scope.NOTIFICATIONS_READ,
    ("DELETE", "/api/v1/notifications"): Scope.NOTIFICATIONS_WRITE,
    ("POST", "/api/v1/notifications/replay"): Scope.NOTIFICATIONS_WRITE,
    ("POST", "/api/v1/notifications/cancel"): Scope.NOTIFICATIONS_WRITE,
    ("GET", "/api/v1/notifications/{notification_id}"): Scope.NOTIFICATIONS_READ,
    ("DELETE", "/api/v1/notifications/{notification_id}"): Scope.NOTIFICATIONS_WRITE,
    ("POST", "/api/v1/notifications/{notification_id}/retry"): Scope.NOTIFICATIONS_WRITE,
    ("POST", "/api/v1/rules"): Scope.RULES_WRITE,
    ("GET", "/api/v1/rules"): Scope.RULES_READ,
    ("GET", "/api/v1/rules/{rule_id}"): Scope.RULES_READ,
    ("DELETE", "/api/v1/rules/{rule_id}"): Scope.RULES_WRITE,
    ("PATCH", "/api/v1/rules/{rule_id}"): Scope.RULES_WRITE,
    ("POST", "/api/v1/templates"): Scope.TEMPLATES_WRITE,
    ("GET", "/api/v1/templates"): Scope.TEMPLATES_READ,
    ("GET", "/api/v1/templates/{name}"): Scope.TEMPLATES_READ,
    ("PUT", "/api/v1/templates/{name}"): Scope.TEMPLATES_WRITE,
    ("DELETE", "/api/v1/templates/{name}"): Scope.TEMPLATES_WRITE,
    ("POST", "/api/v1/templates/{name}/preview"): Scope.TEMPLATES_READ,
    ("POST", "/api/v1/templates/preview"): Scope.TEMPLATES_READ,
    ("POST", "/api/v1/preferences"): Scope.PREFERENCES_WRITE,
    ("GET", "/api/v1/preferences"): Scope.PREFERENCES_READ,
    ("DELETE", "/api/v1/preferences/{opt_out_id}"): Scope.PREFERENCES_WRITE,
    ("POST", "/api/v1/endpoints"): Scope.ENDPOINTS_WRITE,
    ("GET", "/api/v1/endpoints"): Scope.ENDPOINTS_READ,
    ("GET", "/api/v1/endpoints/{endpoint_id}"): Scope.ENDPOINTS_READ,
    ("PATCH", "/api/v1/endpoints/{endpoint_id}"): Scope.ENDPOINTS_WRITE,
    ("DELETE", "/api/v1/endpoints/{endpoint_id}"): Scope.ENDPOINTS_WRITE,
    ("GET", "/api/v1/endpoints/{endpoint_id}/secret"): Scope.ENDPOINTS_WRITE,
    ("POST", "/api/v1/endpoints/{endpoint_id}/secret/rotate"): Scope.ENDPOINTS_WRITE,
    ("GET", "/api/v1/endpoints/{endpoint_id}/attempts"): Scope.ENDPOINTS_READ,
    ("POST", "/api/v1/endpoints/{endpoint_id}/test"): Scope.ENDPOINTS_WRITE,
    ("POST", "/api/v1/endpoints/{endpoint_id}/recover"): Scope.ENDPOINTS_WRITE,
    ("GET", "/api/v1/webhook-secret"): Scope.ENDPOINTS_WRITE,
    ("POST", "/api/v1/webhook-secret/rotate"): Scope.ENDPOINTS_WRITE,
    ("GET", "/api/v1/rate-limits"): Scope.ADMIN,
    ("PUT", "/api/v1/rate-limits/{channel}"): Scope.ADMIN,
    ("DELETE", "/api/v1/rate-limits/{channel}"): Scope.ADMIN,
}
OPERATIONS = sorted(ROUTE_SCOPES)


def api_operations(client: AsyncTestClient[Any]) -> dict[tuple[str, str], Scope | None]:
    """Every (method, path) the app serves under /api/, with the scope its guard demands."""
    operations: dict[tuple[str, str], Scope | None] = {}
    for route in client.app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/api/"):
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path).rstrip("/")
        for handler in route.route_handlers:
            for method in handler.http_methods - {"HEAD", "OPTIONS"}:
                operations[(method, path)] = required_scope(handler)
    return operations


def concrete(path: str) -> str:
    """The path with an id in each parameter."""
    return re.sub(r"\{\w+\}", str(uuid.uuid4()), path)


async def test_every_api_route_demands_the_scope_the_table_gives_it(
    client: AsyncTestClient[Any],
) -> None:
    assert api_operations(client) == ROUTE_SCOPES


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_without_a_key_every_route_answers_401_with_a_bearer_challenge(
    client: AsyncTestClient[Any], method: str, path: str
) -> None:
    response = await client.request(method, concrete(path), headers={"Authorization": ""}, json={})

    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_a_key_missing_the_routes_scope_gets_403(
    client: AsyncTestClient[Any], create_api_key: CreateApiKey, method: str, path: str
) -> None:
    needed = ROUTE_SCOPES[(method, path)]
    every_other = [s for s in Scope if s not in {needed, Scope.ADMIN}]
    key = await create_api_key(scopes=every_other)

    response = await client.request(method, concrete(path), headers=bearer(key), json={})

    assert_problem(response, 403)
    assert needed.value in response.json()["detail"]
    assert f'scope="{needed.value}"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_a_key_holding_only_the_routes_scope_gets_past_the_guard(
    client: AsyncTestClient[Any], create_api_key: CreateApiKey, method: str, path: str
) -> None:
    key = await create_api_key(scopes=[ROUTE_SCOPES[(method, path)]])

    response = await client.request(method, concrete(path), headers=bearer(key), json={})

    # An empty body or an unknown id is the handler's business: 404, 422, 2xx, never 401/403.
    assert response.status_code not in {401, 403}, response.text


async def test_health_and_the_api_docs_need_no_key(client: AsyncTestClient[Any]) -> None:
    client.headers.pop("Authorization")

    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_openapi_declares_the_bearer_scheme_on_every_api_operation(
    client: AsyncTestClient[Any],
) -> None:
    document = (await client.get("/schema/openapi.json")).json()

    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path in OPERATIONS:
        operation = document["paths"][path][method.lower()]
        assert operation["security"] == [{"apiKey": []}], (method, path)
        assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)
    assert "security" not in document["paths"]["/health"]["get"]


def test_an_app_with_an_unguarded_api_route_refuses_to_start() -> None:
    @get("/api/v1/forgotten", sync_to_thread=False)
    def forgotten() -> str:
        return "open to anyone"

    @get("/api/v1/guarded", guards=[requires(Scope.EVENTS_READ)], sync_to_thread=False)
    def guarded() -> str:
        return "needs a key"

    check_guarded(Litestar(route_handlers=[guarded]))
    with pytest.raises(RuntimeError, match="/api/v1/forgotten declares no guards"):
        check_guarded(Litestar(route_handlers=[guarded, forgotten]))
