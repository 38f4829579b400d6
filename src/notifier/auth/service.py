"""Managing tenants and API keys: the use cases behind ``notifier tenants``, ``notifier keys``
and the dashboard's tenant switch.

Each function is one transaction. Only :func:`create_key` ever sees a key's secret, and it
hands it back exactly once.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from notifier.auth import queries
from notifier.auth.keys import issue_key, parse_token, secret_matches
from notifier.db import Pool, create_pool, transaction
from notifier.errors import not_found
from notifier.rate_limits.gcra import MIN_PER_SECOND, check_limit
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT, Scope

DEV_KEY_NAME = "notifier dev"
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DURATION = re.compile(r"^(?P<n>[1-9][0-9]{0,5})(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class AdminError(ValueError):
    """An admin command cannot do what was asked; the message says why."""


@asynccontextmanager
async def admin_pool(settings: Settings) -> AsyncIterator[Pool]:
    """A small pool for one admin command."""
    pool = create_pool(
        settings.replace(database_pool_min_size=1, database_pool_max_size=2), name="notifier-admin"
    )
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


def parse_expiry(text: str) -> datetime.timedelta:
    """``90d``, ``12h``, ``2w``, ``30m``, ``45s`` as a duration."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise AdminError(f"expiry {text!r} is not a number followed by s, m, h, d or w (e.g. 90d)")
    return datetime.timedelta(**{_UNITS[match["unit"]]: int(match["n"])})


def checked_scopes(names: Iterable[str]) -> list[str]:
    """The requested scopes, each a known one (comma-separated lists are split)."""
    scopes = sorted({s.strip() for name in names for s in name.split(",") if s.strip()})
    known = {scope.value for scope in Scope}
    unknown = [scope for scope in scopes if scope not in known]
    if unknown or not scopes:
        raise AdminError(f"unknown or no scopes {unknown}; choose from {sorted(known)}")
    return scopes


async def create_tenant(pool: Pool, tenant_id: str, name: str = "") -> queries.Tenant:
    """Create a tenant; an error if the id is taken or not a slug."""
    if not _TENANT_ID.match(tenant_id):
        raise AdminError(
            f"tenant id {tenant_id!r} must be 1 to 63 of a-z, 0-9, - and _, starting with a-z or 0-9"
        )
    async with transaction(pool) as conn:
        tenant = await queries.insert_tenant(conn, tenant_id, name)
    if tenant is None:
        raise AdminError(f"tenant {tenant_id!r} exists already")
    return tenant


async def list_tenants(pool: Pool) -> list[queries.Tenant]:
    """Every tenant."""
    async with transaction(pool) as conn:
        return await queries.list_tenants(conn)


async def create_key(
    pool: Pool,
    *,
    tenant_id: str = DEFAULT_TENANT,
    scopes: Iterable[str],
    name: str = "",
    expires_in: datetime.timedelta | None = None,
    rate_limit_per_second: float | None = None,
    rate_limit_burst: int | None = None,
) -> tuple[queries.ApiKey, str]:
    """A new key for ``tenant_id``: its stored record and the token, to be shown once."""
    checked = checked_scopes(scopes)
    # Either may be left to the API's default; each given one must lie within the bounds.
    problem = check_limit(
        MIN_PER_SECOND if rate_limit_per_second is None else rate_limit_per_second,
        1 if rate_limit_burst is None else rate_limit_burst,
    )
    if problem:
        raise AdminError(f"--rate-limit/--burst: {problem}")
    issued = issue_key()
    expires_at = datetime.datetime.now(datetime.UTC) + expires_in if expires_in else None
    async with transaction(pool) as conn:
        if not await queries.tenant_exists(conn, tenant_id):
            raise AdminError(f"no tenant {tenant_id!r}; create it with `notifier tenants create`")
        key = await queries.insert_key(
            conn,
            key_id=issued.key_id,
            tenant_id=tenant_id,
            name=name,
            secret_sha256=issued.secret_sha256,
            scopes=checked,
            expires_at=expires_at,
            rate_limit_per_second=rate_limit_per_second,
            rate_limit_burst=rate_limit_burst,
        )
    return key, issued.token


async def list_keys(pool: Pool, tenant_id: str | None = None) -> list[queries.ApiKey]:
    """Keys of one tenant, or of all."""
    async with transaction(pool) as conn:
        return await queries.list_keys(conn, tenant_id)


async def revoke_key(pool: Pool, key_id: str) -> queries.ApiKey:
    """Revoke a key by its id; it stops working within ``api_key_cache_seconds``."""
    async with transaction(pool) as conn:
        key = await queries.revoke_key(conn, key_id)
    if key is None:
        raise AdminError(f"no API key {key_id!r}")
    return key


async def ensure_dev_key(pool: Pool, previous: str | None) -> str:
    """The admin key of the default tenant that ``notifier dev`` prints.

    ``previous`` (the key printed last time) is kept while it works; otherwise, on a fresh
    database or after a revoke, the old dev key is replaced by a new one.
    """
    if previous is not None and await _works(pool, previous):
        return previous
    async with transaction(pool) as conn:
        await queries.delete_keys_named(conn, DEFAULT_TENANT, DEV_KEY_NAME)
    _, token = await create_key(pool, scopes=[Scope.ADMIN], name=DEV_KEY_NAME)
    return token


async def _works(pool: Pool, token: str) -> bool:
    parsed = parse_token(token)
    if parsed is None:
        return False
    async with transaction(pool) as conn:
        stored = await queries.get_key(conn, parsed[0])
    return (
        stored is not None
        and secret_matches(parsed[1], stored.secret_sha256)
        and stored.key.revoked_at is None
        and stored.key.expires_at is None
    )


async def revoke_tenant_key(pool: Pool, tenant_id: str, key_id: str) -> queries.ApiKey:
    """Revoke one of the tenant's keys (the dashboard's API keys page); another tenant's
    key is a 404 like a missing one. It stops working within ``api_key_cache_seconds``."""
    async with transaction(pool) as conn:
        key = await queries.revoke_tenant_key(conn, tenant_id, key_id)
    if key is None:
        raise not_found("API key", key_id)
    return key
