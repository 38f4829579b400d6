"""Debian's headless Chromium, driven by Selenium through Debian's chromedriver.

Each browser gets a fresh profile directory of its own, so tests run side by side under
pytest-xdist. Nothing is downloaded: Selenium is given both binaries, so its manager never
looks for a driver, and the flags keep Chromium off the network except for the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("NOTIFIER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NOTIFIER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium_missing() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} is missing (apt-get install chromium chromium-driver; .ci/run does)"
    return None


@contextlib.contextmanager
def chromium(profile: Path, *, width: int = 1366, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with its own profile in ``profile``, at a laptop's window size."""
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def next_page(driver: webdriver.Chrome, act: Callable[[], None]) -> None:
    """Do ``act`` (press a button, Enter in a field) and wait until the page it leads to has
    replaced this one: read before that, the old page answers, or its elements go stale
    under the reader as the new one arrives."""
    old = driver.find_element(By.TAG_NAME, "html")
    act()
    WebDriverWait(driver, 15).until(lambda d: old.id != d.find_element(By.TAG_NAME, "html").id)


def sign_in(driver: webdriver.Chrome, base: str, key: str, page: str = "/ui") -> None:
    """Open ``page``, which sends the browser to sign in, and type the key into the
    (autofocused) field with the keyboard; return on the page that answers."""
    driver.get(f"{base}{page}")
    assert driver.current_url.startswith(f"{base}/ui/sign-in")
    field = driver.find_element(By.ID, "key")
    assert driver.switch_to.active_element == field  # autofocus
    next_page(driver, lambda: field.send_keys(key, Keys.ENTER))


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def press(driver: webdriver.Chrome, css: str) -> None:
    """Press the button ``css`` finds and wait for the next page (:func:`next_page`)."""
    next_page(driver, driver.find_element(By.CSS_SELECTOR, css).click)


def submit_forged_form(driver: webdriver.Chrome, action: str) -> None:
    """POST an empty form to ``action`` with the page's own CSRF token: what a key lacking
    a scope could forge from a page it may see (the guard, not the token, must refuse)."""
    driver.execute_script(
        """
        const form = document.createElement('form');
        form.method = 'post';
        form.action = arguments[0];
        const token = document.createElement('input');
        token.type = 'hidden'; token.name = '_csrf_token';
        token.value = document.querySelector('input[name=_csrf_token]').value;
        form.appendChild(token);
        document.body.appendChild(form);
        form.submit();
        """,
        action,
    )


def forced_then_seen(
    driver: webdriver.Chrome, base: str, *, action: str, page: str, css: str, other_page: str
) -> dict[str, str]:
    """Forge a POST to ``action`` from the page shown (:func:`submit_forged_form`) and wait
    for the refusal; then what ``css`` of ``page`` reads, and the title of
    ``other_page`` (another tenant's). Keys: forced (the refusal's text), after, other."""
    submit_forged_form(driver, action)
    WebDriverWait(driver, 10).until(lambda d: d.title.startswith("Not allowed"))
    seen = {"forced": driver.find_element(By.CSS_SELECTOR, "main").text}
    driver.get(f"{base}{page}")
    seen["after"] = driver.find_element(By.CSS_SELECTOR, css).text
    driver.get(f"{base}{other_page}")
    seen["other"] = driver.title
    return seen
