"""Who is signed in to the dashboard, and what they may do.

Sign-in checks an API key exactly as the REST API does (:class:`Authenticator`), then keeps
only the key's id in the session: never the key. Every request after that re-checks the key
through the Authenticator's cache, so a revoked or expired key ends its sessions within
``NOTIFIER_API_KEY_CACHE_SECONDS``, and applies the key's rate limit. The request then acts
as a :class:`~notifier.tenancy.Principal` (left where the API's handlers find theirs) for
the session's current tenant, with the key's scopes.

Switching tenant: an ``admin`` key of the operator's tenant (``default``, the one
``notifier dev`` and a fresh install make their admin key for) may look at any tenant. An
``admin`` key of any other tenant is that tenant's administrator only: the REST API never
lets it near another tenant (docs/security.md), and neither does the dashboard.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from notifier.auth.guard import Authenticator
from notifier.services import Services
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT, PRINCIPAL_STATE_KEY, Principal, Scope

# The tenant whose admin keys may switch to any tenant in the dashboard.
OPERATOR_TENANT = DEFAULT_TENANT
# Where the guard leaves the signed-in session for handlers and templates.
SESSION_STATE_KEY = "ui_session"
# A handler's opt key naming the scope its page needs (absent: any signed-in key).
SCOPE_OPT = "ui_scope"


class UiSession(msgspec.Struct, frozen=True, kw_only=True):
    """What a dashboard session holds: never the key itself."""

    key_id: str
    # The key's own tenant, and the one the pages show now (differs after a switch).
    key_tenant: str
    tenant: str
    # Unix time of the sign-in, for the absolute expiry.
    signed_in_at: float

    def to_dict(self) -> dict[str, Any]:
        """The session as Litestar stores it."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class SignInRequired(Exception):
    """No live session: the page answers with a way to sign in, saying why if known
    (``why``: a key of :data:`notifier.ui.pages.SIGN_IN_REASONS`)."""

    def __init__(self, why: str | None = None) -> None:
        super().__init__(why or "sign in")
        self.why = why


class UiForbidden(PermissionDeniedException):
    """The signed-in key lacks what the page needs."""


def may_switch_tenant(principal: Principal, session: UiSession) -> bool:
    """Whether this session may look at other tenants."""
    return principal.allows(Scope.ADMIN) and session.key_tenant == OPERATOR_TENANT


def _session_of(connection: ASGIConnection[Any, Any, Any, Any]) -> UiSession | None:
    raw = connection.scope.get("session")
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        return msgspec.convert(raw, UiSession)
    except msgspec.ValidationError:
        return None  # written by another version: sign in again


async def signed_in(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard of every dashboard page but sign-in: a live session whose key still works,
    within its rate limit, holding the scope the page declares (``opt={"ui_scope": ...}``)."""
    session = _session_of(connection)
    if session is None:
        raise SignInRequired()
    app_state = connection.app.state
    services: Services = app_state.services
    settings: Settings = services.settings
    if time.time() - session.signed_in_at > settings.ui_session_max_hours * 3600:
        connection.clear_session()
        raise SignInRequired("expired")
    authenticator: Authenticator = app_state.authenticator
    key = await authenticator.live_key(services.pool, session.key_id)
    if key is None:
        connection.clear_session()
        raise SignInRequired("revoked")
    authenticator.check_rate(key)
    principal = Principal(tenant_id=session.tenant, scopes=frozenset(key.scopes), key_id=key.id)
    if session.tenant != session.key_tenant and not may_switch_tenant(principal, session):
        # The key lost its admin scope, or the session was made by an older rule.
        connection.clear_session()
        raise SignInRequired("revoked")
    connection.state[PRINCIPAL_STATE_KEY] = principal
    connection.state[SESSION_STATE_KEY] = session
    scope = handler.opt.get(SCOPE_OPT)
    if scope is not None and not principal.allows(Scope(scope)):
        raise UiForbidden(f"this API key lacks the scope {Scope(scope).value!r}")


def current_session(connection: ASGIConnection[Any, Any, Any, Any]) -> UiSession:
    """The session the guard checked for this request."""
    session = connection.state.get(SESSION_STATE_KEY)
    if not isinstance(session, UiSession):
        raise RuntimeError(f"{connection.url.path} has no signed_in guard")
    return session


def current_principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """Who the request acts as, if the guard let it in."""
    principal = connection.state.get(PRINCIPAL_STATE_KEY)
    return principal if isinstance(principal, Principal) else None


def current_tenant(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The tenant a signed-in page acts for (the guard let the request in: it has one)."""
    principal = current_principal(connection)
    assert principal is not None, "only a page behind the dashboard's guard asks"
    return principal.tenant_id
