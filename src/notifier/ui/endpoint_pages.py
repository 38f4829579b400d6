"""The dashboard's webhook endpoint pages: the list, one endpoint with its recent attempts,
the create and edit forms, enable/disable, a test send and secret rotation, through
:mod:`notifier.endpoints.service` like the REST API and ``notifier endpoints``.

A signing secret is shown on the answer that made it only (creation, rotation); every
dashboard page is ``no-store``. Another tenant's endpoint is the service's 404.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from notifier.endpoints import service
from notifier.endpoints.schemas import (
    Endpoint,
    EndpointCreate,
    EndpointUpdate,
    SigningSecret,
    TestMessage,
    TestResult,
)
from notifier.endpoints.service import EndpointDeps
from notifier.errors import ProblemError
from notifier.services import Services
from notifier.tenancy import Scope
from notifier.ui.auth import SCOPE_OPT, current_tenant
from notifier.ui.forms import FormErrors, convert_fields, service_errors
from notifier.ui.pages import UI_PATH, page

READ = {SCOPE_OPT: Scope.ENDPOINTS_READ.value}
WRITE = {SCOPE_OPT: Scope.ENDPOINTS_WRITE.value}
LIST_PATH = f"{UI_PATH}/endpoints"
FORM_FIELDS = ("url", "description", "type_filter", "headers", "rate_per_second", "rate_burst")
# How many of its latest attempts an endpoint's page shows.
RECENT_ATTEMPTS = 20


def endpoint_values(endpoint: Endpoint) -> dict[str, str]:
    """A stored endpoint as the form's text."""
    rate = endpoint.rate_limit
    return {
        "url": endpoint.url,
        "description": endpoint.description,
        "type_filter": ", ".join(endpoint.type_filter or []),
        "headers": msgspec.json.encode(endpoint.headers).decode() if endpoint.headers else "",
        "rate_per_second": f"{rate.per_second:g}" if rate else "",
        "rate_burst": str(rate.burst) if rate else "",
    }


def _form_values(form: FormMultiDict) -> dict[str, str]:
    return {name: str(form.get(name, "")).strip() for name in FORM_FIELDS}


def _fields(values: dict[str, str], *, blank_as_none: bool) -> dict[str, Any]:
    """The form as the API's body. Type patterns are separated by commas, headers are a
    JSON object, and the rate limit is two fields; a blank optional field is left out
    (create) or cleared (edit). :class:`FormErrors` for text that is not what it says."""
    errors: dict[str, str] = {}
    fields: dict[str, Any] = {"url": values["url"], "description": values["description"]}
    patterns = [part.strip() for part in values["type_filter"].split(",") if part.strip()]
    if patterns or blank_as_none:
        fields["type_filter"] = patterns or None
    if values["headers"]:
        try:
            fields["headers"] = msgspec.json.decode(values["headers"].encode())
        except msgspec.DecodeError as exc:
            errors["headers"] = f"not JSON: {exc}"
    elif blank_as_none:
        fields["headers"] = {}
    if values["rate_per_second"]:
        fields["rate_limit"] = {"per_second": values["rate_per_second"]}
        if values["rate_burst"]:
            fields["rate_limit"]["burst"] = values["rate_burst"]
    elif values["rate_burst"]:
        errors["rate_per_second"] = "give the rate the burst goes with"
    elif blank_as_none:
        fields["rate_limit"] = None
    if errors:
        raise FormErrors(errors)
    return fields


# The API's body names the rate limit as one field; the form shows it as two.
ALIASES = {"rate_limit": "rate_per_second"}


def _service_errors(exc: ProblemError) -> dict[str, str]:
    return service_errors(exc, FORM_FIELDS, fallback="url", aliases=ALIASES)


def _converted(type_: type[Any], values: dict[str, str], *, blank_as_none: bool) -> Any:
    """The form as ``type_`` (the API's create or update body), every field at fault named."""
    try:
        return convert_fields(type_, _fields(values, blank_as_none=blank_as_none))
    except FormErrors as exc:
        raise FormErrors({ALIASES.get(k, k): v for k, v in exc.errors.items()}) from None


async def _endpoint_page(
    request: Request[Any, Any, Any],
    endpoint_id: uuid.UUID,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    secret: SigningSecret | None = None,
    test: TestResult | None = None,
    status_code: int = 200,
) -> Template:
    """One endpoint: its form (read only without ``endpoints:write``), state, actions and
    latest attempts; with the secret just made, or the test just sent, if any."""
    services: Services = request.app.state.services
    tenant = current_tenant(request)
    endpoint = await service.get_endpoint(services.pool, tenant, endpoint_id)
    attempts = await service.list_attempts(
        services.pool, tenant, endpoint_id, limit=RECENT_ATTEMPTS, before_id=None, outcome=None
    )
    return await page(
        request,
        "endpoint.html",
        current="ui-endpoints",
        status_code=status_code,
        endpoint=endpoint,
        values=values or endpoint_values(endpoint),
        errors=errors or {},
        attempts=attempts,
        secret=secret,
        test=test,
        notice=request.query_params.get("done"),
    )


@get("/endpoints", name="ui-endpoints", opt=READ)
async def endpoint_list(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """Every endpoint of the tenant, oldest first."""
    endpoints = await service.list_endpoints(services.pool, current_tenant(request))
    return await page(request, "endpoints.html", current="ui-endpoints", endpoints=endpoints)


async def _new_form(
    request: Request[Any, Any, Any], values: dict[str, str], errors: dict[str, str]
) -> Template:
    return await page(
        request,
        "endpoint_new.html",
        current="ui-endpoints",
        status_code=422 if errors else 200,
        values=values,
        errors=errors,
    )


@get("/endpoints/new", name="ui-endpoint-new", opt=WRITE)
async def endpoint_new(request: Request[Any, Any, Any]) -> Template:
    """An empty endpoint form."""
    return await _new_form(request, dict.fromkeys(FORM_FIELDS, ""), {})


@post("/endpoints/new", name="ui-endpoint-create", opt=WRITE, status_code=201)
async def endpoint_create(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """Create it with the API's use case: its page, with its signing secret shown this
    once; or the form again, each error next to its field."""
    values = _form_values(await request.form())
    try:
        draft = _converted(EndpointCreate, values, blank_as_none=False)
        created = await service.create_endpoint(
            EndpointDeps.of(services), current_tenant(request), draft
        )
    except FormErrors as exc:
        return await _new_form(request, values, exc.errors)
    except ProblemError as exc:
        return await _new_form(request, values, _service_errors(exc))
    return await _endpoint_page(
        request, created.id, secret=SigningSecret(secret=created.secret), status_code=201
    )


@get("/endpoints/{endpoint_id:uuid}", name="ui-endpoint", opt=READ)
async def endpoint_detail(
    request: Request[Any, Any, Any], endpoint_id: FromPath[uuid.UUID]
) -> Template:
    """The endpoint, its latest attempts, and what a writer may do with it."""
    return await _endpoint_page(request, endpoint_id)


@post("/endpoints/{endpoint_id:uuid}", name="ui-endpoint-update", opt=WRITE, status_code=303)
async def endpoint_update(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    endpoint_id: FromPath[uuid.UUID],
) -> Template | Redirect:
    """Change every field of the form (a blank optional field clears it)."""
    values = _form_values(await request.form())
    try:
        change = _converted(EndpointUpdate, values, blank_as_none=True)
        await service.update_endpoint(
            EndpointDeps.of(services),
            current_tenant(request),
            endpoint_id,
            change,
            actor="dashboard",
        )
    except FormErrors as exc:
        return await _endpoint_page(
            request, endpoint_id, values=values, errors=exc.errors, status_code=422
        )
    except ProblemError as exc:
        if exc.status == 404:
            raise
        errors = _service_errors(exc)
        return await _endpoint_page(
            request, endpoint_id, values=values, errors=errors, status_code=422
        )
    return Redirect(f"{LIST_PATH}/{endpoint_id}?done=saved", status_code=303)


@post(
    "/endpoints/{endpoint_id:uuid}/enabled",
    name="ui-endpoint-toggle",
    opt=WRITE,
    status_code=303,
)
async def endpoint_toggle(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    endpoint_id: FromPath[uuid.UUID],
) -> Redirect:
    """Enable (what waited is sent now) or disable it (its notifications wait), as the
    form says: ``enabled=on`` or not, with an optional reason."""
    form = await request.form()
    enabled = form.get("enabled") == "on"
    reason = str(form.get("reason", "")).strip() or None
    change = EndpointUpdate(enabled=enabled)
    if not enabled and reason is not None:
        change = EndpointUpdate(enabled=False, disabled_reason=reason[:1000])
    await service.update_endpoint(
        EndpointDeps.of(services), current_tenant(request), endpoint_id, change, actor="dashboard"
    )
    done = "enabled" if enabled else "disabled"
    return Redirect(f"{LIST_PATH}/{endpoint_id}?done={done}", status_code=303)


@post("/endpoints/{endpoint_id:uuid}/test", name="ui-endpoint-test", opt=WRITE, status_code=200)
async def endpoint_test(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    endpoint_id: FromPath[uuid.UUID],
) -> Template:
    """POST a signed example message to it now; its page, saying what it answered."""
    result = await service.send_test(
        EndpointDeps.of(services), current_tenant(request), endpoint_id, TestMessage()
    )
    return await _endpoint_page(request, endpoint_id, test=result)


@post("/endpoints/{endpoint_id:uuid}/rotate", name="ui-endpoint-rotate", opt=WRITE, status_code=200)
async def endpoint_rotate(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    endpoint_id: FromPath[uuid.UUID],
) -> Template:
    """A new signing secret, shown on this answer only; the old one keeps signing beside
    it for the overlap given (an ISO 8601 duration, PT24H by default)."""
    form = await request.form()
    overlap_text = str(form.get("overlap", "")).strip() or "PT24H"
    try:
        overlap = service.parse_overlap(overlap_text)
    except ProblemError as exc:
        message = exc.errors[0].message if exc.errors else str(exc)
        return await _endpoint_page(
            request, endpoint_id, errors={"overlap": message}, status_code=422
        )
    secret = await service.rotate_secret(
        EndpointDeps.of(services), current_tenant(request), endpoint_id, overlap
    )
    return await _endpoint_page(request, endpoint_id, secret=secret)


ROUTES = [
    endpoint_list,
    endpoint_new,
    endpoint_create,
    endpoint_detail,
    endpoint_update,
    endpoint_toggle,
    endpoint_test,
    endpoint_rotate,
]
