"""Clients written for the seed API work unchanged, an API key aside, at default settings.

The seed client (the seed repository's ``backend/test-app.py``) calls these endpoints in
this order, with exactly these bodies, and prints ``resp.json()`` of every answer; its
phone is a national number and its dates may come without an offset.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.bootstrap import open_services
from notifier.queue import EVENTS_QUEUE
from notifier.settings import Settings
from notifier.worker import run_worker
from tests.support import SECRETS_KEYS, FakeSmsProvider, assert_problem, count_rows

SEED_NOTIFICATION = {
    "notification_type": "user.signup",
    "entity_id": "user-123",
    "lead_time_days": 7,
    "email": "user@example.com",
    "phone": "9999912345",
}


@pytest.fixture
async def seed_client(
    database_url: str, api_headers: dict[str, str]
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with every setting at its default but the database: what a seed client meets."""
    async with AsyncTestClient(
        app=create_app(Settings(database_url=database_url, secrets_keys=SECRETS_KEYS))
    ) as client:
        client.headers.update(api_headers)
        yield client


def printable(response: Any) -> Any:
    """What the seed client does with every answer: ``print(resp.json())``."""
    assert response.headers["content-type"].startswith(("application/json", "application/problem"))
    return json.loads(response.content)


@pytest.mark.parametrize(
    "target_date",
    [
        pytest.param(lambda: datetime.datetime.now(datetime.UTC), id="with-offset"),
        pytest.param(lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None), id="naive"),
    ],
)
async def test_the_seed_client_flow_passes_unchanged(
    seed_client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], target_date: Any
) -> None:
    health = await seed_client.get("/health")
    assert health.status_code == 200, health.text
    assert printable(health)

    event = await seed_client.post(
        "/api/v1/events/",
        json={"type": "user.signup", "payload": {"user_id": 123, "info": "Test user"}},
    )
    assert event.status_code == 201, event.text
    published = printable(event)
    assert {"id", "type", "payload", "created_at"} <= set(published)
    assert published["payload"] == {"user_id": 123, "info": "Test user"}

    listed = await seed_client.get("/api/v1/events/?limit=10")
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in printable(listed)] == [published["id"]]

    when = target_date() + datetime.timedelta(days=10)
    created = await seed_client.post(
        "/api/v1/notifications/", json=SEED_NOTIFICATION | {"target_date": when.isoformat()}
    )
    assert created.status_code == 201, created.text
    notification = printable(created)
    assert notification["status"] == "pending"
    assert notification["recipient"] == "user@example.com"
    # Not the recipient, and not a number without a region: kept exactly as given.
    assert notification["phone"] == "9999912345"
    expected = when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
    assert datetime.datetime.fromisoformat(notification["target_date"]) == expected
    assert datetime.datetime.fromisoformat(
        notification["send_at"]
    ) == expected - datetime.timedelta(days=7)

    deleted = await seed_client.delete(f"/api/v1/notifications/{notification['id']}")
    assert deleted.status_code == 200, deleted.text
    cancelled = printable(deleted)
    assert (cancelled["id"], cancelled["status"]) == (notification["id"], "cancelled")
    cursor = await db.execute("SELECT status FROM notifier.notifications")
    assert await cursor.fetchall() == [{"status": "cancelled"}]


