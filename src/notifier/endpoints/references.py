"""Rules and notifications that name an endpoint instead of a URL: the checks they share."""

from __future__ import annotations

import uuid

from notifier.channels.webhook import WebhookChannel
from notifier.db import Connection
from notifier.endpoints import queries
from notifier.errors import field_error

# The recipient shown on a notification to an endpoint: the URL is the endpoint's to change.
ENDPOINT_RECIPIENT_PREFIX = "endpoint:"


def endpoint_recipient(endpoint_id: uuid.UUID) -> str:
    """The ``recipient`` of a notification to an endpoint."""
    return f"{ENDPOINT_RECIPIENT_PREFIX}{endpoint_id}"


def endpoint_channel_and_recipient(endpoint_id: uuid.UUID, channel: str | None) -> tuple[str, str]:
    """The channel (webhook, the only one endpoints have) and recipient of a notification
    naming ``endpoint_id``; a 422 naming ``channel`` if another was asked for."""
    if channel is not None and channel != WebhookChannel.name:
        raise field_error("channel", f"an endpoint is reached by webhook, not {channel!r}")
    return WebhookChannel.name, endpoint_recipient(endpoint_id)


async def check_endpoint(conn: Connection, tenant_id: str, endpoint_id: uuid.UUID | None) -> None:
    """A 422 naming ``endpoint`` unless it is one of the tenant's (another tenant's endpoint
    is as unknown as a missing one)."""
    if endpoint_id is not None and not await queries.endpoint_exists(conn, tenant_id, endpoint_id):
        raise field_error(
            "endpoint", f"no endpoint {endpoint_id}: create it at /api/v1/endpoints/ first"
        )
