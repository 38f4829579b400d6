"""Managing routing rules over REST."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import msgspec
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.support import PROBLEM_JSON, assert_problem, count_rows


def rule_body(**overrides: Any) -> dict[str, Any]:
    """A valid rule: log every user event to the payload's email address."""
    return {"event_type": "user.*", "channel": "log", "recipient_field": "email"} | overrides


async def create_rule(client: AsyncTestClient[Any], **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/rules/", json=rule_body(**overrides))
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


# --- creating and reading ---------------------------------------------------------------


async def test_create_rule_answers_201_with_the_stored_rule(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/rules/",
        json={
            "name": "renewal reminders",
            "event_type": "subscription.renewing",
            "channel": "log",
            "recipient_field": "customer.email",
            "date_field": "renews_on",
            "lead_times": ["P7D", "P1D"],
            "template": "subscription.renewal",
        },
    )

    assert response.status_code == 201, response.text
    rule = response.json()
    assert uuid.UUID(rule["id"])
    assert datetime.datetime.fromisoformat(rule["created_at"]).tzinfo is not None
    assert {key: value for key, value in rule.items() if key not in {"id", "created_at"}} == {
        "name": "renewal reminders",
        "event_type": "subscription.renewing",
        "channel": "log",
        "recipient_field": "customer.email",
        "recipient": None,
        "date_field": "renews_on",
        "lead_times": ["P7D", "P1D"],
        "template": "subscription.renewal",
        "enabled": True,
        "timezone": None,
        "timezone_field": None,
        "quiet_hours": None,
        "endpoint": None,
        "key": None,
        "action": "notify",
        "digest": None,
        "deliver_within": None,
    }


async def test_a_rules_deliver_within_is_stored_changed_and_cleared(
    client: AsyncTestClient[Any],
) -> None:
    created = await client.post("/api/v1/rules/", json=rule_body(deliver_within="PT1H"))
    assert created.status_code == 201, created.text
    assert created.json()["deliver_within"] == "PT3600S"  # msgspec's form of a duration
    url = f"/api/v1/rules/{created.json()['id']}"

    changed = await client.patch(url, json={"deliver_within": "P2D"})
    assert changed.json()["deliver_within"] == "P2D"
    unchanged = await client.patch(url, json={"enabled": False})
    assert unchanged.json()["deliver_within"] == "P2D"
    cleared = await client.patch(url, json={"deliver_within": None})
    assert cleared.json()["deliver_within"] is None


@pytest.mark.parametrize(
    "duration", ["PT0S", "-PT1H", "P3651D"], ids=["zero", "negative", "too-long"]
)
async def test_a_deliver_within_that_is_not_a_positive_bounded_duration_is_a_problem(
    client: AsyncTestClient[Any], duration: str
) -> None:
    response = await client.post("/api/v1/rules/", json=rule_body(deliver_within=duration))
    assert response.status_code == 422, response.text
    assert "deliver_within" in response.text


async def test_create_rule_reads_lead_times_as_iso_8601_durations(
    client: AsyncTestClient[Any],
) -> None:
    rule = await create_rule(client, lead_times=["P14D", "PT12H", "P1DT6H", "PT90M"])

    # Written back in msgspec's canonical form ("PT12H" comes back as "PT43200S").
    assert msgspec.convert(rule["lead_times"], list[datetime.timedelta]) == [
        datetime.timedelta(days=14),
        datetime.timedelta(hours=12),
        datetime.timedelta(days=1, hours=6),
        datetime.timedelta(minutes=90),
    ]


async def test_create_rule_defaults_to_one_send_when_the_event_arrives(
    client: AsyncTestClient[Any],
) -> None:
    rule = await create_rule(client)

    assert rule["lead_times"] == ["P0D"]
    assert rule["date_field"] is None
    assert rule["enabled"] is True
    assert rule["name"] == ""


async def test_create_rule_with_a_fixed_webhook_recipient(
    client: AsyncTestClient[Any],
) -> None:
    rule = await create_rule(
        client,
        event_type="*",
        channel="webhook",
        recipient_field=None,
        recipient="https://hooks.example.com/notifier",
    )

    assert rule["recipient"] == "https://hooks.example.com/notifier"
    assert rule["recipient_field"] is None


@pytest.mark.parametrize("path", ["/api/v1/rules/", "/api/v1/rules"])
async def test_rules_collection_answers_with_and_without_trailing_slash(
    client: AsyncTestClient[Any], path: str
) -> None:
    created = await client.post(path, json=rule_body())
    listed = await client.get(path)

    assert created.status_code == 201, created.text
    assert listed.status_code == 200, listed.text
    assert listed.json() == [created.json()]


async def test_list_rules_is_every_rule_oldest_first(client: AsyncTestClient[Any]) -> None:
    first = await create_rule(client, event_type="user.signup")
    second = await create_rule(client, event_type="payment.*")

    response = await client.get("/api/v1/rules/")

    assert response.json() == [first, second]


async def test_get_rule_by_id(client: AsyncTestClient[Any]) -> None:
    rule = await create_rule(client)

    response = await client.get(f"/api/v1/rules/{rule['id']}")

    assert response.status_code == 200
    assert response.json() == rule


async def test_get_unknown_rule_is_a_404_problem(client: AsyncTestClient[Any]) -> None:
    response = await client.get(f"/api/v1/rules/{uuid.uuid4()}")

    assert_problem(response, 404)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_malformed_rule_id_is_a_client_error(
    client: AsyncTestClient[Any], method: str
) -> None:
    response = await client.request(method, "/api/v1/rules/rule-1")

    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


# --- deleting ---------------------------------------------------------------------------


async def test_delete_rule_removes_it(client: AsyncTestClient[Any]) -> None:
    rule = await create_rule(client)

    response = await client.delete(f"/api/v1/rules/{rule['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(f"/api/v1/rules/{rule['id']}"), 404)
    assert (await client.get("/api/v1/rules/")).json() == []


async def test_delete_unknown_rule_is_a_404_problem(client: AsyncTestClient[Any]) -> None:
    response = await client.delete(f"/api/v1/rules/{uuid.uuid4()}")

    assert_problem(response, 404)


async def test_delete_rule_keeps_the_notifications_it_made(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    rule = await create_rule(client)
    event = await client.post("/api/v1/events/", json={"type": "user.signup"})
    await db.execute(
        """
        INSERT INTO notifier.notifications
            (event_id, rule_id, notification_type, channel, recipient, send_at)
        VALUES (%s, %s, 'user.signup', 'log', 'ada@example.com', now())
        """,
        [event.json()["id"], rule["id"]],
    )

    await client.delete(f"/api/v1/rules/{rule['id']}")

    detail = (await client.get(f"/api/v1/events/{event.json()['id']}")).json()
    (notification,) = detail["notifications"]
    assert notification["rule_id"] is None
    assert notification["recipient"] == "ada@example.com"


# --- invalid rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"event_type": None}, "event_type", id="event-type-missing"),
        pytest.param({"channel": None}, "channel", id="channel-missing"),
        pytest.param({"channel": "carrier-pigeon"}, "channel", id="unknown-channel"),
        pytest.param({"event_type": ""}, "event_type", id="event-type-empty"),
        pytest.param({"event_type": "user signup"}, "event_type", id="event-type-with-space"),
        pytest.param({"event_type": "*.signup"}, "event_type", id="event-type-leading-star"),
        pytest.param({"event_type": "user*"}, "event_type", id="event-type-star-not-after-dot"),
        pytest.param({"event_type": "user.*.x"}, "event_type", id="event-type-star-inside"),
        pytest.param(
            {"recipient": "ops@example.com"}, "recipient", id="both-recipient-and-recipient-field"
        ),
        pytest.param({"recipient_field": None}, "recipient", id="neither-recipient-nor-field"),
        pytest.param({"recipient_field": "user..email"}, "recipient_field", id="field-empty-part"),
        pytest.param({"recipient_field": "user email"}, "recipient_field", id="field-with-space"),
        pytest.param({"recipient_field": "1st"}, "recipient_field", id="field-starts-with-digit"),
        pytest.param({"recipient_field": ".email"}, "recipient_field", id="field-leading-dot"),
        pytest.param({"date_field": "due-on."}, "date_field", id="date-field-trailing-dot"),
        pytest.param(
            {"channel": "webhook", "recipient_field": None, "recipient": "hooks.example.com"},
            "recipient",
            id="webhook-recipient-not-a-url",
        ),
        pytest.param({"lead_times": ["7 days"]}, "lead_times[0]", id="lead-time-not-iso-8601"),
        pytest.param({"lead_times": [7]}, "lead_times[0]", id="lead-time-a-number"),
        pytest.param({"lead_times": ["P1D", "P1M"]}, "lead_times[1]", id="lead-time-in-months"),
        pytest.param({"lead_times": ["P1D", "-P1D"]}, "lead_times[1]", id="lead-time-negative"),
        pytest.param({"lead_times": ["P3651D"]}, "lead_times[0]", id="lead-time-over-ten-years"),
        pytest.param({"lead_times": ["P1W"]}, "lead_times[0]", id="lead-time-in-weeks"),
        pytest.param({"lead_times": ["P"]}, "lead_times[0]", id="lead-time-without-amount"),
        pytest.param({"lead_times": []}, "lead_times", id="no-lead-times"),
        pytest.param({"lead_times": "P7D"}, "lead_times", id="lead-times-not-a-list"),
        pytest.param({"enabled": "yes"}, "enabled", id="enabled-not-a-boolean"),
        pytest.param({"priority": 1}, "priority", id="unknown-field"),
        pytest.param({"template": "renewal\u0000"}, "template", id="nul-in-template"),
    ],
)
async def test_invalid_rule_is_a_422_problem_naming_the_field(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    overrides: dict[str, Any],
    field: str,
) -> None:
    body = {key: value for key, value in rule_body(**overrides).items() if value is not None}

    response = await client.post("/api/v1/rules/", json=body)

    assert_problem(response, 422, field)
    assert await count_rows(db, "notifier.routing_rules") == 0


async def test_create_rule_with_malformed_json_is_a_400_problem(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/api/v1/rules/",
        content=b"{'event_type': 'x'}",
        headers={"content-type": "application/json"},
    )

    assert_problem(response, 400, "body")


# --- Idempotency-Key --------------------------------------------------------------------


async def test_create_rule_repeated_with_the_same_idempotency_key_creates_one_rule(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    headers = {"Idempotency-Key": "rule-1"}

    first = await client.post("/api/v1/rules/", json=rule_body(), headers=headers)
    repeat = await client.post("/api/v1/rules/", json=rule_body(), headers=headers)

    assert first.status_code == repeat.status_code == 201
    assert repeat.content == first.content
    assert await count_rows(db, "notifier.routing_rules") == 1


# --- templates and changes --------------------------------------------------------------


async def test_a_rule_must_name_an_existing_template(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/api/v1/rules/", json=rule_body(template="no-such-template"))

    assert_problem(response, 422, "template")
    assert "no-such-template" in response.json()["detail"]


async def test_a_rule_may_name_a_builtin_or_the_tenants_template(
    client: AsyncTestClient[Any],
) -> None:
    created = await client.put(
        "/api/v1/templates/welcome", json={"subject": "Welcome", "text_body": "Hi {{ name }}"}
    )
    assert created.status_code == 201, created.text

    assert (await create_rule(client, template="user.signup"))["template"] == "user.signup"
    assert (await create_rule(client, template="welcome"))["template"] == "welcome"


async def test_patch_changes_only_the_fields_given(client: AsyncTestClient[Any]) -> None:
    rule = await create_rule(client, lead_times=["P7D", "P1D"], date_field="expires_at")

    response = await client.patch(
        f"/api/v1/rules/{rule['id']}",
        json={"enabled": False, "template": "password.expiring", "lead_times": ["P3D"]},
    )

    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed == rule | {
        "enabled": False,
        "template": "password.expiring",
        "lead_times": ["P3D"],
    }
    assert (await client.get(f"/api/v1/rules/{rule['id']}")).json() == changed


async def test_patch_null_clears_an_optional_field(client: AsyncTestClient[Any]) -> None:
    rule = await create_rule(client, template="user.signup", date_field="expires_at")

    response = await client.patch(
        f"/api/v1/rules/{rule['id']}", json={"template": None, "date_field": None}
    )

    assert response.status_code == 200, response.text
    assert response.json()["template"] is None
    assert response.json()["date_field"] is None


async def test_patch_swaps_the_recipient_kind(client: AsyncTestClient[Any]) -> None:
    rule = await create_rule(client)

    response = await client.patch(
        f"/api/v1/rules/{rule['id']}",
        json={"recipient_field": None, "recipient": "ops@example.com"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["recipient"] == "ops@example.com"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"template": "no-such-template"}, "template"),
        ({"channel": "carrier-pigeon"}, "channel"),
        ({"recipient": "ops@example.com"}, "recipient"),  # and the recipient_field it has
        ({"lead_times": ["P-1D"]}, "lead_times[0]"),
        ({"date_field": "not a path"}, "date_field"),
        ({"event_type": "a b"}, "event_type"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_patch_validates_the_result_like_a_new_rule(
    client: AsyncTestClient[Any], change: dict[str, Any], field: str
) -> None:
    rule = await create_rule(client)

    assert_problem(await client.patch(f"/api/v1/rules/{rule['id']}", json=change), 422, field)
    assert (await client.get(f"/api/v1/rules/{rule['id']}")).json() == rule


async def test_patch_of_an_unknown_rule_is_404(client: AsyncTestClient[Any]) -> None:
    assert_problem(
        await client.patch(f"/api/v1/rules/{uuid.uuid4()}", json={"enabled": False}), 404
    )
