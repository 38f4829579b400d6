"""One event may make at most NOTIFIER_MAX_NOTIFICATIONS_PER_EVENT notifications."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from notifier.settings import Settings
from tests.support import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(max_notifications_per_event=3)


async def publish_and_process(client: AsyncTestClient[Any], event_type: str) -> Any:
    event = (
        await client.post(
            "/api/v1/events/",
            json={"type": event_type, "payload": {"expires_at": "2099-01-01T00:00:00Z"}},
        )
    ).json()

    async def processed() -> Any:
        detail = (await client.get(f"/api/v1/events/{event['id']}")).json()
        return detail if detail["processed_at"] else None

    return await eventually(processed)


def reminders(event_type: str, lead_times: list[str]) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "channel": "log",
        "recipient": "ops",
        "date_field": "expires_at",
        "lead_times": lead_times,
    }


async def test_an_event_over_the_bound_makes_nothing_and_says_why(
    client: AsyncTestClient[Any], worker: None
) -> None:
    await client.post("/api/v1/rules/", json=reminders("cert.*", ["P3D", "P2D"]))
    await client.post("/api/v1/rules/", json=reminders("cert.expiring", ["P1D", "P0D"]))

    detail = await publish_and_process(client, "cert.expiring")

    assert detail["notifications"] == []
    assert "would make 4 notifications, more than the 3" in detail["processing_error"]
    assert (await client.get("/api/v1/notifications/")).json() == []


async def test_an_event_at_the_bound_makes_them_all(
    client: AsyncTestClient[Any], worker: None
) -> None:
    await client.post("/api/v1/rules/", json=reminders("cert.expiring", ["P3D", "P2D", "P1D"]))

    detail = await publish_and_process(client, "cert.expiring")

    assert len(detail["notifications"]) == 3
    assert detail["processing_error"] is None
