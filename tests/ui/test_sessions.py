"""The dashboard's sign-in, sessions, CSRF, scopes and tenant switch, over HTTP against the
real app and database (the browser tests drive the same through Chromium)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.auth import service as auth_service
from notifier.settings import Settings
from notifier.tenancy import Scope
from notifier.ui.pages import safe_next
from notifier.ui.sessions import SESSION_COOKIE
from tests.conftest import CreateApiKey
from tests.ui.support import csrf_token, sign_in

EXTERNAL_URL = re.compile(r"""(?:https?:)?//[^"'\s<>]""", re.IGNORECASE)


@pytest.fixture
async def browser(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with no API key in its headers: a browser's view."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def replay(client: AsyncTestClient[Any], session_id: str) -> Any:
    """GET the overview with only this session cookie."""
    client.cookies.clear()
    return await client.get(
        "/ui", headers={"cookie": f"{SESSION_COOKIE}={session_id}"}, follow_redirects=False
    )


async def test_pages_need_a_session_and_send_the_browser_to_sign_in(
    browser: AsyncTestClient[Any],
) -> None:
    response = await browser.get("/ui", follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/sign-in?next=%2Fui"


async def test_sign_in_sets_a_strict_http_only_session_cookie_holding_no_key(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    response = await sign_in(browser, api_key, "/ui")

    assert response.status_code == 303
    assert response.headers["location"] == "/ui"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
    )
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
    assert "secure" not in attributes  # plain http here
    session_id = browser.cookies[SESSION_COOKIE]
    rows = await (await db.execute("SELECT id_sha256, data FROM notifier.ui_sessions")).fetchall()
    assert [bytes(row["id_sha256"]) for row in rows] == [
        hashlib.sha256(session_id.encode()).digest()
    ]
    stored = bytes(rows[0]["data"]).decode()
    secret = api_key.rsplit("_", 1)[1]
    assert secret not in stored
    assert api_key.split("_")[1] in stored  # the key id
    overview = await browser.get("/ui")
    assert overview.status_code == 200
    assert "Overview" in overview.text


async def test_a_visitor_who_does_not_sign_in_leaves_no_session(
    browser: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    for _ in range(3):
        assert (await browser.get("/ui/sign-in")).status_code == 200

    assert SESSION_COOKIE not in browser.cookies
    count = await (await db.execute("SELECT count(*) AS n FROM notifier.ui_sessions")).fetchone()
    assert count == {"n": 0}


async def test_signing_in_gives_a_new_session_id(
    browser: AsyncTestClient[Any], api_key: str
) -> None:
    await sign_in(browser, api_key)
    first = browser.cookies[SESSION_COOKIE]

    await sign_in(browser, api_key)

    assert browser.cookies[SESSION_COOKIE] != first
    assert (await replay(browser, first)).status_code == 303


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "enter an API key"),
        ("not-a-key", "the API key is malformed"),
        ("ntf_0123456789abcdef_" + "A" * 43, "the API key is not valid"),
    ],
    ids=["empty", "malformed", "unknown"],
)
async def test_a_bad_key_is_refused_with_the_reason_next_to_the_field(
    browser: AsyncTestClient[Any], key: str, message: str
) -> None:
    response = await sign_in(browser, key)

    assert response.status_code == 401
    assert f'<p class="error" id="key-error">{message}</p>' in response.text
    assert 'aria-describedby="key-error"' in response.text
    assert SESSION_COOKIE not in browser.cookies


async def test_a_post_without_the_csrf_token_is_refused(
    browser: AsyncTestClient[Any], api_key: str
) -> None:
    await sign_in(browser, api_key)

    response = await browser.post("/ui/sign-out", data={}, follow_redirects=False)

    assert response.status_code == 403
    assert "security token" in response.text
    assert "text/html" in response.headers["content-type"]
    assert (await browser.get("/ui", follow_redirects=False)).status_code == 200


