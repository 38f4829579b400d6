"""Scheduling, reading, cancelling and replaying notifications over REST."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.support import (
    PROBLEM_JSON,
    WebhookReceiver,
    assert_problem,
    count_rows,
    next_page,
    wait_for_status,
)

SEED_FIELDS = {
    "id",
    "notification_type",
    "entity_id",
    "target_date",
    "lead_time_days",
    "email",
    "phone",
    "status",
    "sent_at",
    "created_at",
}


def days_from_now(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)


def request_body(**overrides: Any) -> dict[str, Any]:
    """A valid create request in the seed shape: renewal reminder 30 days out, by email."""
    return {
        "notification_type": "contract.renewal",
        "entity_id": "contract-42",
        "target_date": days_from_now(30).isoformat(),
        "email": "ada@example.com",
    } | overrides


async def schedule(client: AsyncTestClient[Any], **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/notifications/", json=request_body(**overrides))
    assert response.status_code == 201, response.text
    notification: dict[str, Any] = response.json()
    return notification


async def deliver_jobs(
    db: psycopg.AsyncConnection[Any], notification_id: str
) -> list[dict[str, Any]]:
    cursor = await db.execute(
        """
        SELECT id, queue_name, status, scheduled_at, args FROM procrastinate_jobs
        WHERE task_name = 'notifier.deliver' AND args->>'notification_id' = %s
        ORDER BY id
        """,
        [notification_id],
    )
    return list(await cursor.fetchall())


async def set_status(db: psycopg.AsyncConnection[Any], notification_id: str, status: str) -> None:
    """Arrange a notification in ``status`` as if the worker had put it there."""
    await db.execute(
        """
        UPDATE notifier.notifications
        SET status = %s, attempts = 8, last_error = 'receiver answered 503'
        WHERE id = %s
        """,
        [status, notification_id],
    )


async def every_page(client: AsyncTestClient[Any], url: str) -> list[list[dict[str, Any]]]:
    """Follow ``rel="next"`` links from ``url`` until there is none; every page's items."""
    pages: list[list[dict[str, Any]]] = []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        next_url = next_page(response)
        assert len(pages) < 20, "pagination does not end"
    return pages


# --- creating ---------------------------------------------------------------------------


async def test_create_answers_201_with_the_seed_shape(client: AsyncTestClient[Any]) -> None:
    target_date = days_from_now(30)

    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "contract.renewal",
            "entity_id": "contract-42",
            "target_date": target_date.isoformat(),
            "email": "ada@example.com",
            "phone": "+441234567890",
        },
    )

    assert response.status_code == 201, response.text
    notification = response.json()
    assert set(notification) >= SEED_FIELDS
    assert uuid.UUID(notification["id"])
    assert notification["notification_type"] == "contract.renewal"
    assert notification["entity_id"] == "contract-42"
    assert datetime.datetime.fromisoformat(notification["target_date"]) == target_date
    assert notification["lead_time_days"] == 7
    assert notification["email"] == "ada@example.com"
    assert notification["phone"] == "+441234567890"
    assert notification["status"] == "pending"
    assert notification["sent_at"] is None
    assert datetime.datetime.fromisoformat(notification["created_at"]).tzinfo is not None
    assert notification["channel"] == "log"
    assert notification["recipient"] == "ada@example.com"


