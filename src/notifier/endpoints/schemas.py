"""The endpoint resource at the API boundary, and the rows it is read from."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any

import msgspec

from notifier.api_types import AwareDatetime, Payload
from notifier.patterns import WHITESPACE, whole
from notifier.rate_limits.gcra import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND
from notifier.rules.schemas import IsoDuration

# "user.signup", "payment.*" (every type starting with "payment.") or "*": the patterns
# rules use. Anything else with a "*" could never match a type, and is refused.
TYPE_PATTERN = whole(rf"\*|[^{WHITESPACE}*]+(\.\*)?")
TypePattern = Annotated[str, msgspec.Meta(pattern=TYPE_PATTERN, min_length=1, max_length=200)]
# Litestar leaves the items' constraints out of the OpenAPI document: restated for lists
# and objects.
TypeFilter = Annotated[
    list[TypePattern],
    msgspec.Meta(
        min_length=1,
        max_length=50,
        extra_json_schema={
            "extra": {
                "items": {
                    "type": "string",
                    "pattern": TYPE_PATTERN,
                    "minLength": 1,
                    "maxLength": 200,
                }
            }
        },
    ),
]
# An HTTP field name (RFC 9110 token) and a value without control characters.
HEADER_NAME_PATTERN = whole(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
HEADER_VALUE_PATTERN = whole(r"[^\x00-\x1f\x7f]*")
HeaderName = Annotated[str, msgspec.Meta(pattern=HEADER_NAME_PATTERN, min_length=1, max_length=64)]
HeaderValue = Annotated[str, msgspec.Meta(pattern=HEADER_VALUE_PATTERN, max_length=1024)]
Headers = Annotated[
    dict[HeaderName, HeaderValue],
    msgspec.Meta(
        max_length=20,
        extra_json_schema={
            "extra": {
                "maxProperties": 20,
                "propertyNames": {"pattern": HEADER_NAME_PATTERN, "minLength": 1, "maxLength": 64},
                "additionalProperties": {
                    "type": "string",
                    "pattern": HEADER_VALUE_PATTERN,
                    "maxLength": 1024,
                },
            }
        },
    ),
]
EndpointUrl = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2048,
        description="An absolute http(s) URL the webhooks are POSTed to",
        examples=["https://hooks.example.com/notifier"],
    ),
]
Description = Annotated[str, msgspec.Meta(max_length=1000)]
Reason = Annotated[str, msgspec.Meta(max_length=1000)]


class EndpointRateLimit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Sends per second to this endpoint, and how many may go back to back."""

    per_second: Annotated[float, msgspec.Meta(ge=MIN_PER_SECOND, le=MAX_PER_SECOND)]
    burst: Annotated[int, msgspec.Meta(ge=1, le=MAX_BURST)] = 1


class EndpointCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/endpoints/``."""

    url: EndpointUrl
    description: Description = ""
    # The event and notification types it receives; null: every type.
    type_filter: TypeFilter | None = None
    # Sent with every message; the protocol's own headers cannot be replaced.
    headers: Headers = msgspec.field(default_factory=dict)
    rate_limit: EndpointRateLimit | None = None
    enabled: bool = True
    disabled_reason: Reason | None = None


class EndpointUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PATCH /api/v1/endpoints/{id}``: the fields to change; ``null`` clears an optional one.

    ``enabled: false`` pauses the endpoint (its notifications wait, spending no attempt);
    ``enabled: true`` resumes it and sends what waited.
    """

    url: EndpointUrl | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    type_filter: TypeFilter | msgspec.UnsetType | None = msgspec.UNSET
    headers: Headers | msgspec.UnsetType = msgspec.UNSET
    rate_limit: EndpointRateLimit | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    disabled_reason: Reason | msgspec.UnsetType | None = msgspec.UNSET


class Endpoint(msgspec.Struct, kw_only=True):
    """A stored endpoint (its secret is shown only at creation and by ``GET .../secret``)."""

    id: uuid.UUID
    url: str
    description: str
    type_filter: list[str] | None
    headers: dict[str, str]
    rate_limit: EndpointRateLimit | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    # While a rotation's overlap lasts, messages are signed with the previous secret too.
    previous_secret_expires_at: datetime.datetime | None = None


class EndpointCreated(Endpoint, kw_only=True):
    """The new endpoint with its signing secret: shown here and by ``GET .../secret`` only."""

    secret: str


class SigningSecret(msgspec.Struct, kw_only=True):
    """A Standard Webhooks secret (``whsec_...``): receivers verify signatures with it."""

    secret: str
    # Until then, messages also carry a signature by the secret this one replaced.
    previous_secret_expires_at: datetime.datetime | None = None


class SecretRotation(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST .../secret/rotate``: how long the old secret keeps signing beside the new."""

    overlap: IsoDuration = "PT24H"


class EndpointAttempt(msgspec.Struct, kw_only=True):
    """One delivery attempt to the endpoint."""

    id: int
    notification_id: uuid.UUID
    attempt: int
    outcome: str
    started_at: datetime.datetime
    finished_at: datetime.datetime
    status_code: int | None = None
    duration_ms: int | None = None
    error: str | None = None
    # The first KiB of the receiver's answer.
    answer: str | None = None


class TestMessage(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST .../test``: the example message's type and payload."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "endpoint.test"
    payload: Payload = msgspec.field(default_factory=dict)


class TestResult(msgspec.Struct, kw_only=True):
    """What the endpoint answered to the test message."""

    delivered: bool
    status_code: int | None
    duration_ms: int | None
    error: str | None
    answer: str | None


class Recovery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST .../recover``: replay the endpoint's failed and dead notifications since then."""

    since: AwareDatetime


class Recovered(msgspec.Struct, kw_only=True):
    """How many notifications were made pending again."""

    recovered: int


def endpoint_from_row(row: dict[str, Any]) -> Endpoint:
    """The response struct from a ``notifier.endpoints`` row (secrets left out)."""
    rate_limit = None
    if row["rate_per_second"] is not None:
        rate_limit = EndpointRateLimit(per_second=row["rate_per_second"], burst=row["rate_burst"])
    expires = row["previous_expires_at"] if row["previous_secret"] else None
    return Endpoint(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        type_filter=row["type_filter"],
        headers=row["headers"],
        rate_limit=rate_limit,
        enabled=row["enabled"],
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        previous_secret_expires_at=expires,
    )


def type_matches(patterns: list[str] | None, notification_type: str) -> bool:
    """Whether a filter lets ``notification_type`` through (None: every type)."""
    if patterns is None:
        return True
    return any(
        pattern in ("*", notification_type)
        or (pattern.endswith(".*") and notification_type.startswith(pattern[:-1]))
        for pattern in patterns
    )
