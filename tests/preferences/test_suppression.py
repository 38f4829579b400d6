"""Opted-out recipients: their notifications end ``suppressed``, visibly, and are never sent.

A real worker delivers to a real HTTP receiver; the receiver proves what was not sent.
"""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from tests.notifications.test_delivery import get_notification, schedule
from tests.preferences.test_api import opt_out
from tests.support import WebhookReceiver, wait_for_status, wait_until_jobs_ran


async def test_an_opted_out_recipient_is_suppressed_and_never_sent(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    opted = await opt_out(
        client, recipient=receiver.url, channel="webhook", notification_type="invoice.*"
    )

    notification = await schedule(client, receiver.url)  # an invoice.due, due now
    suppressed = await wait_for_status(client, notification["id"], "suppressed")

    assert receiver.received() == []
    assert suppressed["sent_at"] is None
    assert suppressed["attempts"] == 0
    assert suppressed["delivery_attempts"] == []
    assert opted["id"] in suppressed["last_error"]
    assert "opted out of type invoice.* on channel webhook" in suppressed["last_error"]
    listed = await client.get("/api/v1/notifications/", params={"status": "suppressed"})
    assert [n["id"] for n in listed.json()] == [notification["id"]]


async def test_other_types_and_recipients_still_go_out(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    await opt_out(client, recipient="https://elsewhere.example/hooks")
    await opt_out(client, recipient=receiver.url, notification_type="payment.failed")
    await opt_out(client, recipient=receiver.url, channel="log")

    notification = await schedule(client, receiver.url)

    await wait_for_status(client, notification["id"], "sent")
    assert len(receiver.received()) == 1


async def test_an_opt_out_after_scheduling_still_stops_the_send(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    notification = await schedule(client, receiver.url, send_in=datetime.timedelta(seconds=2))
    # Recipients compare case-insensitively.
    await opt_out(client, recipient=receiver.url.replace("/hooks", "/HOOKS"))

    suppressed = await wait_for_status(client, notification["id"], "suppressed")

    assert "every type on every channel" in suppressed["last_error"]
    await wait_until_jobs_ran(db)  # the delivery job is over: it sent nothing
    assert receiver.received() == []


async def test_after_opting_back_in_new_notifications_are_sent(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    opted = await opt_out(client, recipient=receiver.url)
    first = await schedule(client, receiver.url, entity_id="invoice-1")
    await wait_for_status(client, first["id"], "suppressed")

    assert (await client.delete(f"/api/v1/preferences/{opted['id']}")).status_code == 204
    second = await schedule(client, receiver.url, entity_id="invoice-2")

    await wait_for_status(client, second["id"], "sent")
    assert [r.json()["data"]["entity_id"] for r in receiver.received()] == ["invoice-2"]
    # A suppressed notification is final: it is neither replayed nor cancelled.
    assert (await client.post(f"/api/v1/notifications/{first['id']}/retry")).status_code == 409
    assert (await client.delete(f"/api/v1/notifications/{first['id']}")).status_code == 409
    assert (await get_notification(client, first["id"]))["status"] == "suppressed"
