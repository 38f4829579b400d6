"""Time zones and quiet hours through the API, routing rules and a real worker."""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.support import (
    WebhookReceiver,
    assert_problem,
    eventually,
    parse_time,
    wait_for_status,
)

UTC = datetime.UTC
KOLKATA = zoneinfo.ZoneInfo("Asia/Kolkata")  # +05:30 all year: no DST to reason about here


def _notification(**changes: Any) -> dict[str, Any]:
    body = {
        "notification_type": "invoice.due",
        "entity_id": "invoice-7",
        "target_date": "2027-01-31T09:00:00Z",
        "lead_time_days": 7,
        "channel": "log",
        "recipient": "ada@example.com",
    }
    return body | changes


async def test_a_send_inside_quiet_hours_waits_for_their_end_then_goes(
    client: AsyncTestClient[Any], worker: None
) -> None:
    now = datetime.datetime.now(UTC)
    local = now.astimezone(KOLKATA)
    # A quiet window that started an hour ago and ends a few seconds from now, local time.
    end = (local + datetime.timedelta(seconds=4)).replace(microsecond=0)
    window = {
        "start": (local - datetime.timedelta(hours=1)).strftime("%H:%M:%S"),
        "end": end.strftime("%H:%M:%S"),
    }
    response = await client.post(
        "/api/v1/notifications/",
        json=_notification(
            # Due one second from now, which is still quiet.
            target_date=(now + datetime.timedelta(days=1, seconds=1)).isoformat(),
            lead_time_days=1,
            timezone="Asia/Kolkata",
            quiet_hours=window,
        ),
    )

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "pending"
    assert created["timezone"] == "Asia/Kolkata"
    assert created["quiet_hours"] == window
    assert parse_time(created["send_at"]) == end

    async def sent() -> dict[str, Any] | None:
        got = (await client.get(f"/api/v1/notifications/{created['id']}")).json()
        return got if got["status"] == "sent" else None

    delivered = await eventually(sent, timeout=20)
    assert parse_time(delivered["sent_at"]) >= end


async def test_a_retry_that_would_fall_in_quiet_hours_waits_for_their_end(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    now = datetime.datetime.now(UTC)
    local = now.astimezone(KOLKATA).replace(microsecond=0)
    # Sent before the window opens; the receiver's Retry-After points into the window.
    window = {
        "start": (local + datetime.timedelta(seconds=3)).strftime("%H:%M:%S"),
        "end": (local + datetime.timedelta(seconds=7)).strftime("%H:%M:%S"),
    }
    window_end = (local + datetime.timedelta(seconds=7)).astimezone(UTC)
    receiver.script((503, {"Retry-After": "2"}))
    response = await client.post(
        "/api/v1/notifications/",
        json=_notification(
            target_date=(now + datetime.timedelta(days=1, seconds=1)).isoformat(),
            lead_time_days=1,
            channel="webhook",
            recipient=receiver.url,
            timezone="Asia/Kolkata",
            quiet_hours=window,
        ),
    )
    assert response.status_code == 201, response.text

    sent = await wait_for_status(client, response.json()["id"], "sent", timeout=30)

    first, second = sent["delivery_attempts"]
    assert (first["outcome"], second["outcome"]) == ("retry", "delivered")
    assert parse_time(second["started_at"]) >= window_end


async def test_outside_quiet_hours_the_send_time_is_unchanged(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/api/v1/notifications/",
        json=_notification(
            target_date="2027-01-31T09:00:00+05:30",
            timezone="Asia/Kolkata",
            quiet_hours={"start": "22:00", "end": "08:00"},
        ),
    )
    assert response.status_code == 201, response.text
    assert parse_time(response.json()["send_at"]) == datetime.datetime(
        2027, 1, 24, 9, 0, tzinfo=KOLKATA
    )


async def test_seven_days_before_counts_days_on_the_recipients_clock(
    client: AsyncTestClient[Any],
) -> None:
    """2027-03-28 09:00 in Berlin is CEST; a week earlier is CET: 167 hours, not 168."""
    response = await client.post(
        "/api/v1/notifications/",
        json=_notification(target_date="2027-03-28T09:00:00+02:00", timezone="Europe/Berlin"),
    )
    assert response.status_code == 201, response.text
    assert parse_time(response.json()["send_at"]) == datetime.datetime(
        2027, 3, 21, 8, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"timezone": "Mars/Olympus_Mons"}, "timezone", id="unknown-zone"),
        pytest.param({"timezone": "+02:00"}, "timezone", id="offset-is-not-a-zone"),
        pytest.param(
            {"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours", id="empty"
        ),
        pytest.param(
            {"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start", id="hour"
        ),
        pytest.param({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end", id="no-end"),
        pytest.param(
            {"quiet_hours": {"start": "22:00", "end": "08:00", "x": 1}}, "quiet_hours.x", id="extra"
        ),
    ],
)
async def test_bad_zones_and_windows_are_422_naming_the_field(
    client: AsyncTestClient[Any], changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/notifications/", json=_notification(**changes))
    assert_problem(response, 422, field)


async def test_rule_zone_and_quiet_hours_shape_the_notifications_it_makes(
    client: AsyncTestClient[Any], worker: None
) -> None:
    rule = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "password.expiring",
            "channel": "log",
            "recipient_field": "email",
            "date_field": "expires_at",
            "lead_times": ["P7D", "P1D"],
            "timezone": "Europe/Berlin",
            "quiet_hours": {"start": "22:00", "end": "08:00"},
        },
    )
    assert rule.status_code == 201, rule.text
    assert rule.json()["timezone"] == "Europe/Berlin"
    assert rule.json()["quiet_hours"] == {"start": "22:00", "end": "08:00"}

    event = await client.post(
        "/api/v1/events/",
        json={
            "type": "password.expiring",
            # 23:30 in Berlin (CEST) on the day after the clocks go forward.
            "payload": {"email": "ada@example.com", "expires_at": "2027-03-29T23:30:00+02:00"},
        },
    )
    assert event.status_code == 201, event.text

    async def made() -> list[dict[str, Any]]:
        listed = await client.get("/api/v1/notifications/", params={"type": "password.expiring"})
        return list(listed.json()) if len(listed.json()) == 2 else []

    notifications = {n["lead_time_days"]: n for n in await eventually(made)}
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    # 23:30 local a week (and a day) earlier is quiet: both move to 08:00 the next morning.
    assert parse_time(notifications[7]["send_at"]) == datetime.datetime(
        2027, 3, 23, 8, 0, tzinfo=berlin
    )
    assert parse_time(notifications[1]["send_at"]) == datetime.datetime(
        2027, 3, 29, 8, 0, tzinfo=berlin
    )
    assert {n["status"] for n in notifications.values()} == {"pending"}
    assert {n["timezone"] for n in notifications.values()} == {"Europe/Berlin"}


async def test_rule_with_an_unknown_zone_is_422(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "x",
            "channel": "log",
            "recipient": "ops",
            "timezone": "Europe/Atlantis",
        },
    )
    assert_problem(response, 422, "timezone")


