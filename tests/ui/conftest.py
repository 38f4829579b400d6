"""The browser the dashboard's browser tests drive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from tests.ui.browser import chromium


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile of this test's own."""
    with chromium(tmp_path / "profile") as driver:
        yield driver
