"""The one Idempotency-Key helper every idempotent POST goes through: ``identify`` and ``once``.

The endpoints' own tests (events, notifications, rules) check the HTTP answers; these check
the helper on its own, on a real database: the work runs once per key, a repeat replays the
stored answer, a different request under the same key is refused, and a rolled-back
transaction leaves the key unclaimed.
"""

from __future__ import annotations

import pytest

from notifier.db import transaction
from notifier.errors import ProblemError
from notifier.idempotency import HEADER, IdempotentRequest, Outcome, identify, once
from notifier.services import Services
from tests.support import outcome


def request(body: bytes = b'{"a": 1}', key: str = "key-1") -> IdempotentRequest:
    return identify("default", key, method="POST", path="/api/v1/rules/", body=body)


@pytest.mark.parametrize("key", ["", " leading", "trailing ", "tab\there", "é", "k" * 256])
def test_an_unusable_key_is_a_400_naming_the_header(key: str) -> None:
    problem = outcome(lambda: request(key=key))
    assert isinstance(problem, ProblemError)
    assert problem.status == 400
    assert [(e.field, e.source) for e in problem.errors] == [(HEADER, "header")]


def test_the_identity_is_the_method_path_and_body() -> None:
    first = request()
    assert request() == first
    assert identify("default", "key-1", method="POST", path="/api/v1/rules", body=b'{"a": 1}') == (
        first
    )  # the trailing slash does not matter
    assert request(body=b'{"a": 2}').request_hash != first.request_hash
    assert first.scope == "POST /api/v1/rules"


class Work:
    """A unit of work that counts its runs and answers a fresh body each time."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> Outcome[dict[str, int]]:
        self.runs += 1
        return Outcome(201, {"run": self.runs})


async def test_the_work_runs_once_per_key_and_a_repeat_replays_its_answer(
    services: Services,
) -> None:
    work = Work()
    async with transaction(services.pool) as conn:
        first = await once(conn, request(), dict[str, int], work)
    async with transaction(services.pool) as conn:
        repeat = await once(conn, request(), dict[str, int], work)
    assert first == Outcome(201, {"run": 1})
    assert repeat == Outcome(201, {"run": 1}, replayed=True)
    assert work.runs == 1


async def test_without_a_key_the_work_runs_every_time(services: Services) -> None:
    work = Work()
    for _ in range(2):
        async with transaction(services.pool) as conn:
            await once(conn, None, dict[str, int], work)
    assert work.runs == 2


async def test_another_request_under_the_same_key_is_a_422(services: Services) -> None:
    async with transaction(services.pool) as conn:
        await once(conn, request(), dict[str, int], Work())
    with pytest.raises(ProblemError) as refused:
        async with transaction(services.pool) as conn:
            await once(conn, request(body=b'{"a": 2}'), dict[str, int], Work())
    assert refused.value.status == 422
    assert [e.field for e in refused.value.errors] == [HEADER]


async def test_a_rolled_back_transaction_leaves_the_key_unclaimed(services: Services) -> None:
    class Failed(Exception):
        pass

    async def failing() -> Outcome[dict[str, int]]:
        raise Failed

    with pytest.raises(Failed):
        async with transaction(services.pool) as conn:
            await once(conn, request(), dict[str, int], failing)
    work = Work()
    async with transaction(services.pool) as conn:
        answer = await once(conn, request(), dict[str, int], work)
    assert answer == Outcome(201, {"run": 1})
    assert work.runs == 1
