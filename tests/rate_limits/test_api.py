"""``/api/v1/rate-limits``: the limits in force per channel, and tenant overrides."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.rate_limits.gcra import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND
from notifier.settings import Settings
from tests.support import assert_problem


async def test_without_settings_or_overrides_every_channel_is_unlimited(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.get("/api/v1/rate-limits/")
    assert response.status_code == 200
    assert response.json() == [
        {"channel": "log", "per_second": None, "burst": None, "source": "none", "updated_at": None},
        {
            "channel": "webhook",
            "per_second": None,
            "burst": None,
            "source": "none",
            "updated_at": None,
        },
    ]


async def test_a_tenant_override_replaces_the_default_until_dropped(
    settings: Settings, api_headers: dict[str, str]
) -> None:
    app = create_app(settings.replace(rate_limit_webhook_per_second=50.0, rate_limit_burst=10))
    async with AsyncTestClient(app=app) as client:
        client.headers.update(api_headers)
        webhook = {
            limit["channel"]: limit for limit in (await client.get("/api/v1/rate-limits/")).json()
        }
        assert (webhook["webhook"]["per_second"], webhook["webhook"]["burst"]) == (50.0, 10)
        assert webhook["webhook"]["source"] == "default"

        put = await client.put("/api/v1/rate-limits/webhook", json={"per_second": 2.5})
        assert put.status_code == 200, put.text
        assert {k: put.json()[k] for k in ("channel", "per_second", "burst", "source")} == {
            "channel": "webhook",
            "per_second": 2.5,
            "burst": 1,
            "source": "tenant",
        }
        listed = {
            limit["channel"]: limit for limit in (await client.get("/api/v1/rate-limits/")).json()
        }
        assert listed["webhook"]["source"] == "tenant"

        dropped = await client.delete("/api/v1/rate-limits/webhook")
        assert dropped.status_code == 200
        assert dropped.json()["source"] == "default"
        assert_problem(await client.delete("/api/v1/rate-limits/webhook"), 404)


@pytest.mark.parametrize(
    ("channel", "body", "field"),
    [
        pytest.param("pigeon", {"per_second": 1}, "channel", id="unknown-channel"),
        pytest.param("log", {"per_second": 0}, "per_second", id="zero"),
        pytest.param("log", {"per_second": -1}, "per_second", id="negative"),
        pytest.param("log", {"per_second": 1, "burst": 0}, "burst", id="no-burst"),
        pytest.param("log", {}, "per_second", id="missing"),
        # These were stored, then every delivery of the channel failed with OverflowError.
        pytest.param("log", {"per_second": 1e-300}, "per_second", id="1e-300"),
        pytest.param("log", {"per_second": 1e-12}, "per_second", id="1e-12"),
        pytest.param("log", {"per_second": 5e-324}, "per_second", id="denormal"),
        pytest.param("log", {"per_second": 0.000999}, "per_second", id="below-the-slowest"),
        pytest.param("log", {"per_second": 1_000_001}, "per_second", id="above-the-fastest"),
        pytest.param("log", {"per_second": 1, "burst": 1_000_001}, "burst", id="burst-too-big"),
    ],
)
async def test_bad_limits_are_422_naming_the_field(
    client: AsyncTestClient[Any], channel: str, body: dict[str, Any], field: str
) -> None:
    assert_problem(await client.put(f"/api/v1/rate-limits/{channel}", json=body), 422, field)


@pytest.mark.parametrize(
    "body",
    [
        {"per_second": MIN_PER_SECOND},
        {"per_second": MAX_PER_SECOND, "burst": MAX_BURST},
        {"per_second": MIN_PER_SECOND, "burst": MAX_BURST},
    ],
)
async def test_the_bounds_themselves_are_accepted(
    client: AsyncTestClient[Any], body: dict[str, Any]
) -> None:
    response = await client.put("/api/v1/rate-limits/log", json=body)

    assert response.status_code == 200, response.text
    assert response.json()["per_second"] == body["per_second"]


@pytest.mark.parametrize(
    ("per_second", "burst"),
    [(1e-300, 1), (MIN_PER_SECOND / 2, 1), (MAX_PER_SECOND * 2, 1), (1.0, MAX_BURST + 1)],
)
async def test_the_database_refuses_a_limit_outside_the_bounds(
    db: psycopg.AsyncConnection[Any], per_second: float, burst: int
) -> None:
    """Whatever writes the row: the delivery path can rely on the bounds."""
    with pytest.raises(psycopg.errors.CheckViolation):
        await db.execute(
            "INSERT INTO notifier.rate_limits (tenant_id, channel, per_second, burst)"
            " VALUES ('default', 'log', %s, %s)",
            [per_second, burst],
        )
