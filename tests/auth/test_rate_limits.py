"""Per-key rate limits: 429 with Retry-After, one key's flood never slows another key."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.auth.ratelimit import RateLimiter
from notifier.settings import Settings
from tests.conftest import CreateApiKey
from tests.support import assert_problem, bearer


async def test_a_key_past_its_burst_gets_429_with_retry_after(
    client: AsyncTestClient[Any], create_api_key: CreateApiKey
) -> None:
    # One request a minute, three at once: the fourth is refused whatever the machine's speed.
    limited = await create_api_key(rate_limit_per_second=1 / 60, rate_limit_burst=3)
    other = await create_api_key()

    answers = [
        (await client.get("/api/v1/events/", headers=bearer(limited))).status_code for _ in range(3)
    ]
    refused = await client.get("/api/v1/events/", headers=bearer(limited))

    assert answers == [200, 200, 200]
    assert_problem(refused, 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert (await client.get("/api/v1/events/", headers=bearer(other))).status_code == 200


async def test_the_default_limit_comes_from_settings(
    settings: Settings, create_api_key: CreateApiKey
) -> None:
    app = create_app(settings.replace(api_rate_limit_per_second=1 / 60, api_rate_limit_burst=2))
    key = await create_api_key()
    async with AsyncTestClient(app=app) as limited:
        codes = [
            (await limited.get("/api/v1/rules/", headers=bearer(key))).status_code for _ in range(3)
        ]

    assert codes == [200, 200, 429]


def test_gcra_allows_the_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])

    burst = [limiter.acquire("k", rate=2.0, burst=4) for _ in range(4)]
    wait = limiter.acquire("k", rate=2.0, burst=4)
    now[0] += 0.5
    after_one_interval = limiter.acquire("k", rate=2.0, burst=4)
    too_soon = limiter.acquire("k", rate=2.0, burst=4)

    assert burst == [None] * 4
    assert wait is not None
    assert abs(wait - 0.5) < 1e-9
    assert after_one_interval is None
    assert too_soon is not None
    assert limiter.acquire("another key", rate=2.0, burst=4) is None


def test_idle_keys_are_forgotten_so_memory_stays_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    for n in range(10_001):
        limiter.acquire(f"k{n}", rate=1.0, burst=1)
    now[0] += 2.0

    limiter.acquire("fresh", rate=1.0, burst=1)
    limiter.acquire("fresh2", rate=1.0, burst=1)

    assert len(limiter) == 2