async def test_create_stores_the_notification_and_its_deliver_job_together(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    notification = await schedule(client)

    (job,) = await deliver_jobs(db, notification["id"])
    assert job["queue_name"] == "deliveries"
    assert job["status"] == "todo"
    assert job["args"] == {"notification_id": notification["id"], "tenant_id": "default"}
    cursor = await db.execute(
        "SELECT status, job_id FROM notifier.notifications WHERE id = %s", [notification["id"]]
    )
    assert await cursor.fetchone() == {"status": "pending", "job_id": job["id"]}


async def test_create_schedules_the_deliver_job_lead_time_days_before_the_target_date(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    target_date = days_from_now(30)

    notification = await schedule(client, target_date=target_date.isoformat(), lead_time_days=3)

    (job,) = await deliver_jobs(db, notification["id"])
    assert job["scheduled_at"] == target_date - datetime.timedelta(days=3)
    assert datetime.datetime.fromisoformat(notification["send_at"]) == job["scheduled_at"]


async def test_create_computes_send_at_lead_time_days_before_the_target_date(
    client: AsyncTestClient[Any],
) -> None:
    target_date = days_from_now(30)

    notification = await schedule(client, target_date=target_date.isoformat(), lead_time_days=3)

    assert notification["lead_time_days"] == 3
    send_at = datetime.datetime.fromisoformat(notification["send_at"])
    assert send_at == target_date - datetime.timedelta(days=3)


async def test_create_with_the_lead_time_already_past_sends_now(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    before = datetime.datetime.now(datetime.UTC)

    notification = await schedule(client, target_date=days_from_now(2).isoformat())

    assert notification["status"] == "pending"
    send_at = datetime.datetime.fromisoformat(notification["send_at"])
    assert before <= send_at <= datetime.datetime.now(datetime.UTC)
    assert len(await deliver_jobs(db, notification["id"])) == 1


async def test_create_with_a_target_date_in_the_past_stores_it_expired_without_a_job(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    notification = await schedule(client, target_date="2020-01-01T00:00:00Z")

    assert notification["status"] == "expired"
    assert notification["last_error"] == (
        "target date 2020-01-01T00:00:00+00:00 had passed more than 300 s "
        "(NOTIFIER_EXPIRY_GRACE_SECONDS) before it was accepted"
    )
    assert notification["sent_at"] is None
    assert await deliver_jobs(db, notification["id"]) == []
    assert await count_rows(db, "notifier.notifications") == 1


@pytest.mark.parametrize("seconds_ago", [0, 2, 240], ids=["now", "2s-ago", "4min-ago"])
async def test_create_due_now_or_just_past_with_lead_time_zero_is_sent_now(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], seconds_ago: int
) -> None:
    """A request that took its time to reach the API (or asked for "now") is not expired."""
    target = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    before = datetime.datetime.now(datetime.UTC)

    notification = await schedule(client, target_date=target.isoformat(), lead_time_days=0)

    assert (notification["status"], notification["last_error"]) == ("pending", None)
    assert before <= datetime.datetime.fromisoformat(notification["send_at"])
    assert len(await deliver_jobs(db, notification["id"])) == 1


async def test_create_with_expires_at_before_the_send_time_is_expired_saying_why(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    target = days_from_now(10)
    expires_at = days_from_now(2)

    notification = await schedule(
        client, target_date=target.isoformat(), expires_at=expires_at.isoformat()
    )

    assert notification["status"] == "expired"
    assert notification["last_error"].startswith("its send time is not before its expires_at")
    assert await deliver_jobs(db, notification["id"]) == []


async def test_create_with_expires_at_without_an_offset_is_a_problem_naming_it(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/api/v1/notifications/", json=request_body(expires_at="2030-01-01T00:00:00")
    )
    assert response.status_code in (400, 422), response.text
    assert "expires_at" in response.text


async def test_create_without_email_sends_to_the_phone(client: AsyncTestClient[Any]) -> None:
    notification = await schedule(client, email=None, phone="+441234567890")

    assert notification["recipient"] == "+441234567890"
    assert notification["email"] is None


async def test_create_for_a_webhook_channel_sends_to_the_recipient_url(
    client: AsyncTestClient[Any], receiver: WebhookReceiver
) -> None:
    notification = await schedule(client, channel="webhook", recipient=receiver.url)

    assert notification["channel"] == "webhook"
    assert notification["recipient"] == receiver.url


@pytest.mark.parametrize("path", ["/api/v1/notifications/", "/api/v1/notifications"])
async def test_notifications_collection_answers_with_and_without_trailing_slash(
    client: AsyncTestClient[Any], path: str
) -> None:
    created = await client.post(path, json=request_body())
    listed = await client.get(path, params={"limit": 10})

    assert created.status_code == 201, created.text
    assert listed.status_code == 200, listed.text
    assert [n["id"] for n in listed.json()] == [created.json()["id"]]


# --- invalid create requests ------------------------------------------------------------


async def test_create_with_malformed_json_is_a_400_problem(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await client.post(
        "/api/v1/notifications/",
        content=b'{"notification_type": "contract.renewal",',
        headers={"content-type": "application/json"},
    )

    assert_problem(response, 400, "body")
    assert await count_rows(db, "notifier.notifications") == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"notification_type": None}, "notification_type", id="type-null"),
        pytest.param({"entity_id": 42}, "entity_id", id="entity-id-not-a-string"),
        pytest.param({"entity_id": ""}, "entity_id", id="entity-id-empty"),
        pytest.param({"lead_time_days": "seven"}, "lead_time_days", id="lead-time-not-a-number"),
        pytest.param({"lead_time_days": 1.5}, "lead_time_days", id="lead-time-fractional"),
        pytest.param({"lead_time_days": -1}, "lead_time_days", id="lead-time-negative"),
        pytest.param({"lead_time_days": 3651}, "lead_time_days", id="lead-time-over-ten-years"),
        pytest.param(
            {"target_date": "2026-02-30T09:00:00Z"}, "target_date", id="target-date-impossible"
        ),
        pytest.param({"target_date": "next tuesday"}, "target_date", id="target-date-not-a-date"),
        pytest.param(
            {"target_date": "9999-12-31T23:00:00-05:00"}, "target_date", id="target-date-too-late"
        ),
        pytest.param(
            {"target_date": "0001-01-01T00:00:00+05:00"}, "target_date", id="target-date-too-early"
        ),
        pytest.param({"email": "a" * 321}, "email", id="email-too-long"),
        pytest.param({"colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"channel": "carrier-pigeon"}, "channel", id="unknown-channel"),
        pytest.param(
            {"channel": "webhook", "recipient": "not a url"}, "recipient", id="webhook-not-a-url"
        ),
        pytest.param(
            {"channel": "webhook", "recipient": "ftp://example.com/x"},
            "recipient",
            id="webhook-not-http",
        ),
        pytest.param({"channel": "webhook"}, "recipient", id="webhook-to-an-email-address"),
        pytest.param({"email": None}, "recipient", id="nobody-to-send-to"),
        pytest.param({"recipient": "   "}, "recipient", id="blank-recipient"),
        pytest.param({"data": ["not", "an", "object"]}, "data", id="data-not-an-object"),
        pytest.param({"entity_id": "contract-\u0000"}, "entity_id", id="nul-in-entity-id"),
        pytest.param({"data": {"note": "\u0000"}}, "data.note", id="nul-in-data"),
    ],
)
async def test_invalid_create_is_a_422_problem_naming_the_field(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    overrides: dict[str, Any],
    field: str,
) -> None:
    body = {key: value for key, value in request_body(**overrides).items() if value is not None}

    response = await client.post("/api/v1/notifications/", json=body)

    assert_problem(response, 422, field)
    assert await count_rows(db, "notifier.notifications") == 0
    assert await count_rows(db, "procrastinate_jobs") == 0


@pytest.mark.parametrize("missing", ["notification_type", "entity_id", "target_date"])
async def test_create_without_a_required_field_is_a_422_problem_naming_it(
    client: AsyncTestClient[Any], missing: str
) -> None:
    body = request_body()
    del body[missing]

    response = await client.post("/api/v1/notifications/", json=body)

    assert_problem(response, 422, missing)


# --- listing ----------------------------------------------------------------------------


async def test_list_follows_next_links_through_every_notification_once_newest_first(
    client: AsyncTestClient[Any],
) -> None:
    created = [await schedule(client, entity_id=f"contract-{n}") for n in range(7)]

    pages = await every_page(client, "/api/v1/notifications/?limit=3")

    assert [len(page) for page in pages] == [3, 3, 1]
    seen = [n["id"] for page in pages for n in page]
    assert seen == [n["id"] for n in reversed(created)]


async def test_list_next_cursor_header_pages_like_the_link(client: AsyncTestClient[Any]) -> None:
    created = [await schedule(client, entity_id=f"contract-{n}") for n in range(3)]

    first = await client.get("/api/v1/notifications", params={"limit": 2})
    second = await client.get(
        "/api/v1/notifications", params={"limit": 2, "cursor": first.headers["x-next-cursor"]}
    )

    assert [n["id"] for n in first.json() + second.json()] == [n["id"] for n in reversed(created)]
    assert next_page(second) is None
    assert "x-next-cursor" not in second.headers


async def test_list_filters_by_status_on_every_page(client: AsyncTestClient[Any]) -> None:
    expired = [await schedule(client, target_date="2020-01-01T00:00:00Z") for _ in range(3)]
    await schedule(client)
    await schedule(client)

    pages = await every_page(client, "/api/v1/notifications/?status=expired&limit=2")

    assert [n["id"] for page in pages for n in page] == [n["id"] for n in reversed(expired)]


async def test_list_filters_by_type_on_every_page(client: AsyncTestClient[Any]) -> None:
    renewals = [await schedule(client, notification_type="contract.renewal") for _ in range(3)]
    await schedule(client, notification_type="invoice.due")

    pages = await every_page(client, "/api/v1/notifications/?type=contract.renewal&limit=2")

    assert [n["id"] for page in pages for n in page] == [n["id"] for n in reversed(renewals)]


async def test_list_filters_by_entity_id(client: AsyncTestClient[Any]) -> None:
    mine = [await schedule(client, entity_id="contract-7") for _ in range(2)]
    await schedule(client, entity_id="contract-8")

    response = await client.get("/api/v1/notifications/", params={"entity_id": "contract-7"})

    assert [n["id"] for n in response.json()] == [n["id"] for n in reversed(mine)]


async def test_list_filters_by_creation_time_window(client: AsyncTestClient[Any]) -> None:
    first, middle, last = [await schedule(client, entity_id=f"c-{n}") for n in range(3)]
    created_at = datetime.datetime.fromisoformat(middle["created_at"])

    from_middle = await client.get(
        "/api/v1/notifications/", params={"created_after": created_at.isoformat()}
    )
    before_middle = await client.get(
        "/api/v1/notifications/", params={"created_before": created_at.isoformat()}
    )
    # The same instant written in another zone selects the same rows.
    in_new_york = created_at.astimezone(datetime.timezone(datetime.timedelta(hours=-5)))
    before_middle_elsewhere = await client.get(
        "/api/v1/notifications/", params={"created_before": in_new_york.isoformat()}
    )

    assert [n["id"] for n in from_middle.json()] == [last["id"], middle["id"]]
    assert [n["id"] for n in before_middle.json()] == [first["id"]]
    assert before_middle_elsewhere.json() == before_middle.json()


async def test_list_takes_creation_bounds_beyond_the_storable_range(
    client: AsyncTestClient[Any],
) -> None:
    """Every stored time lies between 1900 and 9000: a bound beyond selects what the range's
    edge does (all, or none), as any RFC 3339 time may be asked for; found by the fuzzer."""
    made = [await schedule(client, entity_id=f"c-{n}") for n in range(2)]
    newest_first = [n["id"] for n in reversed(made)]

    async def listed(**bounds: str) -> list[str]:
        response = await client.get("/api/v1/notifications/", params=bounds)
        assert response.status_code == 200, response.text
        return [n["id"] for n in response.json()]

    assert await listed(created_after="1464-09-14T16:29:09Z") == newest_first
    assert await listed(created_before="9999-12-31T23:59:59-23:59") == newest_first
    assert await listed(created_before="0353-06-12T07:42:06.67+09:13") == []
    assert await listed(created_after="9999-12-31T23:59:59+23:59") == []
    assert await listed(created_after="0001-01-01T00:00:00+09:13") == newest_first


async def test_list_keeps_every_filter_in_the_next_link(client: AsyncTestClient[Any]) -> None:
    start = datetime.datetime.now(datetime.UTC)
    wanted = [
        await schedule(client, target_date="2020-01-01T00:00:00Z", entity_id="contract-7")
        for _ in range(3)
    ]
    await schedule(client, target_date="2020-01-01T00:00:00Z", entity_id="contract-8")
    await schedule(client, entity_id="contract-7")
    query = httpx.QueryParams(
        status="expired",
        type="contract.renewal",
        entity_id="contract-7",
        created_after=start.isoformat(),
        created_before=days_from_now(1).isoformat(),
        limit=1,
    )

    pages = await every_page(client, f"/api/v1/notifications/?{query}")

    assert [n["id"] for page in pages for n in page] == [n["id"] for n in reversed(wanted)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"limit": "0"}, "limit", id="limit-zero"),
        pytest.param({"limit": "501"}, "limit", id="limit-over-500"),
        pytest.param({"limit": "many"}, "limit", id="limit-not-a-number"),
        pytest.param({"status": "lost"}, "status", id="unknown-status"),
        pytest.param(
            {"created_after": "2026-01-01T00:00:00"}, "created_after", id="created-after-naive"
        ),
        pytest.param(
            {"created_before": "2026-01-01T00:00:00"}, "created_before", id="created-before-naive"
        ),
        pytest.param(
            {"created_after": "yesterday"}, "created_after", id="created-after-not-a-date"
        ),
    ],
)
async def test_list_with_an_invalid_query_parameter_is_a_client_error_naming_it(
    client: AsyncTestClient[Any], params: dict[str, str], field: str
) -> None:
    response = await client.get("/api/v1/notifications/", params=params)

    assert 400 <= response.status_code < 500
    assert_problem(response, response.status_code, field)


