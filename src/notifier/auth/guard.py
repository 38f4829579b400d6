"""Authenticating requests: the ``requires(scope)`` guard every API handler declares.

The guard reads ``Authorization: Bearer <key>``, checks the key against the database
through a short in-process cache, applies the key's rate limit, checks the scope, and
leaves the :class:`~notifier.tenancy.Principal` for the handler's ``principal`` dependency.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler
from litestar.routes import HTTPRoute

from notifier.auth import queries
from notifier.auth.keys import parse_token, secret_matches
from notifier.auth.ratelimit import RateLimiter, retry_after_header
from notifier.db import Pool, transaction
from notifier.errors import ProblemError
from notifier.services import Services
from notifier.settings import Settings
from notifier.tenancy import PRINCIPAL_STATE_KEY, Principal, Scope

# Past this many cached keys the oldest entry goes: a bound, not a tuning knob.
MAX_CACHED_KEYS = 10_000
# last_used_at is written at most this often per key and API process.
LAST_USED_PRECISION = datetime.timedelta(minutes=1)
# Every route under this prefix must declare a scope; /health and /schema stay open.
AUTHENTICATED_PREFIX = "/api/"
# The OpenAPI security scheme, and the requirement each API controller declares with it.
BEARER_SCHEME = "apiKey"
BEARER_SECURITY: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}]


def unauthorized(detail: str, *, invalid_token: bool = True) -> ProblemError:
    """A 401 that says how to authenticate (RFC 6750), never echoing what was sent."""
    challenge = 'Bearer realm="notifier"'
    if invalid_token:
        challenge += ', error="invalid_token"'
    return ProblemError(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def forbidden(scope: Scope) -> ProblemError:
    """A 403 naming the scope the key lacks."""
    return ProblemError(
        403,
        "Forbidden",
        f"this API key lacks the scope {scope.value!r}",
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="notifier", error="insufficient_scope", scope="{scope.value}"'
            )
        },
    )


def too_many_requests(wait_seconds: float) -> ProblemError:
    """A 429 telling the client when to come back."""
    retry_after = retry_after_header(wait_seconds)
    return ProblemError(
        429,
        "Too Many Requests",
        f"this API key's rate limit is exhausted; retry after {retry_after} s",
        headers={"Retry-After": retry_after},
    )


class _CachedKey(msgspec.Struct, frozen=True):
    fetched_at: float
    stored: queries.StoredKey | None


class Authenticator:
    """Checks API keys, caching each key's row for ``api_key_cache_seconds``.

    The cache means a request costs no database round trip for its key; the price is that
    a revoked key keeps working for up to that long in each API process. Expiry is checked
    on every request against the cached row, so it is exact.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._cache: dict[str, _CachedKey] = {}
        self.limiter = RateLimiter(clock)

    async def authenticate(self, pool: Pool, authorization: str | None) -> queries.ApiKey:
        """The live key a request's ``Authorization`` header carries, or a 401."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized(
                "send an API key as 'Authorization: Bearer <key>'", invalid_token=False
            )
        parsed = parse_token(token.strip())
        if parsed is None:
            raise unauthorized("the API key is malformed")
        key_id, secret = parsed
        stored = await self._lookup(pool, key_id, secret)
        if stored is None or not secret_matches(secret, stored.secret_sha256):
            raise unauthorized("the API key is not valid")
        key = stored.key
        if key.revoked_at is not None:
            raise unauthorized(f"API key {key.id} was revoked")
        if key.expires_at is not None and key.expires_at <= _now():
            raise unauthorized(f"API key {key.id} has expired")
        return key

    async def live_key(self, pool: Pool, key_id: str) -> queries.ApiKey | None:
        """The key ``key_id`` if it exists and is neither revoked nor expired, else None.

        For callers that checked the key's secret earlier and kept only its id (the
        dashboard's sessions): the same cached row as :meth:`authenticate`, so a revoked
        key stops working within ``api_key_cache_seconds`` for them too.
        """
        stored = await self._lookup(pool, key_id, None)
        if stored is None:
            return None
        key = stored.key
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= _now()):
            return None
        return key

    def check_rate(self, key: queries.ApiKey) -> None:
        """Count one request against the key's limit; a 429 when it is exhausted."""
        settings = self._settings
        wait = self.limiter.acquire(
            key.id,
            key.rate_limit_per_second or settings.api_rate_limit_per_second,
            key.rate_limit_burst or settings.api_rate_limit_burst,
        )
        if wait is not None:
            raise too_many_requests(wait)

    async def _lookup(
        self, pool: Pool, key_id: str, secret: str | None
    ) -> queries.StoredKey | None:
        now = self._clock()
        entry = self._cache.get(key_id)
        if entry is not None and now - entry.fetched_at < self._settings.api_key_cache_seconds:
            return entry.stored
        async with transaction(pool) as conn:
            stored = await queries.get_key(conn, key_id)
            # Only a presented secret is a use of the key (a session re-checking is not).
            if stored is not None and secret is not None and _due_for_touch(stored, secret):
                await queries.touch_key(conn, key_id)
        self._cache.pop(key_id, None)  # re-inserted last: the dict's order is its age
        if len(self._cache) >= MAX_CACHED_KEYS:
            del self._cache[next(iter(self._cache))]
        self._cache[key_id] = _CachedKey(now, stored)
        return stored


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _due_for_touch(stored: queries.StoredKey, secret: str) -> bool:
    """Whether to record a use: a genuine, live key not marked used within the last minute."""
    key = stored.key
    now = _now()
    return (
        secret_matches(secret, stored.secret_sha256)
        and key.revoked_at is None
        and (key.expires_at is None or key.expires_at > now)
        and (key.last_used_at is None or key.last_used_at < now - LAST_USED_PRECISION)
    )


