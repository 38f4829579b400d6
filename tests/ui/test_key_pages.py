"""The dashboard's API keys page over HTTP against the real app and database: admin only,
a new key's token shown once and working, revocation within the tenant only."""

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

TOKEN = re.compile(r'id="new-key-token" type="text" readonly size="70" value="([^"]+)"')


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Keys re-read on every request, so that a revocation shows at once."""
    return settings.replace(api_key_cache_seconds=0.0)


@pytest.fixture
async def browser(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with no API key in its headers: a browser's view."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def test_an_admin_creates_a_key_sees_it_once_and_revokes_it(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await sign_in(browser, api_key)
    page = await browser.get("/ui/keys")
    assert page.status_code == 200
    token = csrf_token(page.text)

    refused = await browser.post(
        "/ui/keys", data={"name": "ci", "expires": "soon", "_csrf_token": token}
    )
    assert refused.status_code == 422
    assert 'id="f-scopes-error"' in refused.text
    assert 'id="f-expires-error"' in refused.text

    made = await browser.post(
        "/ui/keys",
        data={
            "name": "ci",
            "scopes": ["events:write", "rules:read"],
            "expires": "30d",
            "_csrf_token": token,
        },
    )
    assert made.status_code == 201
    match = TOKEN.search(made.text)
    assert match
    new_key = match.group(1)
    key_id = new_key.split("_")[1]
    works = await browser.get("/api/v1/rules/", headers={"authorization": f"Bearer {new_key}"})
    assert works.status_code == 200
    again = await browser.get("/ui/keys")
    assert new_key not in again.text  # shown once
    assert f'<tr data-id="{key_id}">' in again.text
    row = await (
        await db.execute("SELECT name, scopes FROM notifier.api_keys WHERE id = %s", [key_id])
    ).fetchone()
    assert row == {"name": "ci", "scopes": ["events:write", "rules:read"]}

    revoked = await browser.post(f"/ui/keys/{key_id}/revoke", data={"_csrf_token": token})
    assert revoked.status_code == 200
    assert 'id="notice"' in revoked.text
    gone = await browser.get("/api/v1/rules/", headers={"authorization": f"Bearer {new_key}"})
    assert gone.status_code == 401


async def test_keys_are_for_admins_and_their_tenant_only(
    browser: AsyncTestClient[Any],
    api_key: str,
    create_api_key: CreateApiKey,
    db: psycopg.AsyncConnection[Any],
) -> None:
    their_admin = await create_api_key("acme", [Scope.ADMIN])
    reader = await create_api_key("default", [Scope.NOTIFICATIONS_READ])
    await sign_in(browser, reader)
    assert "/ui/keys" not in (await browser.get("/ui")).text  # not in the navigation
    assert (await browser.get("/ui/keys")).status_code == 403

    await sign_in(browser, their_admin)
    page = await browser.get("/ui/keys")
    assert page.status_code == 200
    own_id = api_key.split("_")[1]
    assert own_id not in page.text  # the default tenant's key is not listed
    response = await browser.post(
        f"/ui/keys/{own_id}/revoke", data={"_csrf_token": csrf_token(page.text)}
    )
    assert response.status_code == 404
    row = await (
        await db.execute("SELECT revoked_at FROM notifier.api_keys WHERE id = %s", [own_id])
    ).fetchone()
    assert row == {"revoked_at": None}
