"""The API docs at /schema: served whole by the app from a pinned package, so they work
without internet access; an unknown docs path is a problem+json 404 like any other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from openapi_ui_bundles import swagger_ui

from tests.support import PROBLEM_JSON

LOADED = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_the_docs_page_loads_every_file_from_the_app_itself(
    client: AsyncTestClient[Any], path: str
) -> None:
    page = await client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "SwaggerUIBundle(" in html

    loaded = LOADED.findall(html)
    assert len(loaded) == 4, loaded  # script, preset, stylesheet, icon
    for url in loaded:
        assert url.startswith("/schema/assets/"), f"{url} is not served by the app"
        asset = await client.get(url)
        assert asset.status_code == 200, url
        shipped = Path(swagger_ui.static_path) / url.removeprefix("/schema/assets/")
        assert asset.content == shipped.read_bytes(), f"{url} is the installed package's file"
    # The only URLs on the page are examples inside the embedded OpenAPI document.
    spec = (await client.get("/schema/openapi.json")).text
    for url in URL.findall(html):
        assert url in spec, f"the page refers to {url}"


@pytest.mark.parametrize(
    "path", ["/schema/redoc", "/schema/elements", "/schema/assets/missing.js", "/schema/a/b"]
)
async def test_an_unknown_docs_path_is_a_problem_404(
    client: AsyncTestClient[Any], path: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["instance"] == path
