"""Who is calling: the tenant a request acts for and what it may do.

Every handler that reads or writes tenant data takes ``principal`` and scopes its queries
with ``principal.tenant_id``. The principal comes from the request's API key, checked by
the :func:`notifier.auth.guard.requires` guard each handler declares.
"""

from __future__ import annotations

import enum

import msgspec

DEFAULT_TENANT = "default"


class Scope(enum.StrEnum):
    """What an API key may do. ``admin`` implies every other scope."""

    EVENTS_WRITE = "events:write"
    EVENTS_READ = "events:read"
    NOTIFICATIONS_WRITE = "notifications:write"
    NOTIFICATIONS_READ = "notifications:read"
    RULES_WRITE = "rules:write"
    RULES_READ = "rules:read"
    TEMPLATES_WRITE = "templates:write"
    TEMPLATES_READ = "templates:read"
    PREFERENCES_WRITE = "preferences:write"
    PREFERENCES_READ = "preferences:read"
    ENDPOINTS_WRITE = "endpoints:write"
    ENDPOINTS_READ = "endpoints:read"
    ADMIN = "admin"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller."""

    tenant_id: str
    scopes: frozenset[str]
    key_id: str | None = None

    def allows(self, scope: Scope) -> bool:
        """Whether the caller holds ``scope`` (``admin`` holds them all)."""
        return Scope.ADMIN in self.scopes or scope in self.scopes


# Where the guard leaves the principal for the handler's dependency.
PRINCIPAL_STATE_KEY = "principal"
