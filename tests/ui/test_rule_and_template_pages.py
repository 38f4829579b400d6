"""The dashboard's rule and template pages over HTTP against the real app and database:
create, edit and enable/disable rules with the API's checks, and edit a template with a
preview against a sample payload, in the renderer's sandbox."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.settings import Settings
from notifier.tenancy import Scope
from tests.conftest import CreateApiKey
from tests.ui.support import csrf_token, sign_in


@pytest.fixture
async def browser(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with no API key in its headers: a browser's view."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


RULE = {
    "name": "Invoices",
    "event_type": "invoice.created",
    "channel": "log",
    "recipient_field": "customer.email",
    "recipient": "",
    "date_field": "due_date",
    "lead_times": "P7D, P1D",
    "template": "",
    "timezone": "",
    "timezone_field": "",
    "enabled": "on",
}


async def rules(db: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    cursor = await db.execute(
        "SELECT tenant_id, name, event_type, lead_times, enabled, date_field "
        "FROM notifier.routing_rules ORDER BY created_at"
    )
    return await cursor.fetchall()


async def test_a_rule_is_created_edited_and_disabled_with_the_apis_checks(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await sign_in(browser, api_key)
    form = await browser.get("/ui/rules/new")
    token = csrf_token(form.text)

    bad = await browser.post(
        "/ui/rules/new",
        data={**RULE, "event_type": "has space", "lead_times": "P7D, soon", "_csrf_token": token},
    )
    assert bad.status_code == 422
    assert 'id="f-event_type-error"' in bad.text
    assert 'id="f-lead_times-error"' in bad.text
    assert 'value="customer.email"' in bad.text  # nothing typed is lost
    assert await rules(db) == []

    made = await browser.post(
        "/ui/rules/new", data={**RULE, "_csrf_token": token}, follow_redirects=False
    )
    assert made.status_code == 303, made.text
    (rule,) = await rules(db)
    assert (rule["name"], rule["enabled"], len(rule["lead_times"])) == ("Invoices", True, 2)
    listed = await browser.get("/ui/rules")
    rule_id = re.search(r'<tr data-id="([0-9a-f-]{36})">', listed.text)
    assert rule_id
    assert "P7D, P1D" in listed.text

    edit = await browser.get(f"/ui/rules/{rule_id.group(1)}")
    assert 'value="P7D, P1D"' in edit.text
    changed = await browser.post(
        f"/ui/rules/{rule_id.group(1)}",
        data={**RULE, "lead_times": "PT12H", "date_field": "", "_csrf_token": token},
        follow_redirects=False,
    )
    assert changed.status_code == 303, changed.text
    await browser.post(f"/ui/rules/{rule_id.group(1)}/enabled", data={"_csrf_token": token})
    (rule,) = await rules(db)
    assert rule["date_field"] is None  # a blank optional field clears it
    assert [t.total_seconds() for t in rule["lead_times"]] == [12 * 3600]
    assert rule["enabled"] is False


async def test_rules_need_their_scopes_and_stay_in_their_tenant(
    browser: AsyncTestClient[Any],
    api_key: str,
    create_api_key: CreateApiKey,
    db: psycopg.AsyncConnection[Any],
) -> None:
    await sign_in(browser, api_key)
    token = csrf_token((await browser.get("/ui/rules/new")).text)
    await browser.post("/ui/rules/new", data={**RULE, "_csrf_token": token})
    listed = await browser.get("/ui/rules")
    match = re.search(r'<tr data-id="([0-9a-f-]{36})">', listed.text)
    assert match
    rule_id = match.group(1)

    reader = await create_api_key("default", [Scope.RULES_READ])
    await sign_in(browser, reader)
    page = await browser.get(f"/ui/rules/{rule_id}")
    assert page.status_code == 200
    assert 'id="save"' not in page.text
    assert "Disable" not in (await browser.get("/ui/rules")).text
    token = csrf_token(page.text)
    forced = await browser.post(f"/ui/rules/{rule_id}/enabled", data={"_csrf_token": token})
    assert forced.status_code == 403

    stranger = await create_api_key("acme", [Scope.RULES_READ, Scope.RULES_WRITE])
    await sign_in(browser, stranger)
    assert (await browser.get(f"/ui/rules/{rule_id}")).status_code == 404
    token = csrf_token((await browser.get("/ui/rules")).text)
    refused = await browser.post(f"/ui/rules/{rule_id}/enabled", data={"_csrf_token": token})
    assert refused.status_code == 404
    (rule,) = await rules(db)
    assert rule["enabled"] is True


async def test_a_template_is_previewed_against_a_sample_payload_then_saved(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await sign_in(browser, api_key)
    listed = await browser.get("/ui/templates")
    assert listed.status_code == 200
    assert 'data-name="generic"' in listed.text
    page = await browser.get("/ui/templates/generic")
    token = csrf_token(page.text)
    source = {
        "subject": "Hello {{ name }}",
        "text_body": "You owe {{ amount }} for {{ notification.entity_id or 'nothing' }}.",
        "html_body": "",
        "description": "greeting",
    }

    preview = await browser.post(
        "/ui/templates/generic/preview",
        data={**source, "payload": '{"name": "Ada", "amount": "42 EUR"}', "_csrf_token": token},
    )
    assert preview.status_code == 200, preview.text
    assert '<dd id="preview-subject">Hello Ada</dd>' in preview.text
    assert "You owe 42 EUR for nothing." in preview.text

    broken = await browser.post(
        "/ui/templates/generic/preview",
        data={**source, "text_body": "{% if %}", "payload": "{}", "_csrf_token": token},
    )
    assert broken.status_code == 422
    assert 'id="f-text_body-error"' in broken.text
    bad_payload = await browser.post(
        "/ui/templates/generic/preview",
        data={**source, "payload": "[1]", "_csrf_token": token},
    )
    assert 'id="f-payload-error"' in bad_payload.text
    stored = await (await db.execute("SELECT count(*) AS n FROM notifier.templates")).fetchone()
    assert stored == {"n": 0}  # previews store nothing

    saved = await browser.post(
        "/ui/templates/generic",
        data={**source, "payload": "{}", "_csrf_token": token},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    row = await (
        await db.execute("SELECT tenant_id, name, subject FROM notifier.templates")
    ).fetchone()
    assert row == {"tenant_id": "default", "name": "generic", "subject": "Hello {{ name }}"}


async def test_a_template_reader_may_preview_but_not_save(
    browser: AsyncTestClient[Any], create_api_key: CreateApiKey
) -> None:
    reader = await create_api_key("default", [Scope.TEMPLATES_READ])
    await sign_in(browser, reader)
    page = await browser.get("/ui/templates/generic")
    assert 'id="save"' not in page.text
    token = csrf_token(page.text)
    data = {"subject": "s", "text_body": "t", "payload": "{}", "_csrf_token": token}

    assert (await browser.post("/ui/templates/generic/preview", data=data)).status_code == 200
    assert (await browser.post("/ui/templates/generic", data=data)).status_code == 403
    assert (await browser.get("/ui/templates/no-such-one")).status_code == 404
