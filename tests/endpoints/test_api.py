"""The endpoints API: create, read, change, delete; secrets; bad input; tenant isolation."""

from __future__ import annotations

import base64
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.bootstrap import open_services
from notifier.secret_box import SecretBox
from notifier.settings import Settings, SettingsError
from tests.conftest import CreateApiKey
from tests.endpoints.routes import ENDPOINT_ROUTES
from tests.endpoints.support import create_endpoint
from tests.support import SECRETS_KEYS, WEBHOOK_SECRET, assert_problem, bearer

URL = "https://hooks.example.com/notifier"


async def test_create_read_update_list_delete(client: AsyncTestClient[Any]) -> None:
    created = await create_endpoint(
        client,
        URL,
        description="billing",
        type_filter=["invoice.*", "user.signup"],
        headers={"X-Team": "billing"},
        rate_limit={"per_second": 5, "burst": 10},
    )
    endpoint_id = created["id"]
    shown = (await client.get(f"/api/v1/endpoints/{endpoint_id}")).json()
    assert "secret" not in shown
    assert shown | {"secret": created["secret"]} == created
    assert shown["type_filter"] == ["invoice.*", "user.signup"]
    assert shown["rate_limit"] == {"per_second": 5.0, "burst": 10}
    assert shown["enabled"] is True

    changed = await client.patch(
        f"/api/v1/endpoints/{endpoint_id}",
        json={"enabled": False, "disabled_reason": "maintenance", "type_filter": None},
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["enabled"], body["disabled_reason"], body["type_filter"]) == (
        False,
        "maintenance",
        None,
    )
    assert body["disabled_at"] is not None
    enabled = (
        await client.patch(f"/api/v1/endpoints/{endpoint_id}", json={"enabled": True})
    ).json()
    assert (enabled["enabled"], enabled["disabled_reason"], enabled["disabled_at"]) == (
        True,
        None,
        None,
    )

    listed = (await client.get("/api/v1/endpoints/")).json()
    assert [e["id"] for e in listed] == [endpoint_id]
    assert (await client.delete(f"/api/v1/endpoints/{endpoint_id}")).status_code == 204
    assert (await client.get(f"/api/v1/endpoints/{endpoint_id}")).status_code == 404
    assert (await client.get("/api/v1/endpoints/")).json() == []


async def test_the_secret_is_shown_again_only_by_its_own_route_and_stored_encrypted(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    created = await create_endpoint(client, URL)
    secret = created["secret"]
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    shown = (await client.get(f"/api/v1/endpoints/{created['id']}/secret")).json()
    assert shown == {"secret": secret, "previous_secret_expires_at": None}
    assert secret not in (await client.get(f"/api/v1/endpoints/{created['id']}")).text
    assert secret not in (await client.get("/api/v1/endpoints/")).text

    row = await (
        await db.execute("SELECT secret FROM notifier.endpoints WHERE id = %s", [created["id"]])
    ).fetchone()
    assert row is not None
    assert secret not in row["secret"]
    assert Fernet(SECRETS_KEYS.encode()).decrypt(row["secret"].encode()).decode() == secret


async def test_rotation_answers_the_new_secret_and_the_overlap(
    client: AsyncTestClient[Any],
) -> None:
    created = await create_endpoint(client, URL)
    rotated = await client.post(
        f"/api/v1/endpoints/{created['id']}/secret/rotate", json={"overlap": "PT2H"}
    )
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["secret"] != created["secret"]
    assert body["previous_secret_expires_at"] is not None
    shown = (await client.get(f"/api/v1/endpoints/{created['id']}")).json()
    assert shown["previous_secret_expires_at"] == body["previous_secret_expires_at"]
    # An empty object: the default overlap of a day.
    again = await client.post(f"/api/v1/endpoints/{created['id']}/secret/rotate", json={})
    assert again.status_code == 200, again.text
    assert_problem(
        await client.post(f"/api/v1/endpoints/{created['id']}/secret/rotate"), 400, "body"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "hooks.example.com/x"}, "url"),
        ({"url": "http://10.0.0.1/x"}, "url"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "url"),
        ({"url": URL, "type_filter": ["invoice.*.paid"]}, "type_filter[0]"),
        ({"url": URL, "type_filter": ["in*"]}, "type_filter[0]"),
        ({"url": URL, "type_filter": []}, "type_filter"),
        ({"url": URL, "headers": {"webhook-signature": "v1,x"}}, "headers.webhook-signature"),
        ({"url": URL, "headers": {"Content-Type": "text/plain"}}, "headers.Content-Type"),
        ({"url": URL, "headers": {"X-A": "a\r\nX-B: b"}}, "headers[...]"),
        ({"url": URL, "headers": {f"X-{n}": "v" for n in range(21)}}, "headers"),
        ({"url": URL, "rate_limit": {"per_second": 0}}, "rate_limit.per_second"),
        ({"url": URL, "disabled_reason": "why"}, "disabled_reason"),
        ({"url": URL, "secret": "whsec_mine"}, "secret"),
    ],
    ids=[
        "ftp",
        "no-scheme",
        "private-network",
        "credentials",
        "star-inside",
        "star-without-dot",
        "empty-filter",
        "protocol-header",
        "content-type-header",
        "header-injection",
        "too-many-headers",
        "zero-rate",
        "reason-while-enabled",
        "unknown-field",
    ],
)
async def test_bad_input_is_a_problem_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/endpoints/", json=body)
    assert_problem(response, 422 if field != "secret" else response.status_code, field)
    assert response.status_code in {400, 422}
    assert (await client.get("/api/v1/endpoints/")).json() == []


