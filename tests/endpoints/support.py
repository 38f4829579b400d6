"""Helpers of the endpoint tests: endpoints and notifications made over the real API."""

from __future__ import annotations

import datetime
from typing import Any

from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support import ReceivedRequest


async def create_endpoint(
    client: AsyncTestClient[Any], url: str, *, auth: dict[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    """A new endpoint (with its ``secret``), as the API answers its creation; ``auth``: the
    headers of another tenant's key, ``fields``: the endpoint's other fields."""
    response = await client.post("/api/v1/endpoints/", json={"url": url, **fields}, headers=auth)
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    assert endpoint["secret"].startswith("whsec_")
    return endpoint


async def notify_endpoint(
    client: AsyncTestClient[Any],
    endpoint_id: str,
    *,
    headers: dict[str, str] | None = None,
    notification_type: str = "invoice.due",
    entity_id: str = "invoice-1",
) -> dict[str, Any]:
    """A notification to the endpoint, due now."""
    target = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": notification_type,
            "entity_id": entity_id,
            "target_date": target.isoformat(),
            "lead_time_days": 7,
            "endpoint": endpoint_id,
            "data": {"amount": 42},
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    notification: dict[str, Any] = response.json()
    assert notification["endpoint"] == endpoint_id
    assert notification["channel"] == "webhook"
    return notification


def verifies(secret: str, request: ReceivedRequest) -> bool:
    """Whether the Standard Webhooks reference library accepts the request with ``secret``."""
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True