async def test_a_phone_that_reads_as_a_number_is_stored_in_e164_form(
    database_url: str, api_headers: dict[str, str]
) -> None:
    settings = Settings(
        database_url=database_url, default_phone_region="IN", secrets_keys=SECRETS_KEYS
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers.update(api_headers)
        national = await client.post(
            "/api/v1/notifications/",
            json=SEED_NOTIFICATION | {"target_date": "2030-01-01T00:00:00"},
        )
        spelt_out = await client.post(
            "/api/v1/notifications/",
            json=SEED_NOTIFICATION
            | {"target_date": "2030-01-01T00:00:00Z", "phone": "+44 20 7946 0958"},
        )

    assert national.status_code == spelt_out.status_code == 201, national.text + spelt_out.text
    assert national.json()["phone"] == "+919999912345"
    assert spelt_out.json()["phone"] == "+442079460958"


@pytest.fixture
def sms_settings(database_url: str, sms_provider: FakeSmsProvider) -> Settings:
    return Settings(
        database_url=database_url,
        sms_provider="json",
        sms_api_url=sms_provider.url + "/sms",
        sms_from="ACME",
        secrets_keys=SECRETS_KEYS,
    )


async def test_a_national_sms_recipient_is_resolved_in_the_default_region(
    sms_settings: Settings, api_headers: dict[str, str], db: psycopg.AsyncConnection[Any]
) -> None:
    settings = sms_settings.replace(default_phone_region="IN")
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers.update(api_headers)
        response = await client.post(
            "/api/v1/notifications/",
            json=SEED_NOTIFICATION | {"target_date": "2030-01-01T00:00:00Z", "channel": "sms"},
        )

    assert response.status_code == 201, response.text
    notification = response.json()
    assert (notification["recipient"], notification["phone"]) == ("+919999912345",) * 2
    assert await count_rows(db, "notifier.notifications") == 1


@pytest.mark.parametrize(
    ("region", "fix"),
    [
        pytest.param(None, "NOTIFIER_DEFAULT_PHONE_REGION", id="no-region"),
        pytest.param("US", "E.164", id="not-a-number-of-the-region"),
    ],
)
async def test_an_sms_recipient_that_is_no_number_is_a_422_saying_how_to_fix_it(
    sms_settings: Settings,
    api_headers: dict[str, str],
    db: psycopg.AsyncConnection[Any],
    region: str | None,
    fix: str,
) -> None:
    settings = sms_settings.replace(default_phone_region=region)
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers.update(api_headers)
        response = await client.post(
            "/api/v1/notifications/",
            json=SEED_NOTIFICATION | {"target_date": "2030-01-01T00:00:00Z", "channel": "sms"},
        )

    assert_problem(response, 422, "phone")
    text = response.text
    assert fix in text
    assert "+14155550123" in text
    assert "\\\\" not in text  # no regular expression, doubly escaped, for a message
    assert await count_rows(db, "notifier.notifications") == 0


@pytest.mark.parametrize(
    ("phone", "recipient"),
    [
        pytest.param("9999912345", "+919999912345", id="national"),
        pytest.param("+91 99999-12345", "+919999912345", id="spelt-out"),
        pytest.param(9999912345, "+919999912345", id="a-json-number"),
        pytest.param("12345", None, id="no-number"),
    ],
)
async def test_a_rules_sms_recipient_resolves_as_the_apis_does_or_fails_saying_why(
    sms_settings: Settings,
    api_headers: dict[str, str],
    db: psycopg.AsyncConnection[Any],
    phone: str | int,
    recipient: str | None,
) -> None:
    settings = sms_settings.replace(default_phone_region="IN")
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers.update(api_headers)
        rule = await client.post(
            "/api/v1/rules/",
            json={"event_type": "user.signup", "channel": "sms", "recipient_field": "phone"},
        )
        assert rule.status_code == 201, rule.text
        event = await client.post(
            "/api/v1/events/", json={"type": "user.signup", "payload": {"phone": phone}}
        )
        assert event.status_code == 201, event.text
        through_api = await client.post(
            "/api/v1/notifications/",
            json=SEED_NOTIFICATION
            | {"phone": str(phone), "target_date": "2030-01-01T00:00:00Z", "channel": "sms"},
        )
    async with open_services(settings, name="notifier-test") as services:
        await run_worker(services, queues=[EVENTS_QUEUE], wait=False, install_signal_handlers=False)

    cursor = await db.execute(
        "SELECT status, recipient, last_error FROM notifier.notifications WHERE event_id = %s",
        [event.json()["id"]],
    )
    (made,) = await cursor.fetchall()
    if recipient is not None:
        assert (made["status"], made["recipient"], made["last_error"]) == (
            "pending",
            recipient,
            None,
        )
        assert through_api.json()["recipient"] == recipient
    else:
        assert made["status"] == "failed"
        # The API's answer for the same number, and where it came from.
        assert_problem(through_api, 422, "phone")
        (api_error,) = through_api.json()["errors"]
        assert made["last_error"] == f"payload field 'phone' ('12345') {api_error['message']}"
        assert "E.164" in made["last_error"]
