"""Managing templates over REST, and previewing them without sending."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.support import assert_problem

EXPIRY = {
    "name": "expiry-notice",
    "description": "password expiry, friendly tone",
    "subject": "{{ name }}, your password expires {{ expires_at | date }}",
    "text_body": "Hi {{ name }},\nit expires on {{ expires_at | date }}.\n",
    "html_body": "<p>Hi {{ name }},</p>\n<p>it expires on {{ expires_at | date }}.</p>\n",
}


async def create(client: AsyncTestClient[Any], **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/templates/", json=EXPIRY | overrides)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_and_read_back(client: AsyncTestClient[Any]) -> None:
    created = await create(client)

    assert created["builtin"] is False
    assert created["created_at"]
    fetched = await client.get("/api/v1/templates/expiry-notice")
    assert fetched.status_code == 200
    assert fetched.json() == created
    assert {key: created[key] for key in EXPIRY} == EXPIRY


async def test_a_second_create_with_the_same_name_is_a_conflict(
    client: AsyncTestClient[Any],
) -> None:
    await create(client)

    assert_problem(await client.post("/api/v1/templates/", json=EXPIRY), 409)


@pytest.mark.parametrize(
    ("part", "body", "line"),
    [
        ("subject", "Hi {{ name", 1),
        ("text_body", "line one\nline two\n{% endfor %}", 3),
        ("html_body", "<p>\n{{ name | nosuchfilter }}</p>", 2),
    ],
)
async def test_a_template_that_does_not_compile_is_422_naming_part_and_line(
    client: AsyncTestClient[Any], part: str, body: str, line: int
) -> None:
    response = await client.post("/api/v1/templates/", json=EXPIRY | {part: body})

    assert_problem(response, 422, part)
    assert f"line {line}" in response.json()["errors"][0]["message"]
    assert (await client.get("/api/v1/templates/expiry-notice")).status_code == 404


@pytest.mark.parametrize("name", ["", "has space", "../etc", "-leading", "x" * 101])
async def test_names_are_checked(client: AsyncTestClient[Any], name: str) -> None:
    assert_problem(await client.post("/api/v1/templates/", json=EXPIRY | {"name": name}), 422)


async def test_list_holds_the_tenants_templates_and_the_builtins(
    client: AsyncTestClient[Any],
) -> None:
    await create(client)
    await create(client, name="password.expiring", description="ours")

    listed = {t["name"]: t for t in (await client.get("/api/v1/templates/")).json()}

    assert listed["expiry-notice"]["builtin"] is False
    assert listed["user.signup"]["builtin"] is True
    assert listed["generic"]["builtin"] is True
    # The tenant's template overrides the built-in of the same name.
    assert listed["password.expiring"]["builtin"] is False
    assert listed["password.expiring"]["description"] == "ours"


async def test_builtins_can_be_read(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/api/v1/templates/payment.failed")

    assert response.status_code == 200
    assert response.json()["builtin"] is True
    assert "{{" in response.json()["text_body"]


async def test_put_creates_then_replaces(client: AsyncTestClient[Any]) -> None:
    body = {key: EXPIRY[key] for key in ("subject", "text_body")}
    first = await client.put("/api/v1/templates/short", json=body)
    second = await client.put("/api/v1/templates/short", json=body | {"subject": "changed"})

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["subject"] == "changed"
    assert second.json()["html_body"] is None
    assert second.json()["created_at"] == first.json()["created_at"]
    assert second.json()["updated_at"] >= first.json()["updated_at"]
    assert_problem(
        await client.put("/api/v1/templates/short", json=body | {"text_body": "{% for %}"}),
        422,
        "text_body",
    )


async def test_delete(client: AsyncTestClient[Any]) -> None:
    await create(client)

    assert (await client.delete("/api/v1/templates/expiry-notice")).status_code == 204
    assert_problem(await client.delete("/api/v1/templates/expiry-notice"), 404)
    assert_problem(await client.delete("/api/v1/templates/user.signup"), 404)  # a built-in


async def test_a_template_rules_use_cannot_be_deleted(client: AsyncTestClient[Any]) -> None:
    await create(client)
    rule = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "password.expiring",
            "channel": "log",
            "recipient_field": "email",
            "template": "expiry-notice",
        },
    )
    assert rule.status_code == 201, rule.text

    response = await client.delete("/api/v1/templates/expiry-notice")

    assert_problem(response, 409)
    assert rule.json()["id"] in response.json()["detail"]


async def test_preview_renders_a_stored_template_with_the_given_context(
    client: AsyncTestClient[Any],
) -> None:
    await create(client)

    response = await client.post(
        "/api/v1/templates/expiry-notice/preview",
        json={"payload": {"name": "Ada <3", "expires_at": "2026-12-24T09:00:00Z"}},
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "template": "expiry-notice",
        "subject": "Ada <3, your password expires 24 December 2026",
        "text": "Hi Ada <3,\nit expires on 24 December 2026.\n",
        "html": "<p>Hi Ada &lt;3,</p>\n<p>it expires on 24 December 2026.</p>\n",
    }


async def test_preview_of_a_builtin_uses_the_notification_fields(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/api/v1/templates/password.expiring/preview",
        json={"payload": {"name": "Ada"}, "target_date": "2027-03-01T00:00:00Z"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["subject"] == "Your password expires on 1 March 2027"


async def test_preview_with_a_missing_variable_is_422_naming_the_part(
    client: AsyncTestClient[Any],
) -> None:
    await create(client)

    response = await client.post(
        "/api/v1/templates/expiry-notice/preview", json={"payload": {"name": "Ada"}}
    )

    assert_problem(response, 422, "subject")
    assert "'expires_at' is undefined" in response.json()["detail"]


async def test_preview_of_an_unknown_template_is_404(client: AsyncTestClient[Any]) -> None:
    assert_problem(await client.post("/api/v1/templates/nope/preview", json={}), 404)


async def test_inline_preview_renders_without_storing(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/templates/preview",
        json={
            "subject": "Order {{ order_id }}",
            "text_body": "Total {{ total }}",
            "payload": {"order_id": "A-17", "total": "12.50 EUR"},
        },
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "template": "preview",
        "subject": "Order A-17",
        "text": "Total 12.50 EUR",
        "html": None,
    }
    assert_problem(
        await client.post(
            "/api/v1/templates/preview", json={"subject": "{{ x.__class__ }}", "text_body": ""}
        ),
        422,
        "subject",
    )


async def test_another_tenants_templates_are_invisible(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    await db.execute("INSERT INTO notifier.tenants (id) VALUES ('acme')")
    await db.execute(
        """
        INSERT INTO notifier.templates (tenant_id, name, subject, text_body)
        VALUES ('acme', 'acme-only', 'secret subject', 'secret text')
        """
    )

    assert_problem(await client.get("/api/v1/templates/acme-only"), 404)
    names = {t["name"] for t in (await client.get("/api/v1/templates/")).json()}
    assert "acme-only" not in names
    # The same name is free for this tenant.
    await create(client, name="acme-only")


@pytest.mark.parametrize("name", ["'", "has space", "-leading", "x" * 101])
async def test_names_in_the_path_are_checked(client: AsyncTestClient[Any], name: str) -> None:
    body = {k: v for k, v in EXPIRY.items() if k != "name"}
    response = await client.put(f"/api/v1/templates/{quote(name)}", json=body)

    assert_problem(response, 422, "name")
    assert response.json()["errors"][0]["source"] == "path"
