"""Who is calling: the tenant a request acts for and what it may do.

Every handler that reads or writes tenant data takes ``principal`` and scopes its queries
with ``principal.tenant_id``. Until API keys land, every request acts for the
``default`` tenant with every scope.
"""

from __future__ import annotations

import uuid

import msgspec

DEFAULT_TENANT = "default"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller."""

    tenant_id: str
    scopes: frozenset[str]
    key_id: uuid.UUID | None = None


async def provide_principal() -> Principal:
    """Litestar dependency: the caller of this request."""
    return Principal(tenant_id=DEFAULT_TENANT, scopes=frozenset({"admin"}))
