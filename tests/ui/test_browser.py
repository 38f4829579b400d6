"""The dashboard in a real headless Chromium against the app served on loopback.

Each test has a browser and profile of its own (safe under pytest-xdist). What the HTTP
tests (test_sessions.py) check field by field, these check as a person would use it.
"""

from __future__ import annotations

import asyncio
import datetime

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from notifier.auth import service as auth_service
from notifier.settings import Settings
from notifier.tenancy import Scope
from notifier.ui.sessions import SESSION_COOKIE
from tests.conftest import CreateApiKey
from tests.support import WebhookReceiver, eventually
from tests.ui.browser import press, sign_in, text_of

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Keys re-read on every request, so that a revocation shows at once."""
    return settings.replace(api_key_cache_seconds=0.0)


def test_a_bad_key_shows_the_error_next_to_the_field(
    browser: webdriver.Chrome, live_api: str
) -> None:
    sign_in(browser, live_api, "ntf_0123456789abcdef_" + "x" * 43)

    field = browser.find_element(By.ID, "key")
    error = browser.find_element(By.ID, "key-error")
    assert error.text == "the API key is not valid"
    assert field.get_attribute("aria-invalid") == "true"
    assert field.get_attribute("aria-describedby") == "key-error"
    assert browser.get_cookie(SESSION_COOKIE) is None


async def test_sign_in_shows_the_overview_with_real_numbers(
    browser: webdriver.Chrome,
    live_api: str,
    api_key: str,
    api_headers: dict[str, str],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    # Two delivered at once; one answered 500 first, then delivered on its retry.
    receiver.script(500)
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers) as api:
        for n in range(3):
            response = await api.post(
                "/api/v1/notifications/",
                json={
                    "notification_type": "ui.test",
                    "entity_id": f"e-{n}",
                    "channel": "webhook",
                    "recipient": receiver.url,
                    "target_date": (
                        datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
                    ).isoformat(),
                    "lead_time_days": 1,
                },
            )
            assert response.status_code == 201, response.text
        # One more, due in a day: waiting, not due.
        pending = await api.post(
            "/api/v1/notifications/",
            json={
                "notification_type": "ui.later",
                "entity_id": "e-later",
                "channel": "webhook",
                "recipient": receiver.url,
                "target_date": (
                    datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
                ).isoformat(),
                "lead_time_days": 1,
            },
        )
        assert pending.status_code == 201

        async def all_sent() -> bool:
            listed = await api.get("/api/v1/notifications/", params={"status": "sent"})
            return len(listed.json()) == 3

        await eventually(all_sent, timeout=20)

    def look() -> dict[str, str]:
        sign_in(browser, live_api, api_key)
        assert browser.current_url == f"{live_api}/ui"
        assert browser.title == "Overview · notifier"
        return {
            field: text_of(browser, f"#totals-hour [data-field={field}]")
            for field in ("delivered", "retry", "failed", "sent")
        } | {
            "charts": str(len(browser.find_elements(By.CSS_SELECTOR, "svg.chart[role=img]"))),
            "bars": str(len(browser.find_elements(By.CSS_SELECTOR, "#main svg rect.delivered"))),
            "p50": text_of(browser, "#totals-hour [data-field=p50]"),
            "due": text_of(browser, "[data-queue=deliveries][data-field=due]"),
        }

    seen = await asyncio.to_thread(look)

    assert seen["delivered"] == "3"
    assert seen["retry"] == "1"
    assert seen["failed"] == "0"
    assert seen["sent"] == "3"
    assert seen["charts"] == "4"
    assert int(seen["bars"]) >= 2  # the hour's and the day's bars of delivered attempts
    assert seen["p50"] != "\u2013"  # a lag is shown
    assert seen["due"] == "0"


def test_a_form_without_its_csrf_token_is_refused(
    browser: webdriver.Chrome, live_api: str, api_key: str
) -> None:
    sign_in(browser, live_api, api_key)
    # What a forged form would lack: the token. Remove it and submit.
    browser.execute_script(
        "document.querySelector('form.sign-out input[name=_csrf_token]').remove()"
    )
    browser.find_element(By.CSS_SELECTOR, "form.sign-out button").click()

    WebDriverWait(browser, 10).until(lambda d: d.title.startswith("Not allowed"))
    assert "security token" in text_of(browser, "main")
    browser.get(f"{live_api}/ui")
    assert browser.title == "Overview · notifier"  # still signed in


def test_sign_out_ends_the_session(browser: webdriver.Chrome, live_api: str, api_key: str) -> None:
    sign_in(browser, live_api, api_key)
    cookie = browser.get_cookie(SESSION_COOKIE)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"

    browser.find_element(By.CSS_SELECTOR, "form.sign-out button").click()

    WebDriverWait(browser, 10).until(lambda d: "why=signed-out" in d.current_url)
    assert browser.current_url == f"{live_api}/ui/sign-in?why=signed-out"
    assert "You are signed out." in text_of(browser, "main")
    replayed = httpx.get(
        f"{live_api}/ui", cookies={SESSION_COOKIE: cookie["value"]}, follow_redirects=False
    )
    assert replayed.status_code == 303


async def test_a_revoked_keys_session_ends(
    browser: webdriver.Chrome, live_api: str, settings: Settings, create_api_key: CreateApiKey
) -> None:
    key = await create_api_key("default", [Scope.NOTIFICATIONS_READ])
    await asyncio.to_thread(sign_in, browser, live_api, key)
    assert browser.title == "Overview · notifier"
    async with auth_service.admin_pool(settings) as pool:
        await auth_service.revoke_key(pool, key.split("_")[1])

    await asyncio.to_thread(browser.get, f"{live_api}/ui")

    assert browser.current_url.startswith(f"{live_api}/ui/sign-in?why=revoked")
    assert "no longer valid" in text_of(browser, "main")
    assert browser.get_cookie(SESSION_COOKIE) is None


def focus_order(driver: webdriver.Chrome, presses: int) -> list[WebElement]:
    """The elements focused by pressing Tab ``presses`` times from the top of the page."""
    body = driver.find_element(By.TAG_NAME, "body")
    body.click()
    order = []
    for _ in range(presses):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        order.append(driver.switch_to.active_element)
    return order


def test_the_keyboard_reaches_every_control_in_order(
    browser: webdriver.Chrome, live_api: str, api_key: str
) -> None:
    sign_in(browser, live_api, api_key)
    controls = browser.find_elements(
        By.CSS_SELECTOR, "a[href], button, input:not([type=hidden]), select, textarea"
    )
    assert len(controls) >= 6  # skip link, brand, overview, tenant, switch, sign out

    reached = focus_order(browser, len(controls))

    assert [c.id for c in reached] == [c.id for c in controls]
    assert reached[0].get_attribute("textContent") == "Skip to content"
    for control in controls:
        if control.tag_name in {"input", "select", "textarea"}:
            label = browser.find_elements(
                By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']"
            )
            assert label, f"{control.get_attribute('outerHTML')} has no label"
    # The skip link takes the keyboard past the navigation.
    reached[0].send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"


async def test_an_operator_admin_switches_tenant_and_others_cannot_force_it(
    browser: webdriver.Chrome, live_api: str, api_key: str, create_api_key: CreateApiKey
) -> None:
    narrow = await create_api_key("acme", [Scope.NOTIFICATIONS_READ])

    def switch_as_admin() -> str:
        sign_in(browser, live_api, api_key)
        select = browser.find_element(By.ID, "tenant")
        select.send_keys("acme")
        press(browser, "form.tenant-switch button")
        return text_of(browser, "h1")

    heading = await asyncio.to_thread(switch_as_admin)
    assert heading.startswith("Overview tenant acme,")

    def force_as_non_admin() -> tuple[str, str]:
        press(browser, "form.sign-out button")
        sign_in(browser, live_api, narrow)
        assert not browser.find_elements(By.ID, "tenant")  # no switch offered
        # Forge the switch with the page's own CSRF token: the guard must still refuse.
        browser.execute_script(
            """
            const form = document.createElement('form');
            form.method = 'post';
            form.action = '/ui/tenant';
            for (const [name, value] of [
                ['_csrf_token', document.querySelector('input[name=_csrf_token]').value],
                ['tenant', 'default'],
            ]) {
                const input = document.createElement('input');
                input.name = name; input.value = value; input.type = 'hidden';
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
            """
        )
        WebDriverWait(browser, 10).until(lambda d: d.title.startswith("Not allowed"))
        return browser.title, text_of(browser, "main")

    title, main = await asyncio.to_thread(force_as_non_admin)
    assert title.startswith("Not allowed")
    assert "may switch tenant" in main
    browser.get(f"{live_api}/ui")
    assert text_of(browser, "h1").startswith("Overview tenant acme,")
