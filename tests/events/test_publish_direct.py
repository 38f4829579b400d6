"""``POST /api/v1/events/`` answered directly (notifier.http.direct) answers as Litestar's own
call of the handler does: each request is sent to the app as served and to one built with
the publish handler's ``answer_directly`` middleware taken out, and the answers compared."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from litestar import Litestar, Request, post
from litestar.params import QueryParameter
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.events.api import EventController
from notifier.http import direct as direct_module
from notifier.http.direct import answer_directly, check_direct_routes
from notifier.settings import Settings
from notifier.tenancy import Scope
from tests.conftest import CreateApiKey
from tests.support import bearer

EVENTS = "/api/v1/events/"
JSON = {"content-type": "application/json"}
EVENT = {"type": "user.signup", "payload": {"user_id": 42}}


@pytest.fixture
async def litestar_client(
    client: AsyncTestClient[Any],
    settings: Settings,
    api_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with the publish answered by Litestar's call of ``EventController.publish``
    (``client`` is built first, with the middleware)."""
    monkeypatch.setattr(EventController.publish, "middleware", [])
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        test_client.headers.update(api_headers)
        yield test_client


async def test_the_served_app_answers_directly_and_the_reference_does_not(
    client: AsyncTestClient[Any],
    litestar_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Else every comparison below would compare one path with itself, and pass.
    direct_calls = []
    answer_directly_once = direct_module._DirectRoute.__call__

    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        direct_calls.append(scope["path"])
        await answer_directly_once(self, scope, receive, send)

    monkeypatch.setattr(direct_module._DirectRoute, "__call__", counted)

    assert (await litestar_client.post(EVENTS, json=EVENT)).status_code == 201
    assert direct_calls == []
    assert (await client.post(EVENTS, json=EVENT)).status_code == 201
    assert direct_calls == [EVENTS.rstrip("/")]


def answer(response: Any) -> tuple[int, dict[str, str], bytes]:
    return response.status_code, dict(response.headers), response.content


def without_ids(response: Any) -> tuple[int, dict[str, str], Any]:
    """An answer with what differs between two stored events (id, time) left out."""

    def strip(event: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in event.items() if k not in {"id", "created_at"}}

    body = response.json()
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return (
        response.status_code,
        headers,
        [strip(e) for e in body] if isinstance(body, list) else strip(body),
    )


BAD_REQUESTS: list[Any] = [
    pytest.param({"content": b'{"type": "a.b", "payload": {', "headers": JSON}, id="truncated"),
    pytest.param({"content": b"", "headers": JSON}, id="empty"),
    pytest.param({"content": b"[]", "headers": JSON}, id="empty-batch"),
    pytest.param({"json": {"payload": {}}}, id="type-missing"),
    pytest.param({"json": {"type": "a.b", "colour": "red"}}, id="unknown-field"),
    pytest.param({"json": {"type": "a.b", "payload": {"k": "\u0000"}}}, id="nul-in-payload"),
    pytest.param(
        {"content": b'{"type": "a.b", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}"},
        id="nested-too-deeply",
    ),
    pytest.param({"json": [EVENT, {"type": 1}]}, id="batch-item-invalid"),
    pytest.param(
        {"json": {"specversion": "1.0", "type": "a.b", "source": "s"}}, id="cloudevent-without-id"
    ),
    pytest.param({"content": b"{}", "headers": {"content-type": "text/plain"}}, id="media-type"),
    pytest.param(
        {"content": b"{}", "headers": {"content-type": "application/json; charset=latin-1"}},
        id="charset",
    ),
    pytest.param({"content": b'{"type": "\xff"}', "headers": JSON}, id="not-utf-8"),
    pytest.param({"json": EVENT, "params": {"dry_run": "1"}}, id="undeclared-query"),
    pytest.param({"json": EVENT, "headers": {"idempotency-key": "k" * 1000}}, id="bad-idem-key"),
    pytest.param({"json": EVENT, "headers": {"authorization": ""}}, id="no-key"),
    pytest.param({"json": EVENT, "headers": {"authorization": "Bearer nope"}}, id="malformed-key"),
    pytest.param(
        {"json": EVENT, "headers": {"authorization": "Bearer ntf_0123456789abcdef_" + "x" * 43}},
        id="unknown-key",
    ),
]


@pytest.mark.parametrize("request_", BAD_REQUESTS)
async def test_bad_requests_get_the_same_answers_both_ways(
    client: AsyncTestClient[Any], litestar_client: AsyncTestClient[Any], request_: dict[str, Any]
) -> None:
    direct = await client.post(EVENTS, **request_)
    litestar = await litestar_client.post(EVENTS, **request_)

    assert answer(direct) == answer(litestar)
    assert direct.status_code >= 400


async def test_a_body_over_the_limit_gets_the_same_413_both_ways(
    settings: Settings, api_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    small = settings.replace(api_max_body_bytes=64)
    body = json.dumps({"type": "a.b", "payload": {"x": "y" * 100}}).encode()
    answers = []
    for direct in (True, False):
        if not direct:
            monkeypatch.setattr(EventController.publish, "middleware", [])
        async with AsyncTestClient(app=create_app(small)) as test_client:
            response = await test_client.post(EVENTS, content=body, headers=JSON | api_headers)
            answers.append(answer(response))

    assert answers[0] == answers[1]
    assert answers[0][0] == 413


async def test_keys_without_the_scope_or_over_their_rate_get_the_same_answers_both_ways(
    client: AsyncTestClient[Any],
    litestar_client: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
) -> None:
    reader = bearer(await create_api_key(scopes=[Scope.EVENTS_READ]))
    limited = bearer(
        await create_api_key(
            scopes=[Scope.EVENTS_WRITE], rate_limit_per_second=1 / 60, rate_limit_burst=1
        )
    )

    for headers, status in ((reader, 403), (limited, 201), (limited, 429)):
        direct = await client.post(EVENTS, json=EVENT, headers=headers)
        litestar = await litestar_client.post(EVENTS, json=EVENT, headers=headers)
        # The seconds to wait count down between the two: compared without their digits.
        assert re.sub(r"\d+", "N", str(without_ids(direct))) == re.sub(
            r"\d+", "N", str(without_ids(litestar))
        )
        assert direct.status_code == status


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param({"json": EVENT}, id="event"),
        pytest.param({"json": [EVENT, EVENT]}, id="batch"),
        pytest.param(
            {
                "json": {"specversion": "1.0", "id": "1", "source": "s", "type": "a.b"},
                "headers": {"content-type": "application/cloudevents+json"},
            },
            id="cloudevent",
        ),
    ],
)
async def test_publishes_get_the_same_answers_both_ways(
    client: AsyncTestClient[Any], litestar_client: AsyncTestClient[Any], request_: dict[str, Any]
) -> None:
    litestar = await litestar_client.post(EVENTS, **request_)
    direct = await client.post(EVENTS, **request_)

    # A CloudEvent stored the first time is found the second (200, the same event).
    if "specversion" in str(request_):
        assert (litestar.status_code, direct.status_code) == (201, 200)
        assert direct.json() == litestar.json()
    else:
        assert without_ids(direct) == without_ids(litestar)
        assert direct.status_code == 201


async def test_an_idempotency_key_used_one_way_is_replayed_the_other(
    client: AsyncTestClient[Any], litestar_client: AsyncTestClient[Any]
) -> None:
    # The key's identity names the method and path: both ways must name them alike.
    headers = {"idempotency-key": "direct-and-litestar"}
    first = await litestar_client.post(EVENTS, json=EVENT, headers=headers)
    again = await client.post(EVENTS.rstrip("/"), json=EVENT, headers=headers)

    assert first.status_code == 201
    assert answer(again) == answer(first)


async def answer_nothing(_: Any) -> tuple[int, Any]:
    return 200, None


def test_a_handler_answered_directly_may_not_declare_what_the_path_leaves_out() -> None:
    async def after(response: Any) -> Any:
        return response

    @post("/", middleware=[answer_directly(answer_nothing, reads=[])], after_request=after)
    async def handler() -> None:
        return None

    with pytest.raises(RuntimeError, match="after_request"):
        check_direct_routes(Litestar([handler]))


def test_an_app_adding_middleware_around_every_handler_may_not_answer_directly() -> None:
    @post("/", middleware=[answer_directly(answer_nothing, reads=[])])
    async def handler() -> None:
        return None

    with pytest.raises(RuntimeError, match="allowed_hosts"):
        check_direct_routes(Litestar([handler], allowed_hosts=["example.com"]))


def test_the_direct_answer_must_be_the_innermost_middleware() -> None:
    def outer(app: Any) -> Any:
        return app

    @post("/", middleware=[outer, answer_directly(answer_nothing, reads=[])])
    async def last() -> None:
        return None

    check_direct_routes(Litestar([last]))  # innermost: accepted

    @post("/", middleware=[answer_directly(answer_nothing, reads=[]), outer])
    async def first() -> None:
        return None

    with pytest.raises(RuntimeError, match="innermost"):
        check_direct_routes(Litestar([first]))


def test_the_handler_may_declare_only_the_parameters_the_answer_reads() -> None:
    @post("/", middleware=[answer_directly(answer_nothing, reads=["request"])])
    async def handler(
        request: Request[Any, Any, Any], dry_run: Annotated[bool, QueryParameter(name="dry_run")]
    ) -> None:
        return None

    with pytest.raises(RuntimeError, match="dry_run"):
        check_direct_routes(Litestar([handler]))


async def test_an_answer_of_before_request_is_sent_as_litestar_sends_it() -> None:
    async def refuse(_: Any) -> dict[str, str]:
        return {"refused": "early"}

    async def never(_: Any) -> tuple[int, Any]:
        raise AssertionError("the handler's answer was asked for")

    @post("/direct", middleware=[answer_directly(never, reads=[])])
    async def direct() -> None:
        return None

    @post("/litestar")
    async def litestar() -> None:
        return None

    app = Litestar([direct, litestar], before_request=refuse)
    check_direct_routes(app)
    async with AsyncTestClient(app=app) as test_client:
        answers = [answer(await test_client.post(path)) for path in ("/direct", "/litestar")]

    assert answers[0] == answers[1]
    assert answers[0][0] == 201
    assert json.loads(answers[0][2]) == {"refused": "early"}