async def test_a_rule_reads_each_recipients_zone_from_the_payload(
    client: AsyncTestClient[Any], worker: None
) -> None:
    rule = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "contract.renewal",
            "channel": "log",
            "recipient_field": "email",
            "date_field": "renews_at",
            "lead_times": ["P7D"],
            "timezone_field": "customer.timezone",
            "timezone": "Europe/Berlin",
        },
    )
    assert rule.status_code == 201, rule.text
    renews_at = "2027-03-28T09:00:00+02:00"  # 09:00 in Berlin, 03:00 in New York
    payloads: dict[str, dict[str, Any]] = {
        "ny": {"email": "ny@example.com", "customer": {"timezone": "America/New_York"}},
        "fallback": {"email": "berlin@example.com"},
        "bad": {"email": "bad@example.com", "customer": {"timezone": "Moon/Base"}},
    }
    for key, payload in payloads.items():
        response = await client.post(
            "/api/v1/events/",
            json={"type": "contract.renewal", "payload": payload | {"renews_at": renews_at}},
        )
        assert response.status_code == 201, key

    async def made() -> list[dict[str, Any]]:
        listed = (
            await client.get("/api/v1/notifications/", params={"type": "contract.renewal"})
        ).json()
        return list(listed) if len(listed) == 3 else []

    by_recipient = {n["recipient"]: n for n in await eventually(made)}
    # A payload the rule cannot use yields a failed notification without a recipient.
    ny, berlin, bad = (by_recipient[r] for r in ("ny@example.com", "berlin@example.com", ""))
    # New York moved its clocks on 2027-03-14, so the week before is plain 168 hours there.
    assert ny["timezone"] == "America/New_York"
    assert parse_time(ny["send_at"]) == datetime.datetime(2027, 3, 21, 7, 0, tzinfo=UTC)
    assert berlin["timezone"] == "Europe/Berlin"
    assert parse_time(berlin["send_at"]) == datetime.datetime(2027, 3, 21, 8, 0, tzinfo=UTC)
    assert bad["status"] == "failed"
    assert "customer.timezone" in bad["last_error"]
