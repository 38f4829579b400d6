"""The webhook endpoint pages in a real headless Chromium against the app served on
loopback, with a real worker and a webhook receiver on loopback: create an endpoint and
see its secret once, test it, rotate the secret, disable and enable it, see a delivery in
its attempts; a read-only key sees no control, and another tenant's endpoint is a 404."""

from __future__ import annotations

import asyncio
import datetime

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from notifier.tenancy import Scope
from tests.conftest import CreateApiKey
from tests.support import WebhookReceiver, eventually
from tests.ui.browser import forced_then_seen, press, sign_in, text_of

pytestmark = pytest.mark.browser


def value_of(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).get_attribute("value") or ""


async def test_an_operator_creates_tests_rotates_disables_and_enables_an_endpoint(
    browser: webdriver.Chrome,
    live_api: str,
    api_key: str,
    api_headers: dict[str, str],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    def create_test_and_rotate() -> dict[str, str]:
        seen: dict[str, str] = {}
        sign_in(browser, live_api, api_key, "/ui/endpoints")
        seen["empty"] = text_of(browser, "#none")
        browser.find_element(By.ID, "new-endpoint").click()
        browser.find_element(By.ID, "f-url").send_keys(receiver.url)
        browser.find_element(By.ID, "f-description").send_keys("billing receiver")
        browser.find_element(By.ID, "f-headers").send_keys("{not json")
        press(browser, "#save")
        seen["bad headers"] = text_of(browser, "#f-headers-error")
        seen["url kept"] = value_of(browser, "f-url")
        browser.find_element(By.ID, "f-headers").clear()
        browser.find_element(By.ID, "f-headers").send_keys('{"X-Team": "billing"}')
        press(browser, "#save")
        seen["secret"] = value_of(browser, "new-secret-value")
        seen["id"] = text_of(browser, "h1 code")
        press(browser, "#send-test")
        seen["test"] = text_of(browser, "#test-result")
        seen["secret after test"] = str(len(browser.find_elements(By.ID, "new-secret")))
        press(browser, "#rotate")
        seen["rotated"] = value_of(browser, "new-secret-value")
        seen["rotation note"] = text_of(browser, "#new-secret")
        browser.find_element(By.ID, "f-reason").send_keys("receiver moving")
        press(browser, "#disable")
        seen["disabled"] = text_of(browser, "#state")
        seen["reason"] = text_of(browser, "#disabled-reason")
        browser.get(f"{live_api}/ui/endpoints")
        seen["listed"] = text_of(browser, "#endpoints tbody tr")
        return seen

    seen = await asyncio.to_thread(create_test_and_rotate)

    assert seen["empty"] == "No endpoint yet."
    assert seen["bad headers"].startswith("not JSON")
    assert seen["url kept"] == receiver.url
    assert seen["secret"].startswith("whsec_")
    assert seen["test"].startswith("Test message delivered: HTTP 200")
    (test_request,) = receiver.received()
    assert test_request.headers["x-team"] == "billing"
    assert "webhook-signature" in test_request.headers
    assert seen["secret after test"] == "0"  # shown once, on the answer that made it
    assert seen["rotated"].startswith("whsec_")
    assert seen["rotated"] != seen["secret"]
    assert "previous secret keeps signing" in seen["rotation note"]
    assert seen["disabled"] == "disabled"
    assert seen["reason"] == "receiver moving"
    assert "billing receiver" in seen["listed"]
    assert "disabled: receiver moving" in seen["listed"]

    # A notification to the disabled endpoint waits; enabling sends it, and it shows
    # among the endpoint's attempts.
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers) as api:
        made = await api.post(
            "/api/v1/notifications/",
            json={
                "notification_type": "invoice.due",
                "entity_id": "inv-1",
                "endpoint": seen["id"],
                "target_date": datetime.datetime.now(datetime.UTC).isoformat(),
                "lead_time_days": 0,
            },
        )
        assert made.status_code == 201, made.text

    def enable() -> str:
        browser.get(f"{live_api}/ui/endpoints/{seen['id']}")
        press(browser, "#enable")
        return text_of(browser, "#state")

    assert await asyncio.to_thread(enable) == "enabled"

    async def delivered() -> bool:
        return len(receiver.received()) == 2

    await eventually(delivered, timeout=30)

    def attempts() -> list[str]:
        def listed(driver: webdriver.Chrome) -> bool:
            driver.get(f"{live_api}/ui/endpoints/{seen['id']}")
            return bool(driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr"))

        WebDriverWait(browser, 20, poll_frequency=0.3).until(listed)
        return [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")]

    (attempt,) = await asyncio.to_thread(attempts)
    assert made.json()["id"] in attempt
    assert "delivered" in attempt
    assert "200" in attempt


async def test_a_read_only_key_sees_no_control_and_another_tenants_endpoint_is_404(
    browser: webdriver.Chrome, live_api: str, create_api_key: CreateApiKey
) -> None:
    writer = await create_api_key("default", [Scope.ENDPOINTS_WRITE])
    other = await create_api_key("acme", [Scope.ENDPOINTS_WRITE])
    reader = await create_api_key("default", [Scope.ENDPOINTS_READ])
    ids = {}
    async with httpx.AsyncClient(base_url=live_api) as api:
        for tenant, key in (("default", writer), ("acme", other)):
            response = await api.post(
                "/api/v1/endpoints/",
                json={"url": "http://127.0.0.1:9/hooks"},
                headers={"authorization": f"Bearer {key}"},
            )
            assert response.status_code == 201, response.text
            ids[tenant] = response.json()["id"]

    def look_and_force() -> dict[str, str]:
        sign_in(browser, live_api, reader, f"/ui/endpoints/{ids['default']}")
        seen = {
            "state": text_of(browser, "#state"),
            "controls": str(
                len(browser.find_elements(By.CSS_SELECTOR, "#disable, #send-test, #rotate, #save"))
            ),
            "fieldset": str(
                browser.find_element(By.CSS_SELECTOR, "fieldset").get_attribute("disabled")
            ),
        }
        # Forge the disable form with the page's own CSRF token: the guard must refuse.
        forced = forced_then_seen(
            browser,
            live_api,
            action=f"/ui/endpoints/{ids['default']}/enabled",
            page=f"/ui/endpoints/{ids['default']}",
            css="#state",
            other_page=f"/ui/endpoints/{ids['acme']}",
        )
        seen["forced"] = forced["forced"]
        seen["state after"] = forced["after"]
        seen["other tenant"] = forced["other"]
        return seen

    seen = await asyncio.to_thread(look_and_force)

    assert seen["state"] == "enabled"
    assert seen["controls"] == "0"
    assert seen["fieldset"] == "true"
    assert "endpoints:write" in seen["forced"]
    assert seen["state after"] == "enabled"
    assert seen["other tenant"].startswith("Not found")
