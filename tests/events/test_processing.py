"""Processing events: routing rules turn them into notifications with their deliver jobs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.bootstrap import open_services
from notifier.events.routing import RoutingError, drafts_for_event, lookup, parse_target_date
from notifier.events.schemas import Event
from notifier.notifications.schemas import NotificationStatus
from notifier.queue import PROCESS_EVENT_TASK
from notifier.rules.schemas import Rule
from notifier.services import Services
from notifier.settings import Settings
from notifier.worker import run_worker
from tests.support import ReceivedRequest, WebhookReceiver, eventually, parse_time

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)


class Arrivals(list[ReceivedRequest]):
    """The receiver's request list, stamping the wall-clock time each request arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: ReceivedRequest, /) -> None:
        self.times.append(time.time())
        super().append(item)


async def create_rule(client: AsyncTestClient[Any], **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/rules/", json=fields)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def publish(
    client: AsyncTestClient[Any], event_type: str, payload: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post("/api/v1/events/", json={"type": event_type, "payload": payload})
    assert response.status_code == 201, response.text
    event: dict[str, Any] = response.json()
    return event


async def processed(
    client: AsyncTestClient[Any], event_id: str, *, timeout: float = 15.0
) -> dict[str, Any]:
    """The event detail once the worker has processed it."""

    async def done() -> dict[str, Any] | None:
        response = await client.get(f"/api/v1/events/{event_id}")
        assert response.status_code == 200, response.text
        event: dict[str, Any] = response.json()
        return event if event["processed_at"] else None

    result: dict[str, Any] = await eventually(done, timeout=timeout)
    return result


def by_lead_days(notifications: list[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    return {n["lead_time_days"]: n for n in notifications}


async def deliver_jobs(db: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, Any]]:
    """Deliver jobs by the notification id in their arguments."""
    cursor = await db.execute(
        """
        SELECT id, status::text AS status, scheduled_at, args
        FROM procrastinate_jobs WHERE task_name = 'notifier.deliver' ORDER BY id
        """
    )
    return {row["args"]["notification_id"]: row for row in await cursor.fetchall()}


# --- the acceptance scenario -----------------------------------------------------------


async def test_password_expiring_in_three_days_skips_the_week_reminder(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    rule = await create_rule(
        client,
        event_type="password.expiring",
        channel="webhook",
        recipient=receiver.url,
        date_field="expires_at",
        lead_times=["P7D", "P1D"],
    )
    expires_at = (datetime.datetime.now(UTC) + 3 * DAY).replace(microsecond=0)
    published = await publish(
        client, "password.expiring", {"entity_id": "user-7", "expires_at": expires_at.isoformat()}
    )

    event = await processed(client, published["id"])

    notifications = by_lead_days(event["notifications"])
    assert sorted(notifications) == [1, 7]
    week, day = notifications[7], notifications[1]
    assert week["status"] == "skipped"
    assert parse_time(week["send_at"]) == expires_at - 7 * DAY
    assert day["status"] == "pending"
    assert parse_time(day["send_at"]) == expires_at - DAY
    for notification in (week, day):
        assert notification["rule_id"] == rule["id"]
        assert notification["event_id"] == published["id"]
        assert notification["channel"] == "webhook"
        assert notification["recipient"] == receiver.url
        assert notification["notification_type"] == "password.expiring"
        assert notification["entity_id"] == "user-7"
        assert parse_time(notification["target_date"]) == expires_at
    jobs = await deliver_jobs(db)
    assert list(jobs) == [day["id"]]  # the skipped one has no job
    assert jobs[day["id"]]["status"] == "todo"
    assert jobs[day["id"]]["scheduled_at"] == expires_at - DAY
    assert receiver.received() == []


async def test_near_term_dates_scaled_time(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    """The same scenario in seconds: the 1-second reminder is really sent, not earlier."""
    arrivals = Arrivals()
    receiver.requests = arrivals
    await create_rule(
        client,
        event_type="password.expiring",
        channel="webhook",
        recipient=receiver.url,
        date_field="expires_at",
        lead_times=["PT7S", "PT1S"],
    )
    expires_at = datetime.datetime.now(UTC) + datetime.timedelta(seconds=4)
    published = await publish(
        client, "password.expiring", {"user_id": 7, "expires_at": expires_at.isoformat()}
    )

    event = await processed(client, published["id"], timeout=3)
    notifications = {n["status"]: n for n in event["notifications"]}
    assert sorted(notifications) == ["pending", "skipped"]
    assert notifications["skipped"]["lead_time_days"] == pytest.approx(7 / 86400)
    one_second = notifications["pending"]
    send_at = parse_time(one_second["send_at"])
    assert send_at == expires_at - datetime.timedelta(seconds=1)

    async def sent() -> dict[str, Any] | None:
        response = await client.get(f"/api/v1/notifications/{one_second['id']}")
        body: dict[str, Any] = response.json()
        return body if body["status"] == "sent" else None

    delivered = await eventually(sent, timeout=15)

    (request,) = receiver.received()
    assert request.headers["webhook-id"] == f"msg_{uuid.UUID(one_second['id']).hex}"
    assert request.json()["data"]["payload"]["expires_at"] == expires_at.isoformat()
    assert arrivals.times[0] >= send_at.timestamp()
    assert parse_time(delivered["delivery_attempts"][0]["started_at"]) >= send_at
    assert parse_time(delivered["sent_at"]) >= send_at
    jobs = await deliver_jobs(db)
    assert list(jobs) == [one_second["id"]]


async def test_a_payload_date_with_any_rfc3339_offset_makes_its_notifications(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    """PostgreSQL reads offsets beyond 15:59 as errors in text, and the worker stored the
    parsed date as given: an offset of +23:31 (valid RFC 3339) made processing fail."""
    await create_rule(
        client,
        event_type="contract.ending",
        channel="log",
        recipient="ops",
        date_field="ends_at",
        lead_times=["P1D"],
    )
    ends_at = "2031-06-04T23:52:32+23:31"

    event = await processed(
        client, (await publish(client, "contract.ending", {"ends_at": ends_at}))["id"]
    )

    assert event["processing_error"] is None
    (notification,) = event["notifications"]
    assert parse_time(notification["target_date"]) == datetime.datetime.fromisoformat(ends_at)
    assert notification["status"] == "pending"


async def test_target_date_already_passed_stores_expired_notifications(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await create_rule(
        client,
        event_type="password.expiring",
        channel="log",
        recipient_field="email",
        date_field="expires_at",
        lead_times=["P7D", "P1D"],
    )
    published = await publish(
        client,
        "password.expiring",
        {"email": "ada@example.com", "expires_at": "2020-01-01"},
    )

    event = await processed(client, published["id"])

    assert sorted((n["lead_time_days"], n["status"]) for n in event["notifications"]) == [
        (1, "expired"),
        (7, "expired"),
    ]
    assert all(
        parse_time(n["target_date"]) == datetime.datetime(2020, 1, 1, tzinfo=UTC)
        for n in event["notifications"]
    )
    assert {n["last_error"] for n in event["notifications"]} == {
        "target date 2020-01-01T00:00:00+00:00 had passed more than 300 s "
        "(NOTIFIER_EXPIRY_GRACE_SECONDS) before it was accepted"
    }
    assert await deliver_jobs(db) == {}


async def test_an_event_processed_after_its_target_within_the_grace_is_delivered(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, settings: Settings
) -> None:
    """Published one second before its target; the workers catch up two seconds after it
    (a backlog, an outage): notifier's delay does not expire it."""
    await create_rule(
        client,
        event_type="session.ending",
        channel="webhook",
        recipient=receiver.url,
        date_field="ends_at",
        lead_times=["PT1H"],
        deliver_within="PT1H",
    )
    ends_at = datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)
    published = await publish(client, "session.ending", {"ends_at": ends_at.isoformat()})
    await asyncio.sleep(3)

    async with open_services(settings, name="notifier-test-late") as services:
        worker = asyncio.create_task(run_worker(services, install_signal_handlers=False))
        try:
            event = await processed(client, published["id"])

            async def sent() -> bool:
                response = await client.get(f"/api/v1/events/{published['id']}")
                return {n["status"] for n in response.json()["notifications"]} == {"sent"}

            await eventually(sent, timeout=15)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    (notification,) = event["notifications"]
    assert notification["last_error"] is None
    # The rule's deadline, one hour after the send time.
    send_at = parse_time(notification["send_at"])
    assert parse_time(notification["expires_at"]) == send_at + datetime.timedelta(hours=1)
    assert len(receiver.received()) == 1


async def test_lead_time_zero_rule_is_delivered_on_the_date(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    await create_rule(
        client,
        event_type="trial.ends",
        channel="webhook",
        recipient=receiver.url,
        date_field="ends_at",
        lead_times=["PT0S"],
    )
    ends_at = datetime.datetime.now(UTC) + datetime.timedelta(seconds=2)
    published = await publish(client, "trial.ends", {"ends_at": ends_at.isoformat()})

    event = await processed(client, published["id"])
    (notification,) = event["notifications"]
    assert parse_time(notification["send_at"]) == ends_at

    async def sent() -> bool:
        response = await client.get(f"/api/v1/notifications/{notification['id']}")
        return bool(response.json()["status"] == "sent")

    await eventually(sent, timeout=15)
    assert len(receiver.received()) == 1


# --- which rules match ---------------------------------------------------------------


async def test_rules_match_exactly_by_prefix_or_everything_and_only_when_enabled(
    client: AsyncTestClient[Any], worker: None
) -> None:
    exact = await create_rule(
        client, event_type="payment.failed", channel="log", recipient="exact@example.com"
    )
    prefix = await create_rule(
        client, event_type="payment.*", channel="log", recipient="prefix@example.com"
    )
    catch_all = await create_rule(client, event_type="*", channel="log", recipient="all@x.com")
    await create_rule(
        client,
        event_type="payment.failed",
        channel="log",
        recipient="disabled@example.com",
        enabled=False,
    )
    await create_rule(client, event_type="user.*", channel="log", recipient="user@example.com")
    await create_rule(
        client, event_type="payment.failed.retry", channel="log", recipient="longer@example.com"
    )

    cases = {
        "payment.failed": {exact["id"], prefix["id"], catch_all["id"]},
        "payment.refunded": {prefix["id"], catch_all["id"]},
        "payment": {catch_all["id"]},  # "payment.*" needs something after the dot
        "paymentsfailed": {catch_all["id"]},
        "order.created": {catch_all["id"]},
    }
    published = {event_type: await publish(client, event_type, {"n": 1}) for event_type in cases}

    for event_type, expected in cases.items():
        event = await processed(client, published[event_type]["id"])
        assert {n["rule_id"] for n in event["notifications"]} == expected, event_type
        assert {n["status"] for n in event["notifications"]} <= {"pending", "sent"}


async def test_recipient_taken_from_a_nested_payload_field(
    client: AsyncTestClient[Any], worker: None
) -> None:
    await create_rule(
        client, event_type="user.signup", channel="log", recipient_field="user.contact.email"
    )
    published = await publish(
        client, "user.signup", {"user": {"contact": {"email": "ada@example.com"}}}
    )

    event = await processed(client, published["id"])

    (notification,) = event["notifications"]
    assert notification["recipient"] == "ada@example.com"


async def test_missing_recipient_field_yields_a_visible_failed_notification(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    good = await create_rule(
        client, event_type="user.signup", channel="log", recipient="ops@example.com"
    )
    bad = await create_rule(
        client, event_type="user.signup", channel="log", recipient_field="email"
    )
    published = await publish(client, "user.signup", {"name": "Ada"})

    event = await processed(client, published["id"])

    notifications = {n["rule_id"]: n for n in event["notifications"]}
    failed = notifications[bad["id"]]
    assert failed["status"] == "failed"
    assert failed["last_error"] == "payload has no field 'email'"
    assert failed["attempts"] == 0

    # The other rule is not held back by the broken one.
    async def other_sent() -> bool:
        response = await client.get(f"/api/v1/notifications/{notifications[good['id']]['id']}")
        return bool(response.json()["status"] == "sent")

    await eventually(other_sent)
    assert list(await deliver_jobs(db)) == [notifications[good["id"]]["id"]]
    listed = await client.get("/api/v1/notifications/", params={"status": "failed"})
    assert [n["id"] for n in listed.json()] == [failed["id"]]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"email": None}, "payload field 'email' is not a usable recipient"),
        ({"email": ""}, "payload field 'email' is not a usable recipient"),
        ({"email": {"address": "a@b.c"}}, "payload field 'email' is not a usable recipient"),
        (
            {"email": "a@b.c", "due": "next tuesday"},
            "payload field 'due' is not an ISO 8601 date or date-time",
        ),
        (
            {"email": "a@b.c", "due": "2030-01-01T10:00:00"},
            "payload field 'due' is a date-time without a time zone",
        ),
        (
            {"email": "a@b.c", "due": 1893456000},
            "payload field 'due' is not an ISO 8601 date or date-time",
        ),
        ({"email": "a@b.c"}, "payload has no field 'due'"),
        # Seven days before year 1 does not exist in Python; year 10000 cannot be read back.
        ({"email": "a@b.c", "due": "0001-01-02"}, "payload field 'due' is out of range"),
        (
            {"email": "a@b.c", "due": "9999-12-31T23:00:00-14:00"},
            "payload field 'due' is out of range",
        ),
    ],
)
async def test_unusable_payload_yields_failed_notification_naming_the_field(
    client: AsyncTestClient[Any], worker: None, payload: dict[str, Any], error: str
) -> None:
    await create_rule(
        client,
        event_type="bill.due",
        channel="log",
        recipient_field="email",
        date_field="due",
        lead_times=["P7D"],
    )
    published = await publish(client, "bill.due", payload)

    event = await processed(client, published["id"])

    (notification,) = event["notifications"]
    assert (notification["status"], notification["last_error"]) == ("failed", error)


async def test_event_without_matching_rules_is_processed_into_nothing(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    published = await publish(client, "nobody.cares", {"x": 1})

    event = await processed(client, published["id"])

    assert event["notifications"] == []
    assert await deliver_jobs(db) == {}


# --- exactly once per event -------------------------------------------------------------


async def count_notifications(db: psycopg.AsyncConnection[Any], event_id: str) -> int:
    cursor = await db.execute(
        "SELECT count(*) AS n FROM notifier.notifications WHERE event_id = %s", [event_id]
    )
    row = await cursor.fetchone()
    assert row is not None
    n: int = row["n"]
    return n


async def test_processing_an_event_again_creates_no_duplicates(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    services: Services,
    worker: None,
) -> None:
    await create_rule(
        client,
        event_type="password.expiring",
        channel="log",
        recipient_field="email",
        date_field="expires_at",
        lead_times=["P7D", "P1D"],
    )
    expires_at = datetime.datetime.now(UTC) + 10 * DAY
    published = await publish(
        client,
        "password.expiring",
        {"email": "ada@example.com", "expires_at": expires_at.isoformat()},
    )
    first = await processed(client, published["id"])
    assert len(first["notifications"]) == 2

    # Run the process_event job again, as a redelivery after a crash would.
    job_id = await services.queue.configure_task(PROCESS_EVENT_TASK).defer_async(
        event_id=published["id"]
    )

    async def finished() -> str | None:
        cursor = await db.execute(
            "SELECT status::text AS status FROM procrastinate_jobs WHERE id = %s", [job_id]
        )
        row = await cursor.fetchone()
        return row["status"] if row and row["status"] not in {"todo", "doing"} else None

    assert await eventually(finished) == "succeeded"
    assert await count_notifications(db, published["id"]) == 2
    again = await client.get(f"/api/v1/events/{published['id']}")
    assert {n["id"] for n in again.json()["notifications"]} == {
        n["id"] for n in first["notifications"]
    }
    assert again.json()["processed_at"] == first["processed_at"]
    assert len(await deliver_jobs(db)) == 2


async def test_concurrent_process_jobs_for_one_event_create_one_set(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], services: Services
) -> None:
    await create_rule(client, event_type="user.signup", channel="log", recipient_field="email")
    published = await publish(client, "user.signup", {"email": "ada@example.com"})
    for _ in range(4):
        await services.queue.configure_task(PROCESS_EVENT_TASK).defer_async(
            event_id=published["id"]
        )

    # Five jobs for one event, run by four slots at once.
    await run_worker(services, wait=False, install_signal_handlers=False, name="drain")

    assert await count_notifications(db, published["id"]) == 1
    cursor = await db.execute(
        "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs "
        "WHERE task_name = %s GROUP BY 1",
        [PROCESS_EVENT_TASK],
    )
    assert {row["status"]: row["n"] for row in await cursor.fetchall()} == {"succeeded": 5}


async def test_processing_an_unknown_event_does_nothing(
    db: psycopg.AsyncConnection[Any], services: Services
) -> None:
    job_id = await services.queue.configure_task(PROCESS_EVENT_TASK).defer_async(
        event_id=str(uuid.uuid4())
    )
    await run_worker(services, wait=False, install_signal_handlers=False, name="drain")

    cursor = await db.execute(
        "SELECT status::text AS status FROM procrastinate_jobs WHERE id = %s", [job_id]
    )
    assert await cursor.fetchone() == {"status": "succeeded"}
    cursor = await db.execute("SELECT count(*) AS n FROM notifier.notifications")
    assert await cursor.fetchone() == {"n": 0}


# --- routing, as pure functions ----------------------------------------------------------

NOW = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def make_rule(**fields: Any) -> Rule:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "name": "",
        "event_type": "x.*",
        "channel": "log",
        "recipient_field": None,
        "recipient": "ops@example.com",
        "date_field": None,
        "lead_times": [datetime.timedelta(0)],
        "template": None,
        "enabled": True,
        "created_at": NOW,
    }
    return Rule(**(values | fields))


def make_event(payload: dict[str, Any]) -> Event:
    return Event(id=uuid.uuid4(), type="x.happened", payload=payload, created_at=NOW)


def test_lookup_follows_dotted_paths() -> None:
    payload = {"a": {"b": {"c": 1}}, "flat": "yes"}
    assert lookup(payload, "a.b.c") == 1
    assert lookup(payload, "flat") == "yes"
    with pytest.raises(RoutingError, match=r"payload has no field 'a\.x'"):
        lookup(payload, "a.x")
    with pytest.raises(RoutingError, match=r"payload has no field 'flat\.deeper'"):
        lookup(payload, "flat.deeper")


def test_parse_target_date_forms() -> None:
    assert parse_target_date("2026-03-13", "d") == datetime.datetime(2026, 3, 13, tzinfo=UTC)
    assert parse_target_date("2026-03-13T08:30:00+02:00", "d") == datetime.datetime(
        2026, 3, 13, 6, 30, tzinfo=UTC
    )
    assert parse_target_date("2026-03-13T08:30:00Z", "d") == datetime.datetime(
        2026, 3, 13, 8, 30, tzinfo=UTC
    )
    for bad in ("13/03/2026", "", None, 3, ["2026-03-13"]):
        with pytest.raises(RoutingError):
            parse_target_date(bad, "d")


def test_drafts_one_per_lead_time_with_the_event_context() -> None:
    rule = make_rule(
        recipient=None,
        recipient_field="email",
        date_field="due",
        lead_times=[7 * DAY, DAY],
        template="reminder",
    )
    event = make_event({"email": "ada@example.com", "due": "2026-03-13", "id": 99})

    drafts = drafts_for_event(event, [rule], NOW)

    assert [(d.send.lead_time, d.send.status) for d in drafts] == [
        (7 * DAY, NotificationStatus.SKIPPED),
        (DAY, NotificationStatus.PENDING),
    ]
    for draft in drafts:
        assert draft.recipient == "ada@example.com"
        assert draft.entity_id == "99"
        assert draft.event_id == event.id
        assert draft.rule_id == rule.id
        assert draft.template == "reminder"
        assert draft.context == event.payload
        assert draft.error is None


def test_a_broken_rule_does_not_stop_the_others() -> None:
    broken = make_rule(recipient=None, recipient_field="missing")
    fine = make_rule()

    drafts = drafts_for_event(make_event({}), [broken, fine], NOW)

    assert [(d.rule_id, d.error) for d in drafts] == [
        (broken.id, "payload has no field 'missing'"),
        (fine.id, None),
    ]
    assert drafts[1].recipient == "ops@example.com"
    assert drafts[1].send.send_at == NOW


def test_numeric_recipient_field_is_accepted_as_text() -> None:
    rule = make_rule(recipient=None, recipient_field="phone", channel="sms")
    (draft,) = drafts_for_event(make_event({"phone": 15112345678}), [rule], NOW, phone_region="DE")
    assert (draft.recipient, draft.error) == ("+4915112345678", None)


def test_an_sms_recipient_is_resolved_in_the_phone_region_or_fails_the_draft() -> None:
    rule = make_rule(recipient=None, recipient_field="phone", channel="sms")
    event = make_event({"phone": "030 901820"})

    (national,) = drafts_for_event(event, [rule], NOW, phone_region="DE")
    (unresolved,) = drafts_for_event(event, [rule], NOW)

    assert (national.recipient, national.error) == ("+4930901820", None)
    assert unresolved.error is not None
    assert unresolved.error.startswith("payload field 'phone' ('030 901820') is not a phone")
    assert "NOTIFIER_DEFAULT_PHONE_REGION" in unresolved.error
