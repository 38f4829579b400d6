"""The dashboard's notification and event pages over HTTP, against the real app and database:
filters, keyset paging, bulk replay and cancel behind a confirmation stating the count, one
notification's page, the create form, scopes (hidden controls, forced 403) and tenants
(another tenant's id is a 404). The browser tests drive the key flows through Chromium."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.notifications import service
from notifier.notifications.schemas import NotificationCreate, NotificationStatus
from notifier.services import Services
from notifier.settings import Settings
from notifier.tenancy import Scope
from tests.conftest import CreateApiKey
from tests.ui.support import csrf_token, sign_in

TOMORROW = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)


@pytest.fixture
async def browser(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with no API key in its headers: a browser's view."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def schedule(services: Services, tenant: str = "default", **fields: Any) -> uuid.UUID:
    """A pending notification of ``tenant`` on the log channel, due tomorrow."""
    request = NotificationCreate(
        notification_type=fields.pop("notification_type", "invoice.due"),
        entity_id=fields.pop("entity_id", "inv-1"),
        target_date=TOMORROW,
        lead_time_days=1,
        channel=fields.pop("channel", "log"),
        recipient=fields.pop("recipient", "ops"),
        **fields,
    )
    outcome = await service.schedule(services.pool, services.channels, "log", tenant, request)
    return outcome.body.id


async def set_status(
    db: psycopg.AsyncConnection[Any], ids: list[uuid.UUID], status: NotificationStatus
) -> None:
    """Arrange: as if delivery had ended this way (the worker's path is the browser test's)."""
    await db.execute(
        "UPDATE notifier.notifications SET status = %s, last_error = 'HTTP 500' WHERE id = ANY(%s)",
        [status.value, ids],
    )


async def statuses(db: psycopg.AsyncConnection[Any], ids: list[uuid.UUID]) -> list[str]:
    cursor = await db.execute(
        "SELECT status FROM notifier.notifications WHERE id = ANY(%s) ORDER BY created_at",
        [ids],
    )
    return [row["status"] for row in await cursor.fetchall()]


def listed_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-id="([0-9a-f-]{36})">', html)


async def test_the_list_filters_by_every_field(
    browser: AsyncTestClient[Any],
    api_key: str,
    services: Services,
    db: psycopg.AsyncConnection[Any],
) -> None:
    webhook = await schedule(services, channel="webhook", recipient="https://hooks.example/a")
    other_type = await schedule(services, notification_type="trial.ends", entity_id="acct-9")
    dead = await schedule(services, recipient="night-shift")
    await set_status(db, [dead], NotificationStatus.DEAD)
    await sign_in(browser, api_key)

    async def ids(**query: str) -> set[str]:
        response = await browser.get("/ui/notifications", params=query)
        assert response.status_code == 200, response.text
        return set(listed_ids(response.text))

    assert await ids() == {str(webhook), str(other_type), str(dead)}
    assert await ids(status="dead") == {str(dead)}
    assert await ids(type="trial.ends") == {str(other_type)}
    assert await ids(entity_id="acct-9") == {str(other_type)}
    assert await ids(recipient="night-shift") == {str(dead)}
    assert await ids(channel="webhook") == {str(webhook)}
    an_hour_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M"
    )
    assert await ids(created_after=an_hour_ago) == {str(webhook), str(other_type), str(dead)}
    assert await ids(created_before=an_hour_ago) == set()
    assert await ids(status="dead", channel="webhook") == set()


async def test_a_bad_filter_is_named_next_to_its_field(
    browser: AsyncTestClient[Any], api_key: str
) -> None:
    await sign_in(browser, api_key)

    response = await browser.get(
        "/ui/notifications",
        params={"status": "lost", "created_after": "yesterday", "type": "x" * 201},
    )

    assert response.status_code == 422
    for field in ("status", "created_after", "type"):
        assert f'id="f-{field}-error"' in response.text, field
        assert f'aria-describedby="f-{field}-error"' in response.text
    assert 'value="yesterday"' in response.text  # what was typed stays


async def test_pages_are_cut_by_keyset_and_keep_the_filter(
    browser: AsyncTestClient[Any], api_key: str, services: Services
) -> None:
    made = [await schedule(services, entity_id=f"e-{n}") for n in range(52)]
    await schedule(services, notification_type="other")
    await sign_in(browser, api_key)

    first = await browser.get("/ui/notifications", params={"type": "invoice.due"})
    next_link = re.search(r'<a href="([^"]+)" id="next-page"', first.text)
    assert next_link
    second = await browser.get(next_link.group(1).replace("&amp;", "&"))

    seen = listed_ids(first.text) + listed_ids(second.text)
    assert len(listed_ids(first.text)) == 50
    assert seen == [str(i) for i in reversed(made)]  # newest first, no gap, no repeat
    assert 'id="next-page"' not in second.text
    assert 'id="first-page"' in second.text


async def test_bulk_replay_confirms_the_count_then_replays_that_many(
    browser: AsyncTestClient[Any],
    api_key: str,
    services: Services,
    db: psycopg.AsyncConnection[Any],
) -> None:
    dead = [await schedule(services, entity_id=f"d-{n}") for n in range(3)]
    failed = await schedule(services, entity_id="f-1")
    other_type_dead = await schedule(services, notification_type="trial.ends")
    pending = await schedule(services)
    await set_status(db, dead, NotificationStatus.DEAD)
    await set_status(db, [failed, other_type_dead], NotificationStatus.FAILED)
    await sign_in(browser, api_key)

    confirm = await browser.get("/ui/notifications/bulk/replay", params={"type": "invoice.due"})

    assert confirm.status_code == 200
    assert 'data-count="4"' in confirm.text
    assert "Replay 4 notifications" in confirm.text
    done = await browser.post(
        "/ui/notifications/bulk/replay",
        data={"type": "invoice.due", "_csrf_token": csrf_token(confirm.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/notifications?type=invoice.due&done=replayed&count=4"
    assert await statuses(db, [*dead, failed]) == ["pending"] * 4
    assert await statuses(db, [other_type_dead]) == ["failed"]
    assert await statuses(db, [pending]) == ["pending"]
    jobs = await (
        await db.execute(
            "SELECT count(*) AS n FROM procrastinate_jobs j JOIN notifier.notifications n "
            "ON n.job_id = j.id WHERE n.id = ANY(%s) AND j.status = 'todo'",
            [[*dead, failed]],
        )
    ).fetchone()
    assert jobs == {"n": 4}  # each has a new deliver job waiting
    listed = await browser.get(done.headers["location"])
    assert "Replayed 4 notifications" in listed.text


async def test_bulk_cancel_cancels_the_pending_ones_and_their_jobs(
    browser: AsyncTestClient[Any],
    api_key: str,
    services: Services,
    db: psycopg.AsyncConnection[Any],
) -> None:
    to_cancel = [await schedule(services, recipient="wrong-list") for _ in range(2)]
    kept = await schedule(services, recipient="right-list")
    dead = await schedule(services, recipient="wrong-list")
    await set_status(db, [dead], NotificationStatus.DEAD)
    await sign_in(browser, api_key)

    confirm = await browser.get("/ui/notifications/bulk/cancel", params={"recipient": "wrong-list"})
    assert 'data-count="2"' in confirm.text
    await browser.post(
        "/ui/notifications/bulk/cancel",
        data={"recipient": "wrong-list", "_csrf_token": csrf_token(confirm.text)},
    )

    assert await statuses(db, to_cancel) == ["cancelled", "cancelled"]
    assert await statuses(db, [kept, dead]) == ["pending", "dead"]
    cursor = await db.execute(
        "SELECT j.status FROM procrastinate_jobs j JOIN notifier.notifications n "
        "ON n.job_id = j.id WHERE n.id = ANY(%s)",
        [to_cancel],
    )
    assert [row["status"] for row in await cursor.fetchall()] == ["cancelled", "cancelled"]


async def test_a_confirmation_with_nothing_to_do_offers_no_button(
    browser: AsyncTestClient[Any], api_key: str, services: Services
) -> None:
    await schedule(services)
    await sign_in(browser, api_key)

    response = await browser.get("/ui/notifications/bulk/replay", params={"status": "pending"})

    assert 'data-count="0"' in response.text
    assert 'id="bulk-confirm"' not in response.text


async def test_a_read_only_key_sees_no_action_and_is_refused_if_it_forces_one(
    browser: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
    services: Services,
    db: psycopg.AsyncConnection[Any],
) -> None:
    dead = await schedule(services)
    pending = await schedule(services)
    await set_status(db, [dead], NotificationStatus.DEAD)
    key = await create_api_key("default", [Scope.NOTIFICATIONS_READ])
    await sign_in(browser, key)

    listed = await browser.get("/ui/notifications")
    detail = await browser.get(f"/ui/notifications/{pending}")

    assert listed.status_code == detail.status_code == 200
    assert 'id="bulk-actions"' not in listed.text
    assert "Create a notification" not in listed.text
    assert 'id="cancel"' not in detail.text
    token = csrf_token(detail.text)  # the sign-out form's: a valid token
    forced = {
        f"/ui/notifications/{pending}/cancel": {},
        f"/ui/notifications/{dead}/replay": {},
        "/ui/notifications/bulk/cancel": {},
        "/ui/notifications/bulk/replay": {},
        "/ui/notifications/new": {"notification_type": "x", "entity_id": "y"},
    }
    for path, fields in forced.items():
        response = await browser.post(path, data={**fields, "_csrf_token": token})
        assert response.status_code == 403, path
        assert "notifications:write" in response.text
    assert (await browser.get("/ui/notifications/bulk/cancel")).status_code == 403
    assert await statuses(db, [dead, pending]) == ["dead", "pending"]


async def test_another_tenants_notification_is_a_404(
    browser: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
    services: Services,
    db: psycopg.AsyncConnection[Any],
) -> None:
    await create_api_key("acme", [Scope.EVENTS_READ])  # makes the tenant
    theirs = await schedule(services, tenant="acme")
    key = await create_api_key("default", [Scope.NOTIFICATIONS_READ, Scope.NOTIFICATIONS_WRITE])
    await sign_in(browser, key)
    page = await browser.get("/ui/notifications")
    token = csrf_token(page.text)

    assert str(theirs) not in page.text
    assert (await browser.get(f"/ui/notifications/{theirs}")).status_code == 404
    for action in ("cancel", "replay"):
        response = await browser.post(
            f"/ui/notifications/{theirs}/{action}", data={"_csrf_token": token}
        )
        assert response.status_code == 404
    cancelled = await browser.post(
        "/ui/notifications/bulk/cancel", data={"_csrf_token": token}, follow_redirects=False
    )
    assert cancelled.headers["location"].endswith("count=0")
    assert await statuses(db, [theirs]) == ["pending"]
    assert (await browser.get(f"/ui/notifications/{uuid.uuid4()}")).status_code == 404


async def test_one_notification_shows_its_fields_message_and_actions(
    browser: AsyncTestClient[Any], api_key: str, services: Services
) -> None:
    notification = await schedule(services, data={"amount": "42 EUR"}, entity_id="inv-42")
    await sign_in(browser, api_key)

    page = await browser.get(f"/ui/notifications/{notification}")
    assert page.status_code == 200
    assert 'id="status">pending<' in page.text
    assert page.text.count('data-kind="created"') == 1
    assert page.text.count('data-kind="scheduled"') == 1
    assert 'id="message-subject"' in page.text  # rendered with the built-in template
    assert "inv-42" in page.text
    assert 'id="cancel"' in page.text
    assert 'id="replay"' not in page.text

    cancelled = await browser.post(
        f"/ui/notifications/{notification}/cancel",
        data={"_csrf_token": csrf_token(page.text)},
    )
    assert cancelled.status_code == 200
    assert 'id="status">cancelled<' in cancelled.text
    assert "Cancelled 1 notification;" in cancelled.text
    assert 'data-kind="final"' in cancelled.text


async def test_the_create_form_validates_like_the_api_and_schedules(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await sign_in(browser, api_key)
    form = await browser.get("/ui/notifications/new")
    token = csrf_token(form.text)

    bad = await browser.post(
        "/ui/notifications/new",
        data={
            "_csrf_token": token,
            "notification_type": "has space",
            "entity_id": "inv-7",
            "channel": "log",
            "target_date": "",
            "lead_time_days": "seven",
            "data": "[1]",
        },
    )
    assert bad.status_code == 422
    for field in ("notification_type", "target_date", "lead_time_days", "data"):
        assert f'id="f-{field}-error"' in bad.text, field
    assert 'value="inv-7"' in bad.text  # nothing typed is lost
    count = await (await db.execute("SELECT count(*) AS n FROM notifier.notifications")).fetchone()
    assert count == {"n": 0}

    good = await browser.post(
        "/ui/notifications/new",
        data={
            "_csrf_token": token,
            "notification_type": "invoice.due",
            "entity_id": "inv-7",
            "channel": "log",
            "recipient": "ops",
            "target_date": TOMORROW.strftime("%Y-%m-%dT%H:%M"),
            "lead_time_days": "1",
            "data": '{"amount": 7}',
        },
        follow_redirects=False,
    )
    assert good.status_code == 303
    created = uuid.UUID(good.headers["location"].rsplit("/", 1)[1])
    row = await (
        await db.execute(
            "SELECT tenant_id, entity_id, context FROM notifier.notifications WHERE id = %s",
            [created],
        )
    ).fetchone()
    assert row == {"tenant_id": "default", "entity_id": "inv-7", "context": {"amount": 7}}


async def test_events_list_and_one_event_with_its_tenant_only(
    browser: AsyncTestClient[Any], create_api_key: CreateApiKey
) -> None:
    ids = {}
    for tenant, order in (("default", "o-1"), ("acme", "o-2")):
        writer = await create_api_key(tenant, [Scope.EVENTS_WRITE])
        published = await browser.post(
            "/api/v1/events/",
            json={"type": "order.paid", "payload": {"order": order}},
            headers={"authorization": f"Bearer {writer}"},
        )
        assert published.status_code in {201, 202}, published.text
        ids[tenant] = published.json()["id"]
    key = await create_api_key("default", [Scope.EVENTS_READ])
    await sign_in(browser, key)

    listed = await browser.get("/ui/events", params={"type": "order.paid"})
    assert listed.status_code == 200
    assert listed_ids(listed.text) == [ids["default"]]
    detail = await browser.get(f"/ui/events/{ids['default']}")
    assert detail.status_code == 200
    assert "o-1" in detail.text
    assert (await browser.get(f"/ui/events/{ids['acme']}")).status_code == 404
    assert (await browser.get("/ui/notifications")).status_code == 403  # no such scope


async def test_the_api_replays_and_cancels_by_filter(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    create_api_key: CreateApiKey,
) -> None:
    await create_api_key("acme", [Scope.EVENTS_READ])  # makes the tenant
    dead = await schedule(services, entity_id="a")
    pending = await schedule(services, entity_id="a")
    theirs = await schedule(services, tenant="acme", entity_id="a")
    await set_status(db, [dead, theirs], NotificationStatus.DEAD)

    replayed = await client.post("/api/v1/notifications/replay", json={"entity_id": "a"})
    cancelled = await client.post(
        "/api/v1/notifications/cancel", json={"entity_id": "a", "status": "pending"}
    )
    refused = await client.post("/api/v1/notifications/cancel", json={"created_after": "soon"})

    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"count": 1, "limit": 1000}
    assert cancelled.json() == {"count": 2, "limit": 1000}  # the pending one, and the replayed
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "created_after"
    assert await statuses(db, [dead, pending]) == ["cancelled", "cancelled"]
    assert await statuses(db, [theirs]) == ["dead"]


CONTROL = re.compile(r"<(input|select|textarea)\b([^>]*)>")
ATTRIBUTE = re.compile(r'\b(type|id)="([^"]*)"')


def unlabelled(html: str) -> list[str]:
    """The form controls of a page that no ``<label for>`` names."""
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    return [
        f"<{tag}{attributes}>"
        for tag, attributes in CONTROL.findall(html)
        if (found := dict(ATTRIBUTE.findall(attributes))).get("type") != "hidden"
        and found.get("id") not in labelled
    ]


async def test_every_control_of_every_page_has_a_label(
    browser: AsyncTestClient[Any], api_key: str, services: Services
) -> None:
    notification = await schedule(services)
    await sign_in(browser, api_key)
    form = await browser.get("/ui/endpoints/new")
    created = await browser.post(
        "/ui/endpoints/new",
        data={"url": "https://hooks.example.com/in", "_csrf_token": csrf_token(form.text)},
    )
    assert created.status_code == 201, created.text
    endpoint = re.search(r"<h1>Endpoint <span class=\"sub\"><code>([^<]+)</code>", created.text)
    assert endpoint is not None
    assert unlabelled(created.text) == []  # the new endpoint's page, its secret shown
    pages = [
        "/ui",
        "/ui/endpoints",
        "/ui/endpoints/new",
        f"/ui/endpoints/{endpoint.group(1)}",
        "/ui/notifications",
        f"/ui/notifications/{notification}",
        "/ui/notifications/bulk/cancel",
        "/ui/notifications/new",
        "/ui/events",
        "/ui/rules",
        "/ui/rules/new",
        "/ui/templates",
        "/ui/templates/generic",
        "/ui/keys",
    ]
    for path in pages:
        answer = await browser.get(path)
        assert answer.status_code == 200, path
        assert unlabelled(answer.text) == [], path