@pytest.mark.parametrize(
    ("overlap", "status"),
    [("P8D", 422), ("PT-1H", 422), ("soon", 422), ("P7D", 200), ("PT0S", 200)],
    ids=["eight-days", "negative", "not-a-duration", "a-week", "none"],
)
async def test_an_overlap_beyond_a_week_is_refused(
    client: AsyncTestClient[Any], overlap: str, status: int
) -> None:
    created = await create_endpoint(client, URL)
    response = await client.post(
        f"/api/v1/endpoints/{created['id']}/secret/rotate", json={"overlap": overlap}
    )
    if status == 422:
        assert_problem(response, 422, "overlap")
        shown = (await client.get(f"/api/v1/endpoints/{created['id']}/secret")).json()
        assert shown["secret"] == created["secret"]
    else:
        assert response.status_code == 200, response.text


async def test_a_patch_is_checked_as_a_whole_endpoint(client: AsyncTestClient[Any]) -> None:
    created = await create_endpoint(client, URL)
    response = await client.patch(f"/api/v1/endpoints/{created['id']}", json={"url": "file:///x"})
    assert_problem(response, 422, "url")
    assert (await client.get(f"/api/v1/endpoints/{created['id']}")).json()["url"] == URL


ROUTES = ENDPOINT_ROUTES


@pytest.mark.parametrize(
    ("method", "suffix", "body"), ROUTES, ids=[f"{m} {s or '/'}" for m, s, _ in ROUTES]
)
async def test_another_tenants_endpoint_is_404_on_every_route(
    client: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    theirs = await create_endpoint(client, URL)
    other = bearer(await create_api_key("acme"))
    response = await client.request(
        method, f"/api/v1/endpoints/{theirs['id']}{suffix}", json=body, headers=other
    )
    assert_problem(response, 404)
    assert (await client.get("/api/v1/endpoints/", headers=other)).json() == []
    # Untouched for its own tenant.
    mine = await client.get(f"/api/v1/endpoints/{theirs['id']}/secret")
    assert mine.json()["secret"] == theirs["secret"]
    assert (await client.get(f"/api/v1/endpoints/{theirs['id']}")).json()["description"] == ""


async def test_notifications_and_rules_cannot_name_another_tenants_endpoint(
    client: AsyncTestClient[Any], create_api_key: CreateApiKey
) -> None:
    theirs = await create_endpoint(client, URL)
    other = bearer(await create_api_key("acme"))
    notification = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "invoice.due",
            "entity_id": "x",
            "target_date": "2030-01-01T00:00:00Z",
            "endpoint": theirs["id"],
        },
        headers=other,
    )
    assert_problem(notification, 422, "endpoint")
    rule = await client.post(
        "/api/v1/rules/",
        json={"event_type": "invoice.due", "channel": "webhook", "endpoint": theirs["id"]},
        headers=other,
    )
    assert_problem(rule, 422, "endpoint")


