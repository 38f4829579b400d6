"""Helpers for the dashboard's tests: reading a form's CSRF token, signing in over HTTP."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import AsyncTestClient

CSRF_FIELD = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = CSRF_FIELD.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


async def sign_in(client: AsyncTestClient[Any], key: str, next_page: str = "/ui") -> Any:
    """Sign in through the form as a browser would; the answer to the POST."""
    form = await client.get("/ui/sign-in")
    assert form.status_code == 200
    return await client.post(
        "/ui/sign-in",
        data={"key": key, "next": next_page, "_csrf_token": csrf_token(form.text)},
        follow_redirects=False,
    )
