"""SQL for tenants and API keys. Functions take a connection and never commit."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec

from notifier.db import Connection


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant: whose events, rules and notifications they are."""

    id: str
    name: str
    created_at: datetime.datetime


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A stored API key (never its secret)."""

    id: str
    tenant_id: str
    name: str
    scopes: list[str]
    created_at: datetime.datetime
    expires_at: datetime.datetime | None
    revoked_at: datetime.datetime | None
    last_used_at: datetime.datetime | None
    rate_limit_per_second: float | None
    rate_limit_burst: int | None


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    """What authenticating a request needs of a key."""

    key: ApiKey
    secret_sha256: bytes


def _api_key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(**{name: row[name] for name in ApiKey.__struct_fields__})


async def insert_tenant(conn: Connection, tenant_id: str, name: str) -> Tenant | None:
    """Create a tenant; None if one with that id exists."""
    cursor = await conn.execute(
        """
        INSERT INTO notifier.tenants (id, name) VALUES (%s, %s)
        ON CONFLICT (id) DO NOTHING
        RETURNING id, name, created_at
        """,
        [tenant_id, name],
    )
    row = await cursor.fetchone()
    return Tenant(**row) if row else None


async def list_tenants(conn: Connection) -> list[Tenant]:
    """Every tenant, by id."""
    cursor = await conn.execute("SELECT id, name, created_at FROM notifier.tenants ORDER BY id")
    return [Tenant(**row) for row in await cursor.fetchall()]


async def tenant_exists(conn: Connection, tenant_id: str) -> bool:
    """Whether ``tenant_id`` names a tenant."""
    cursor = await conn.execute("SELECT 1 FROM notifier.tenants WHERE id = %s", [tenant_id])
    return await cursor.fetchone() is not None


async def insert_key(
    conn: Connection,
    *,
    key_id: str,
    tenant_id: str,
    name: str,
    secret_sha256: bytes,
    scopes: list[str],
    expires_at: datetime.datetime | None,
    rate_limit_per_second: float | None = None,
    rate_limit_burst: int | None = None,
) -> ApiKey:
    """Store a new key's hash and metadata."""
    cursor = await conn.execute(
        """
        INSERT INTO notifier.api_keys
            (id, tenant_id, name, secret_sha256, scopes, expires_at, rate_limit_per_second,
             rate_limit_burst)
        VALUES (%(id)s, %(tenant_id)s, %(name)s, %(secret_sha256)s, %(scopes)s, %(expires_at)s,
                %(rate_limit_per_second)s, %(rate_limit_burst)s)
        RETURNING *
        """,
        {
            "id": key_id,
            "tenant_id": tenant_id,
            "name": name,
            "secret_sha256": secret_sha256,
            "scopes": scopes,
            "expires_at": expires_at,
            "rate_limit_per_second": rate_limit_per_second,
            "rate_limit_burst": rate_limit_burst,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    return _api_key(row)


async def get_key(conn: Connection, key_id: str) -> StoredKey | None:
    """A key with its secret's hash, for authentication; None if unknown."""
    cursor = await conn.execute("SELECT * FROM notifier.api_keys WHERE id = %s", [key_id])
    row = await cursor.fetchone()
    return StoredKey(key=_api_key(row), secret_sha256=bytes(row["secret_sha256"])) if row else None


async def list_keys(conn: Connection, tenant_id: str | None = None) -> list[ApiKey]:
    """Keys (of one tenant, or all), oldest first."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.api_keys
        WHERE %(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s
        ORDER BY tenant_id, created_at, id
        """,
        {"tenant_id": tenant_id},
    )
    return [_api_key(row) for row in await cursor.fetchall()]


async def revoke_key(conn: Connection, key_id: str) -> ApiKey | None:
    """Revoke a key (keeping its first revocation time); None if unknown."""
    cursor = await conn.execute(
        """
        UPDATE notifier.api_keys SET revoked_at = coalesce(revoked_at, now())
        WHERE id = %s
        RETURNING *
        """,
        [key_id],
    )
    row = await cursor.fetchone()
    return _api_key(row) if row else None


async def delete_keys_named(conn: Connection, tenant_id: str, name: str) -> int:
    """Remove a tenant's keys called ``name``; how many there were."""
    cursor = await conn.execute(
        "DELETE FROM notifier.api_keys WHERE tenant_id = %s AND name = %s", [tenant_id, name]
    )
    return cursor.rowcount


async def touch_key(conn: Connection, key_id: str) -> None:
    """Record that the key was used (callers throttle this to about once a minute)."""
    await conn.execute("UPDATE notifier.api_keys SET last_used_at = now() WHERE id = %s", [key_id])


async def revoke_tenant_key(conn: Connection, tenant_id: str, key_id: str) -> ApiKey | None:
    """Revoke one of the tenant's keys (keeping its first revocation time); None if the
    tenant has no key of that id."""
    cursor = await conn.execute(
        """
        UPDATE notifier.api_keys SET revoked_at = coalesce(revoked_at, now())
        WHERE id = %s AND tenant_id = %s
        RETURNING *
        """,
        [key_id, tenant_id],
    )
    row = await cursor.fetchone()
    return _api_key(row) if row else None