async def test_list_with_an_invalid_cursor_is_a_400_problem(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/api/v1/notifications/", params={"cursor": "not-ours"})

    assert_problem(response, 400, "cursor")


async def test_list_with_a_nul_character_in_a_filter_is_a_client_error(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.get("/api/v1/notifications/", params={"entity_id": "a\u0000b"})

    assert_problem(response, 422, "entity_id")


# --- reading one ------------------------------------------------------------------------


async def test_get_notification_includes_its_delivery_attempts(
    client: AsyncTestClient[Any], worker: None
) -> None:
    notification = await schedule(client, target_date=days_from_now(1).isoformat())

    sent = await wait_for_status(client, notification["id"], "sent")

    assert sent["sent_at"] is not None
    assert sent["attempts"] == 1
    (attempt,) = sent["delivery_attempts"]
    assert attempt["attempt"] == 1
    assert attempt["channel"] == "log"
    assert attempt["outcome"] == "delivered"
    assert attempt["error"] is None
    started_at = datetime.datetime.fromisoformat(attempt["started_at"])
    assert started_at <= datetime.datetime.fromisoformat(attempt["finished_at"])


async def test_get_notification_before_delivery_has_no_attempts(
    client: AsyncTestClient[Any],
) -> None:
    notification = await schedule(client)

    response = await client.get(f"/api/v1/notifications/{notification['id']}")

    assert response.status_code == 200
    assert response.json() == {**notification, "delivery_attempts": []}


async def test_get_unknown_notification_is_a_404_problem(client: AsyncTestClient[Any]) -> None:
    response = await client.get(f"/api/v1/notifications/{uuid.uuid4()}")

    assert_problem(response, 404)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_malformed_notification_id_is_a_client_error(
    client: AsyncTestClient[Any], method: str
) -> None:
    response = await client.request(method, "/api/v1/notifications/12345")

    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


# --- cancelling -------------------------------------------------------------------------


async def test_cancel_pending_notification_cancels_it_and_its_job(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    notification = await schedule(client)

    response = await client.delete(f"/api/v1/notifications/{notification['id']}")

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert set(cancelled) >= SEED_FIELDS
    assert cancelled["id"] == notification["id"]
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] is not None
    assert cancelled["sent_at"] is None
    (job,) = await deliver_jobs(db, notification["id"])
    assert job["status"] == "cancelled"
    fetched = await client.get(f"/api/v1/notifications/{notification['id']}")
    assert fetched.json()["status"] == "cancelled"


async def test_cancel_twice_returns_the_same_cancelled_notification(
    client: AsyncTestClient[Any],
) -> None:
    notification = await schedule(client)

    first = await client.delete(f"/api/v1/notifications/{notification['id']}")
    second = await client.delete(f"/api/v1/notifications/{notification['id']}")

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()


async def test_cancel_sent_notification_is_a_409_problem(
    client: AsyncTestClient[Any], worker: None
) -> None:
    notification = await schedule(client, target_date=days_from_now(1).isoformat())
    await wait_for_status(client, notification["id"], "sent")

    response = await client.delete(f"/api/v1/notifications/{notification['id']}")

    assert_problem(response, 409)
    fetched = await client.get(f"/api/v1/notifications/{notification['id']}")
    assert fetched.json()["status"] == "sent"


async def test_cancel_sent_webhook_notification_is_a_409_problem(
    client: AsyncTestClient[Any], worker: None, receiver: WebhookReceiver
) -> None:
    notification = await schedule(
        client, channel="webhook", recipient=receiver.url, target_date=days_from_now(1).isoformat()
    )
    await wait_for_status(client, notification["id"], "sent")

    response = await client.delete(f"/api/v1/notifications/{notification['id']}")

    assert_problem(response, 409)
    assert len(receiver.received()) == 1


async def test_cancel_expired_notification_is_a_409_problem(client: AsyncTestClient[Any]) -> None:
    notification = await schedule(client, target_date="2020-01-01T00:00:00Z")

    response = await client.delete(f"/api/v1/notifications/{notification['id']}")

    assert_problem(response, 409)


async def test_cancel_dead_notification_stops_it_from_being_replayed(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    notification = await schedule(client)
    await set_status(db, notification["id"], "dead")

    cancelled = await client.delete(f"/api/v1/notifications/{notification['id']}")
    replayed = await client.post(f"/api/v1/notifications/{notification['id']}/retry")

    assert cancelled.json()["status"] == "cancelled"
    assert_problem(replayed, 409)


async def test_cancel_unknown_notification_is_a_404_problem(client: AsyncTestClient[Any]) -> None:
    response = await client.delete(f"/api/v1/notifications/{uuid.uuid4()}")

    assert_problem(response, 404)


# --- replaying --------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["dead", "failed"])
async def test_retry_makes_a_dead_or_failed_notification_pending_with_a_new_job(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], status: str
) -> None:
    notification = await schedule(client)
    (old_job,) = await deliver_jobs(db, notification["id"])
    await set_status(db, notification["id"], status)

    response = await client.post(f"/api/v1/notifications/{notification['id']}/retry")

    assert response.status_code == 202, response.text
    replayed = response.json()
    assert replayed["id"] == notification["id"]
    assert replayed["status"] == "pending"
    assert replayed["attempts"] == 0
    new_job = (await deliver_jobs(db, notification["id"]))[-1]
    assert new_job["id"] != old_job["id"]
    assert new_job["status"] == "todo"
    assert new_job["args"] == {"notification_id": notification["id"], "tenant_id": "default"}
    cursor = await db.execute(
        "SELECT job_id FROM notifier.notifications WHERE id = %s", [notification["id"]]
    )
    assert await cursor.fetchone() == {"job_id": new_job["id"]}


async def test_retry_delivers_a_notification_the_receiver_had_refused(
    client: AsyncTestClient[Any], worker: None, receiver: WebhookReceiver
) -> None:
    receiver.script(410)  # gone: a permanent failure, then 200 for whatever comes next
    notification = await schedule(
        client, channel="webhook", recipient=receiver.url, target_date=days_from_now(1).isoformat()
    )
    failed = await wait_for_status(client, notification["id"], "failed")
    assert failed["last_error"] == "receiver answered 410 Gone"

    response = await client.post(f"/api/v1/notifications/{notification['id']}/retry")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    sent = await wait_for_status(client, notification["id"], "sent")
    assert [a["outcome"] for a in sent["delivery_attempts"]] == ["failed", "delivered"]
    first, second = receiver.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


@pytest.mark.parametrize("target_date", [None, "2020-01-01T00:00:00Z"], ids=["pending", "expired"])
async def test_retry_of_a_notification_neither_failed_nor_dead_is_a_409_problem(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], target_date: str | None
) -> None:
    overrides = {"target_date": target_date} if target_date else {}
    notification = await schedule(client, **overrides)
    jobs_before = await deliver_jobs(db, notification["id"])

    response = await client.post(f"/api/v1/notifications/{notification['id']}/retry")

    assert_problem(response, 409)
    assert await deliver_jobs(db, notification["id"]) == jobs_before


async def test_retry_of_a_sent_notification_is_a_409_problem(
    client: AsyncTestClient[Any], worker: None
) -> None:
    notification = await schedule(client, target_date=days_from_now(1).isoformat())
    await wait_for_status(client, notification["id"], "sent")

    response = await client.post(f"/api/v1/notifications/{notification['id']}/retry")

    assert_problem(response, 409)


async def test_retry_of_an_unknown_notification_is_a_404_problem(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(f"/api/v1/notifications/{uuid.uuid4()}/retry")

    assert_problem(response, 404)


# --- Idempotency-Key --------------------------------------------------------------------


async def test_create_repeated_with_the_same_idempotency_key_returns_the_first_answer(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    body = request_body(phone="+441234567890")
    headers = {"Idempotency-Key": "renewal-contract-42"}

    first = await client.post("/api/v1/notifications/", json=body, headers=headers)
    repeat = await client.post("/api/v1/notifications/", json=body, headers=headers)

    assert first.status_code == repeat.status_code == 201
    assert repeat.content == first.content
    assert await count_rows(db, "notifier.notifications") == 1
    assert await count_rows(db, "procrastinate_jobs") == 1


async def test_create_reusing_an_idempotency_key_for_another_body_is_a_422_problem(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    headers = {"Idempotency-Key": "renewal-1"}
    await client.post("/api/v1/notifications/", json=request_body(), headers=headers)

    response = await client.post(
        "/api/v1/notifications/", json=request_body(entity_id="contract-43"), headers=headers
    )

    assert_problem(response, 422, "Idempotency-Key")
    assert response.json()["errors"][0]["source"] == "header"
    assert await count_rows(db, "notifier.notifications") == 1


async def test_twenty_concurrent_creates_with_one_idempotency_key_create_one_notification(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    body = request_body()
    headers = {"Idempotency-Key": "renewal-burst"}

    responses = await asyncio.gather(
        *(client.post("/api/v1/notifications/", json=body, headers=headers) for _ in range(20))
    )

    assert {response.status_code for response in responses} == {201}
    assert len({response.content for response in responses}) == 1
    assert await count_rows(db, "notifier.notifications") == 1
    assert await count_rows(db, "procrastinate_jobs") == 1


async def test_idempotency_keys_are_scoped_per_route(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    first, second = await schedule(client), await schedule(client)
    for notification in (first, second):
        await set_status(db, notification["id"], "dead")

    event = await client.post("/api/v1/events/", json={"type": "x"}, headers=headers)
    created = await client.post("/api/v1/notifications/", json=request_body(), headers=headers)
    retried = [
        await client.post(f"/api/v1/notifications/{n['id']}/retry", headers=headers)
        for n in (first, second)
    ]

    assert event.status_code == 201
    assert created.status_code == 201
    assert [response.status_code for response in retried] == [202, 202]
    assert [response.json()["id"] for response in retried] == [first["id"], second["id"]]


async def test_retry_repeated_with_the_same_idempotency_key_replays_once(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    notification = await schedule(client)
    await set_status(db, notification["id"], "dead")
    jobs_before = len(await deliver_jobs(db, notification["id"]))
    url = f"/api/v1/notifications/{notification['id']}/retry"
    headers = {"Idempotency-Key": "replay-1"}

    first = await client.post(url, headers=headers)
    repeat = await client.post(url, headers=headers)

    assert first.status_code == repeat.status_code == 202
    assert repeat.content == first.content
    assert len(await deliver_jobs(db, notification["id"])) == jobs_before + 1
