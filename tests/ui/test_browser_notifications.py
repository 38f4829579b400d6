"""The notification pages in a real headless Chromium against the app served on loopback,
with a real worker and a webhook receiver on loopback: what an operator does with them.

Kept to the key flows; test_notification_pages.py checks the rest over HTTP.
"""

from __future__ import annotations

import asyncio
import datetime

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from notifier.settings import Settings
from notifier.tenancy import Scope
from tests.conftest import CreateApiKey
from tests.support import WebhookReceiver, eventually
from tests.ui.browser import forced_then_seen, sign_in, text_of

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """One attempt per round: a 500 makes a notification dead at once."""
    return settings.replace(delivery_max_attempts=1)


def webhook(receiver: WebhookReceiver, entity_id: str) -> dict[str, object]:
    return {
        "notification_type": "invoice.due",
        "entity_id": entity_id,
        "channel": "webhook",
        "recipient": receiver.url,
        "target_date": (
            datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        ).isoformat(),
        "lead_time_days": 1,
    }


async def test_find_the_dead_replay_them_after_confirming_the_count_and_read_the_timeline(
    browser: webdriver.Chrome,
    live_api: str,
    api_key: str,
    api_headers: dict[str, str],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    receiver.script(500, 500)  # the first two deliveries fail: dead after one attempt
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers) as api:
        dead = [
            (await api.post("/api/v1/notifications/", json=webhook(receiver, f"inv-{n}"))).json()
            for n in range(2)
        ]

        async def all_dead() -> bool:
            listed = await api.get("/api/v1/notifications/", params={"status": "dead"})
            return len(listed.json()) == 2

        await eventually(all_dead, timeout=30)
        # One waiting for tomorrow: the filter must leave it out.
        later = webhook(receiver, "inv-later")
        later["lead_time_days"] = 0
        assert (await api.post("/api/v1/notifications/", json=later)).status_code == 201

    def replay_the_dead() -> tuple[str, str]:
        sign_in(browser, live_api, api_key, "/ui/notifications")
        Select(browser.find_element(By.ID, "f-status")).select_by_value("dead")
        browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        WebDriverWait(browser, 10).until(lambda d: "status=dead" in d.current_url)
        rows = browser.find_elements(By.CSS_SELECTOR, "#notifications tbody tr")
        assert sorted(r.get_attribute("data-id") or "" for r in rows) == sorted(
            n["id"] for n in dead
        )
        browser.find_element(By.ID, "bulk-replay").click()
        count = text_of(browser, "#bulk-count")
        browser.find_element(By.ID, "bulk-confirm").click()
        WebDriverWait(browser, 10).until(lambda d: "done=replayed" in d.current_url)
        return count, text_of(browser, "#notice")

    count, notice = await asyncio.to_thread(replay_the_dead)

    assert count.startswith("2 failed or dead notifications of tenant default")
    assert notice.startswith("Replayed 2 notifications")

    async def delivered_again() -> bool:
        return len(receiver.received()) == 4

    await eventually(delivered_again, timeout=30)

    def read_timeline() -> list[dict[str, str]]:
        def sent(driver: webdriver.Chrome) -> bool:
            driver.get(f"{live_api}/ui/notifications/{dead[0]['id']}")
            return text_of(driver, "#status") == "sent"

        WebDriverWait(browser, 20, poll_frequency=0.3).until(sent)
        entries = []
        for item in browser.find_elements(By.CSS_SELECTOR, "#timeline li"):
            fields = {
                span.get_attribute("data-field") or "": span.text
                for span in item.find_elements(By.CSS_SELECTOR, "[data-field]")
            }
            entries.append({"kind": item.get_attribute("data-kind") or "", **fields})
        return entries

    timeline = await asyncio.to_thread(read_timeline)

    kinds = [entry["kind"] for entry in timeline]
    # A replay makes the notification due again: "scheduled" is the current round's.
    assert kinds == ["created", "attempt", "scheduled", "attempt", "final"]
    attempts = [entry for entry in timeline if entry["kind"] == "attempt"]
    assert [a["status-code"] for a in attempts] == ["HTTP 500", "HTTP 200"]
    assert [a["outcome"] for a in attempts] == ["failed", "delivered"]
    assert all(a["duration"].endswith(("ms", "s")) for a in attempts)
    assert "500" in attempts[0]["error"]
    assert kinds[-1] == "final"