async def test_a_rule_names_an_endpoint_or_a_recipient_not_both(
    client: AsyncTestClient[Any],
) -> None:
    endpoint = await create_endpoint(client, URL)
    both = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "invoice.due",
            "channel": "webhook",
            "endpoint": endpoint["id"],
            "recipient": URL,
        },
    )
    assert_problem(both, 422, "endpoint")
    email = await client.post(
        "/api/v1/rules/",
        json={"event_type": "invoice.due", "channel": "log", "endpoint": endpoint["id"]},
    )
    assert_problem(email, 422, "channel")
    made = await client.post(
        "/api/v1/rules/",
        json={"event_type": "invoice.*", "channel": "webhook", "endpoint": endpoint["id"]},
    )
    assert made.status_code == 201, made.text
    assert made.json()["endpoint"] == endpoint["id"]


async def test_each_tenant_has_its_own_bare_url_secret_and_the_default_keeps_the_old_one(
    client: AsyncTestClient[Any], create_api_key: CreateApiKey
) -> None:
    default = (await client.get("/api/v1/webhook-secret/")).json()["secret"]
    # Migration path: the default tenant takes over NOTIFIER_WEBHOOK_SECRET.
    assert default == WEBHOOK_SECRET
    acme = (
        await client.get("/api/v1/webhook-secret/", headers=bearer(await create_api_key("acme")))
    ).json()["secret"]
    other = (
        await client.get("/api/v1/webhook-secret/", headers=bearer(await create_api_key("other")))
    ).json()["secret"]
    assert len({default, acme, other}) == 3
    # Made once: the same on every read.
    again = await client.get(
        "/api/v1/webhook-secret/", headers=bearer(await create_api_key("acme"))
    )
    assert again.json()["secret"] == acme


def test_no_process_starts_without_a_key_to_its_secrets(settings: Settings) -> None:
    with pytest.raises(SettingsError, match="NOTIFIER_SECRETS_KEYS"):
        SecretBox.from_settings(settings.replace(secrets_keys=None))
    with pytest.raises(SettingsError, match="entry 2 is not a Fernet key"):
        SecretBox.from_settings(settings.replace(secrets_keys=f"{SECRETS_KEYS},not-a-key"))


async def test_open_services_refuses_to_start_without_a_key(settings: Settings) -> None:
    with pytest.raises(SettingsError, match="NOTIFIER_SECRETS_KEYS"):
        async with open_services(settings.replace(secrets_keys=None)):
            pytest.fail("started without a key")


def test_a_new_key_first_still_reads_secrets_of_the_old_one() -> None:
    old = SecretBox.from_settings(Settings(secrets_keys=SECRETS_KEYS))
    token = old.encrypt("whsec_abc")
    new_key = Fernet.generate_key().decode()
    both = SecretBox.from_settings(Settings(secrets_keys=f"{new_key},{SECRETS_KEYS}"))
    assert both.decrypt(token) == "whsec_abc"
    moved = both.reencrypt(token)
    only_new = SecretBox.from_settings(Settings(secrets_keys=new_key))
    assert only_new.decrypt(moved) == "whsec_abc"


async def test_a_secret_no_configured_key_reads_is_a_503_never_a_500(
    client: AsyncTestClient[Any], settings: Settings, api_headers: dict[str, str]
) -> None:
    created = await create_endpoint(client, URL)
    other_key = settings.replace(secrets_keys=Fernet.generate_key().decode())
    async with AsyncTestClient(app=create_app(other_key)) as wrong_key:
        wrong_key.headers.update(api_headers)
        response = await wrong_key.get(f"/api/v1/endpoints/{created['id']}/secret")
        assert_problem(response, 503)
        assert created["secret"] not in response.text
        # What needs no secret still works.
        assert (await wrong_key.get(f"/api/v1/endpoints/{created['id']}")).status_code == 200
