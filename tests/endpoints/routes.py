"""Every route of one webhook endpoint, shared by its cross-tenant test
(tests/endpoints/test_api.py) and the check that every route with an id is tested for
tenant isolation somewhere (tests/auth/test_tenancy.py)."""

from __future__ import annotations

from typing import Any

ENDPOINT_PATH = "/api/v1/endpoints/{endpoint_id}"

# (method, path after the endpoint's id, a well-formed body)
ENDPOINT_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "", None),
    ("PATCH", "", {"description": "mine now"}),
    ("DELETE", "", None),
    ("GET", "/secret", None),
    ("POST", "/secret/rotate", {}),
    ("GET", "/attempts", None),
    ("POST", "/test", {}),
    ("POST", "/recover", {"since": "2026-01-01T00:00:00Z"}),
]