async def test_sign_in_itself_needs_the_csrf_token(
    browser: AsyncTestClient[Any], api_key: str
) -> None:
    await browser.get("/ui/sign-in")

    response = await browser.post("/ui/sign-in", data={"key": api_key}, follow_redirects=False)

    assert response.status_code == 403
    assert SESSION_COOKIE not in browser.cookies


async def test_sign_out_ends_the_session_on_the_server(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await sign_in(browser, api_key)
    session_id = browser.cookies[SESSION_COOKIE]
    page = await browser.get("/ui")

    response = await browser.post(
        "/ui/sign-out", data={"_csrf_token": csrf_token(page.text)}, follow_redirects=False
    )

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/sign-in?why=signed-out"
    count = await (await db.execute("SELECT count(*) AS n FROM notifier.ui_sessions")).fetchone()
    assert count == {"n": 0}
    # The old cookie, replayed, opens nothing.
    assert (await replay(browser, session_id)).status_code == 303


async def test_a_revoked_key_ends_its_session(
    settings: Settings, create_api_key: CreateApiKey
) -> None:
    key = await create_api_key("default", [Scope.NOTIFICATIONS_READ])
    async with AsyncTestClient(app=create_app(settings.replace(api_key_cache_seconds=0))) as client:
        await sign_in(client, key)
        assert (await client.get("/ui")).status_code == 200
        async with auth_service.admin_pool(settings) as pool:
            await auth_service.revoke_key(pool, key.split("_")[1])

        response = await client.get("/ui", follow_redirects=False)

        assert response.status_code == 303
        assert response.headers["location"] == "/ui/sign-in?why=revoked&next=%2Fui"
        assert SESSION_COOKIE not in client.cookies


async def test_a_session_ends_after_its_absolute_lifetime(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await sign_in(browser, api_key)
    # Signed in 13 hours ago (NOTIFIER_UI_SESSION_MAX_HOURS is 12).
    await db.execute(
        """
        UPDATE notifier.ui_sessions
        SET data = convert_to(jsonb_set(convert_from(data, 'UTF8')::jsonb, '{signed_in_at}',
                   to_jsonb(extract(epoch FROM now() - interval '13 hours')::float8))::text, 'UTF8')
        """
    )

    response = await browser.get("/ui", follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/sign-in?why=expired")


async def test_an_idle_session_expires_in_the_store(
    browser: AsyncTestClient[Any], api_key: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await sign_in(browser, api_key)
    expires = await (
        await db.execute("SELECT expires_at - now() AS left FROM notifier.ui_sessions")
    ).fetchone()
    assert expires is not None
    assert 29 * 60 < expires["left"].total_seconds() <= 30 * 60
    await db.execute("UPDATE notifier.ui_sessions SET expires_at = now() - interval '1 second'")

    assert (await browser.get("/ui", follow_redirects=False)).status_code == 303


async def test_cookies_are_secure_over_https(settings: Settings, api_key: str) -> None:
    async with AsyncTestClient(app=create_app(settings), base_url="https://dashboard.test") as c:
        response = await sign_in(c, api_key)

        cookies = response.headers.get_list("set-cookie")
        assert cookies
        assert all("; Secure" in cookie for cookie in cookies)


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
async def test_forwarded_proto_counts_only_when_configured(
    settings: Settings, trusted: bool
) -> None:
    app = create_app(settings.replace(ui_trust_forwarded_proto=trusted))
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/ui/sign-in", headers={"x-forwarded-proto": "https"})

        # The CSRF cookie: every dashboard cookie passes the same middleware.
        cookies = response.headers.get_list("set-cookie")
        assert len(cookies) == 1
        assert ("; Secure" in cookies[0]) is trusted


async def test_a_key_without_the_scope_gets_a_403_page(
    browser: AsyncTestClient[Any], create_api_key: CreateApiKey
) -> None:
    key = await create_api_key("default", [Scope.EVENTS_WRITE])
    await sign_in(browser, key)

    response = await browser.get("/ui")

    assert response.status_code == 403
    assert "text/html" in response.headers["content-type"]
    assert "lacks the scope &#39;notifications:read&#39;" in response.text


async def test_unknown_dashboard_paths_are_404_pages_and_the_api_keeps_problem_json(
    browser: AsyncTestClient[Any], api_key: str
) -> None:
    await sign_in(browser, api_key)

    page = await browser.get("/ui/no-such-page")
    api = await browser.get("/api/v1/no-such-thing")

    assert page.status_code == 404
    assert "text/html" in page.headers["content-type"]
    assert "There is no such page." in page.text
    assert api.status_code == 404
    assert api.headers["content-type"].startswith("application/problem+json")


async def test_the_rest_api_needs_no_csrf_token(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "log", "recipient_field": "email"},
    )

    assert response.status_code == 201


async def test_pages_reference_nothing_outside_the_app(
    browser: AsyncTestClient[Any], api_key: str
) -> None:
    sign_in_page = await browser.get("/ui/sign-in")
    await sign_in(browser, api_key)
    overview = await browser.get("/ui")
    css = await browser.get("/ui/static/ui.css")

    for response in (sign_in_page, overview, css):
        assert response.status_code == 200
        assert not EXTERNAL_URL.findall(response.text), response.url
    assert "default-src 'none'" in overview.headers["content-security-policy"]
    assert overview.headers["cache-control"] == "no-store"


async def _switch(client: AsyncTestClient[Any], tenant: str) -> Any:
    page = await client.get("/ui/sign-in")
    return await client.post(
        "/ui/tenant",
        data={"tenant": tenant, "next": "/ui", "_csrf_token": csrf_token(page.text)},
        follow_redirects=False,
    )


async def test_an_operator_admin_switches_tenant(
    browser: AsyncTestClient[Any], api_key: str, create_api_key: CreateApiKey
) -> None:
    await create_api_key("acme", [Scope.EVENTS_READ])  # makes the tenant
    await sign_in(browser, api_key)
    before = await browser.get("/ui")
    assert '<option value="acme">acme</option>' in before.text

    response = await _switch(browser, "acme")

    assert response.status_code == 303
    after = await browser.get("/ui")
    assert "tenant acme," in after.text
    assert '<option value="acme" selected>acme</option>' in after.text


async def test_switching_to_an_unknown_tenant_is_a_404(
    browser: AsyncTestClient[Any], api_key: str
) -> None:
    await sign_in(browser, api_key)

    response = await _switch(browser, "nobody")

    assert response.status_code == 404
    assert "tenant default," in (await browser.get("/ui")).text


@pytest.mark.parametrize(
    ("tenant", "scopes"),
    [("default", [Scope.NOTIFICATIONS_READ]), ("acme", [Scope.ADMIN])],
    ids=["non-admin", "admin-of-another-tenant"],
)
async def test_only_an_operator_admin_may_switch_tenant(
    browser: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
    tenant: str,
    scopes: list[str],
) -> None:
    await create_api_key("other", [Scope.EVENTS_READ])
    key = await create_api_key(tenant, scopes)
    await sign_in(browser, key)
    page = await browser.get("/ui")
    assert 'id="tenant"' not in page.text  # no switch offered

    response = await _switch(browser, "other")

    assert response.status_code == 403
    assert f"tenant {tenant}," in (await browser.get("/ui")).text


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/x?y=1", "/ui/x?y=1"),
        ("/ui", "/ui"),
        ("https://evil.test/ui", "/ui"),
        ("//evil.test/ui", "/ui"),
        ("/ui//evil.test", "/ui"),
        ("/uix", "/ui"),
        ("/ui/\\evil", "/ui"),
        (None, "/ui"),
    ],
    ids=[
        "page",
        "root",
        "absolute",
        "scheme-relative",
        "double-slash",
        "prefix",
        "backslash",
        "none",
    ],
)
def test_redirects_after_a_form_stay_in_the_dashboard(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected
