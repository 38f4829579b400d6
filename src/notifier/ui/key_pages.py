"""The dashboard's API keys page (``admin`` keys only): the tenant's keys, a form that
creates one and shows its token once, and revocation; through :mod:`notifier.auth.service`,
which ``notifier keys`` uses too. The token is on that one answer only (``no-store``, like
every dashboard page): the database keeps its hash.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from notifier.auth import service
from notifier.services import Services
from notifier.tenancy import Scope
from notifier.ui.auth import SCOPE_OPT, current_tenant
from notifier.ui.pages import UI_PATH, page

ADMIN = {SCOPE_OPT: Scope.ADMIN.value}
LIST_PATH = f"{UI_PATH}/keys"
MAX_NAME_LENGTH = 200


async def _keys_page(
    request: Request[Any, Any, Any],
    *,
    values: dict[str, Any],
    errors: dict[str, str],
    token: str | None = None,
    status_code: int = 200,
) -> Template:
    services: Services = request.app.state.services
    keys = await service.list_keys(services.pool, current_tenant(request))
    return await page(
        request,
        "keys.html",
        current="ui-keys",
        status_code=status_code,
        keys=sorted(keys, key=lambda key: key.created_at, reverse=True),
        scopes=[scope.value for scope in Scope],
        values=values,
        errors=errors,
        token=token,
        revoked=request.query_params.get("revoked"),
    )


@get("/keys", name="ui-keys", opt=ADMIN)
async def key_list(request: Request[Any, Any, Any]) -> Template:
    """The tenant's keys (never their secrets) and the create form."""
    return await _keys_page(request, values={"name": "", "scopes": [], "expires": ""}, errors={})


@post("/keys", name="ui-key-create", opt=ADMIN, status_code=200)
async def key_create(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """Create a key of the tenant shown; its token appears on this answer only."""
    form = await request.form()
    values: dict[str, Any] = {
        "name": str(form.get("name", "")).strip(),
        "scopes": [str(s) for s in form.getall("scopes", [])],
        "expires": str(form.get("expires", "")).strip(),
    }
    errors: dict[str, str] = {}
    if len(values["name"]) > MAX_NAME_LENGTH:
        errors["name"] = f"at most {MAX_NAME_LENGTH} characters"
    try:
        scopes = service.checked_scopes(values["scopes"])
    except service.AdminError:
        errors["scopes"] = "choose at least one scope"
    expires_in = None
    if values["expires"]:
        try:
            expires_in = service.parse_expiry(values["expires"])
        except service.AdminError as exc:
            errors["expires"] = str(exc)
    if errors:
        return await _keys_page(request, values=values, errors=errors, status_code=422)
    try:
        _, token = await service.create_key(
            services.pool,
            tenant_id=current_tenant(request),
            scopes=scopes,
            name=values["name"],
            expires_in=expires_in,
        )
    except service.AdminError as exc:
        return await _keys_page(request, values=values, errors={"name": str(exc)}, status_code=422)
    blank = {"name": "", "scopes": [], "expires": ""}
    return await _keys_page(request, values=blank, errors={}, token=token, status_code=201)


@post("/keys/{key_id:str}/revoke", name="ui-key-revoke", opt=ADMIN, status_code=303)
async def key_revoke(
    request: Request[Any, Any, Any], services: NamedDependency[Services], key_id: FromPath[str]
) -> Redirect:
    """Revoke one of the tenant's keys (another tenant's is a 404)."""
    await service.revoke_tenant_key(services.pool, current_tenant(request), key_id)
    return Redirect(f"{LIST_PATH}?revoked={key_id}", status_code=303)


ROUTES = [key_list, key_create, key_revoke]