async def test_a_read_only_key_sees_no_cancel_is_refused_if_it_forces_one_and_another_tenants_is_404(
    browser: webdriver.Chrome, live_api: str, create_api_key: CreateApiKey
) -> None:
    writer = await create_api_key("default", [Scope.NOTIFICATIONS_WRITE])
    other = await create_api_key("acme", [Scope.NOTIFICATIONS_WRITE])
    reader = await create_api_key("default", [Scope.NOTIFICATIONS_READ])
    ids = {}
    async with httpx.AsyncClient(base_url=live_api) as api:
        for tenant, key in (("default", writer), ("acme", other)):
            body = {
                "notification_type": "invoice.due",
                "entity_id": "inv-1",
                "channel": "log",
                "recipient": "ops",
                "target_date": (
                    datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
                ).isoformat(),
            }
            response = await api.post(
                "/api/v1/notifications/", json=body, headers={"authorization": f"Bearer {key}"}
            )
            assert response.status_code == 201, response.text
            ids[tenant] = response.json()["id"]

    def look_and_force() -> dict[str, str]:
        sign_in(browser, live_api, reader, f"/ui/notifications/{ids['default']}")
        seen = {
            "status": text_of(browser, "#status"),
            "cancel buttons": str(len(browser.find_elements(By.ID, "cancel"))),
        }
        # Forge the cancel form with the page's own CSRF token: the guard must refuse.
        forced = forced_then_seen(
            browser,
            live_api,
            action=f"/ui/notifications/{ids['default']}/cancel",
            page=f"/ui/notifications/{ids['default']}",
            css="#status",
            other_page=f"/ui/notifications/{ids['acme']}",
        )
        seen["forced"] = forced["forced"]
        seen["status after"] = forced["after"]
        seen["other tenant"] = forced["other"]
        return seen

    seen = await asyncio.to_thread(look_and_force)

    assert seen["status"] == "pending"
    assert seen["cancel buttons"] == "0"
    assert "notifications:write" in seen["forced"]
    assert seen["status after"] == "pending"
    assert seen["other tenant"].startswith("Not found")


async def test_cancel_a_pending_one_from_its_page(
    browser: webdriver.Chrome,
    live_api: str,
    api_key: str,
    api_headers: dict[str, str],
    receiver: WebhookReceiver,
) -> None:
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers) as api:
        # Due tomorrow, its deliver job waiting.
        body = webhook(receiver, "inv-cancel")
        body["lead_time_days"] = 0
        pending = (await api.post("/api/v1/notifications/", json=body)).json()
        assert pending["status"] == "pending"

    def cancel_it() -> dict[str, str]:
        sign_in(browser, live_api, api_key, "/ui/notifications?status=pending")
        browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{pending["id"]}"] a').click()
        WebDriverWait(browser, 10).until(lambda d: pending["id"] in d.current_url)
        before = text_of(browser, "#status")
        browser.find_element(By.ID, "cancel").click()
        WebDriverWait(browser, 10).until(lambda d: "done=cancelled" in d.current_url)
        return {
            "before": before,
            "after": text_of(browser, "#status"),
            "notice": text_of(browser, "#notice"),
            "buttons": str(len(browser.find_elements(By.CSS_SELECTOR, "#cancel, #replay"))),
            "final": browser.find_elements(By.CSS_SELECTOR, "#timeline li")[-1].text,
        }

    seen = await asyncio.to_thread(cancel_it)

    assert seen["before"] == "pending"
    assert seen["after"] == "cancelled"
    assert seen["notice"].startswith("Cancelled 1 notification;")
    assert seen["buttons"] == "0"
    assert "Cancelled" in seen["final"]
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers) as api:
        stored = (await api.get(f"/api/v1/notifications/{pending['id']}")).json()
    assert stored["status"] == "cancelled"
    assert stored["delivery_attempts"] == []
