"""Signed unsubscribe links: the token, the headers for emails, and the public endpoint."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.notifications.delivery import outgoing_message, unsubscribe_link
from notifier.preferences.links import (
    InvalidToken,
    list_unsubscribe_headers,
    sign_token,
    unsubscribe_url,
    verify_token,
)
from notifier.settings import Settings
from notifier.templates.messages import RenderedMessage
from tests.notifications.rows import delivery_row
from tests.support import assert_problem

SECRET = "unsubscribe-secret-for-tests-only-0123456789"
BASE_URL = "https://notifier.example.com/"
SCOPE = {
    "tenant_id": "default",
    "recipient": "ada@example.com",
    "channel": "log",
    "notification_type": "invoice.due",
}


def test_a_token_names_what_it_opts_out_of() -> None:
    scope = verify_token(SECRET, sign_token(SECRET, **SCOPE))
    assert (scope.tenant_id, scope.recipient, scope.channel, scope.notification_type) == (
        "default",
        "ada@example.com",
        "log",
        "invoice.due",
    )


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: _flip(t, 3), id="payload-changed"),
        pytest.param(lambda t: _flip(t, len(t) - 3), id="signature-changed"),
        pytest.param(lambda t: t.partition(".")[0], id="signature-missing"),
        pytest.param(lambda t: sign_token("another-secret", **SCOPE), id="other-secret"),
        pytest.param(lambda t: "not a token.at all!", id="garbage"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
def test_a_tampered_token_is_refused(tamper: Any) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, tamper(sign_token(SECRET, **SCOPE)))


def test_links_and_headers_exist_only_when_configured() -> None:
    configured = Settings(unsubscribe_secret=SECRET, public_base_url=BASE_URL)
    url = unsubscribe_url(configured, **SCOPE)

    assert url is not None
    assert url.startswith("https://notifier.example.com/unsubscribe/")
    assert verify_token(SECRET, url.rsplit("/", 1)[1]).recipient == "ada@example.com"
    assert list_unsubscribe_headers(url) == {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert unsubscribe_url(Settings(public_base_url=BASE_URL), **SCOPE) is None
    assert unsubscribe_url(Settings(unsubscribe_secret=SECRET), **SCOPE) is None
    assert list_unsubscribe_headers(None) == {}


def test_channels_get_the_link_of_the_notification_they_send() -> None:
    row = delivery_row(
        channel="email",
        notification_type="invoice.due",
        recipient="ada@example.com",
        entity_id="invoice-1",
        target_date=datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC),
    )
    settings = Settings(unsubscribe_secret=SECRET, public_base_url=BASE_URL)

    content = RenderedMessage(subject="Invoice due", text="Pay it")

    message = outgoing_message(row, 1, content, unsubscribe_link(row, settings))

    assert message.unsubscribe_url is not None
    scope = verify_token(SECRET, message.unsubscribe_url.rsplit("/", 1)[1])
    assert (scope.channel, scope.notification_type) == ("email", "invoice.due")
    assert (
        outgoing_message(row, 1, content, unsubscribe_link(row, Settings())).unsubscribe_url is None
    )


@pytest.fixture
async def linked_client(
    settings: Settings, api_headers: dict[str, str]
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with unsubscribe links enabled; the unsubscribe pages ignore the API key."""
    app = create_app(settings.replace(unsubscribe_secret=SECRET, public_base_url=BASE_URL))
    async with AsyncTestClient(app=app) as test_client:
        test_client.headers.update(api_headers)
        yield test_client


async def test_one_click_post_records_the_opt_out_once(
    linked_client: AsyncTestClient[Any],
) -> None:
    token = sign_token(SECRET, **SCOPE)

    for _ in range(2):
        response = await linked_client.post(
            f"/unsubscribe/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert "ada@example.com" not in response.text

    (opt_out,) = (await linked_client.get("/api/v1/preferences/")).json()
    assert {k: opt_out[k] for k in ("recipient", "channel", "notification_type", "source")} == {
        "recipient": "ada@example.com",
        "channel": "log",
        "notification_type": "invoice.due",
        "source": "unsubscribe_link",
    }


async def test_get_only_asks_for_confirmation(linked_client: AsyncTestClient[Any]) -> None:
    """Mail scanners fetch links: a GET must not unsubscribe anyone."""
    response = await linked_client.get(f"/unsubscribe/{sign_token(SECRET, **SCOPE)}")

    assert response.status_code == 200
    assert '<form method="post">' in response.text
    assert (await linked_client.get("/api/v1/preferences/")).json() == []


async def test_a_tampered_link_is_400_and_records_nothing(
    linked_client: AsyncTestClient[Any],
) -> None:
    forged = sign_token("guessed-secret", **SCOPE)

    assert_problem(await linked_client.post(f"/unsubscribe/{forged}"), 400, "token")
    assert_problem(await linked_client.get(f"/unsubscribe/{forged}"), 400, "token")
    assert (await linked_client.get("/api/v1/preferences/")).json() == []


async def test_a_link_for_an_unknown_tenant_is_404(linked_client: AsyncTestClient[Any]) -> None:
    token = sign_token(SECRET, **(SCOPE | {"tenant_id": "gone"}))
    assert_problem(await linked_client.post(f"/unsubscribe/{token}"), 404)


async def test_without_a_secret_there_are_no_links(client: AsyncTestClient[Any]) -> None:
    token = sign_token(SECRET, **SCOPE)
    assert_problem(await client.post(f"/unsubscribe/{token}"), 404)