class ScopeGuard:
    """Litestar guard: the request must carry a valid API key holding ``scope``."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
        """Authenticate, rate-limit, then check the scope (401, 429, 403 in that order)."""
        app_state = connection.app.state
        authenticator: Authenticator = app_state.authenticator
        services: Services = app_state.services
        key = await authenticator.authenticate(
            services.pool, connection.headers.get("authorization")
        )
        authenticator.check_rate(key)
        principal = Principal(tenant_id=key.tenant_id, scopes=frozenset(key.scopes), key_id=key.id)
        if not principal.allows(self.scope):
            raise forbidden(self.scope)
        connection.state[PRINCIPAL_STATE_KEY] = principal


class UncopiedGuardsRouteHandler(HTTPRouteHandler):
    """Litestar's route handler, whose guards get the handler itself rather than a copy.

    Litestar copies the handler for every guard call so that a guard cannot change it: on
    ``POST /api/v1/events/`` that copy (some sixty attributes) cost more than the key check
    itself. Notifier's guards (:class:`ScopeGuard`) never look at the handler, so the
    busiest route, the publish, uses this class:
    ``@UncopiedGuardsRouteHandler("/", http_method="POST", ...)``.
    """

    async def authorize_connection(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        for guard in self.resolve_guards():
            # resolve_guards() made every guard async, as Litestar's own call assumes.
            await guard(connection, self)  # type: ignore[misc]


def requires(scope: Scope) -> ScopeGuard:
    """The guard a handler declares: ``@get(..., guards=[requires(Scope.EVENTS_READ)])``."""
    return ScopeGuard(scope)


def required_scope(handler: BaseRouteHandler) -> Scope | None:
    """The scope a handler's guard demands, if it has one."""
    for guard in handler.resolve_guards():
        if isinstance(guard, ScopeGuard):
            return guard.scope
    return None


def check_guarded(app: Litestar) -> None:
    """Refuse to build an app in which an API route would answer without a key."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith(AUTHENTICATED_PREFIX):
            continue
        for handler in route.route_handlers:
            # Litestar's own OPTIONS handlers answer CORS preflights, which carry no key.
            if handler.http_methods <= {"OPTIONS"}:
                continue
            if required_scope(handler) is None:
                raise RuntimeError(
                    f"{sorted(handler.http_methods)} {route.path} declares no "
                    "guards=[requires(Scope...)]: every API route needs one"
                )
