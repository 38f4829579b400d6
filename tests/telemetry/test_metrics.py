"""``/metrics``: every family is there, and the values move with the work done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from notifier.app import create_app
from notifier.services import Services
from notifier.settings import Settings
from notifier.telemetry.metrics import MAX_EVENT_TYPE_LABELS, Metrics
from tests.support import WebhookReceiver, eventually

FAMILIES = {
    "notifier_events_received",
    "notifier_notifications",
    "notifier_deliveries",
    "notifier_delivery_lag_seconds",
    "notifier_publish_batch_size",
    "notifier_queue_depth",
    "notifier_queue_oldest_due_job_age_seconds",
    "notifier_workers_alive",
    "notifier_metrics_database_up",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No caching of the gauges read from PostgreSQL: each scrape reads them afresh."""
    return settings.replace(metrics_cache_seconds=0.0)


@pytest.fixture
async def api(
    services: Services, settings: Settings, api_headers: dict[str, str]
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The API counting into the same registry as the test's worker, as `notifier dev` does."""
    async with AsyncTestClient(app=create_app(settings, metrics=services.metrics)) as client:
        client.headers.update(api_headers)
        yield client


async def scrape(api: AsyncTestClient[Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, keyed by name and labels."""
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_show_every_family_and_move_after_a_delivery(
    api: AsyncTestClient[Any], worker: None, receiver: WebhookReceiver
) -> None:
    before = await scrape(api)
    assert {name for name, _ in before} >= {
        "notifier_metrics_database_up",
        "notifier_queue_depth",
        "notifier_queue_oldest_due_job_age_seconds",
        "notifier_workers_alive",
        "notifier_delivery_lag_seconds_count",
    }
    rule = await api.post(
        "/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "webhook", "recipient": receiver.url},
    )
    assert rule.status_code == 201
    receiver.script(503)  # the first attempt is retried, the second delivered

    published = await api.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert published.status_code == 201
    await eventually(lambda: _sent(api, published.json()["id"]))

    after = await scrape(api)
    families = {
        family.name for family in text_string_to_metric_families((await api.get("/metrics")).text)
    }
    assert families >= FAMILIES
    assert value(after, "notifier_metrics_database_up") == 1
    assert value(after, "notifier_events_received_total", type="user.signup", producer="api") == 1
    assert value(after, "notifier_deliveries_total", channel="webhook", outcome="retry") == 1
    assert value(after, "notifier_deliveries_total", channel="webhook", outcome="delivered") == 1
    assert value(after, "notifier_delivery_lag_seconds_count") == 1
    assert value(after, "notifier_delivery_lag_seconds_sum") > 0
    assert value(after, "notifier_notifications", status="sent") == 1
    # Statuses with no notification are there too, at zero, for alerts to watch.
    assert ("notifier_notifications", frozenset({("status", "dead")})) in after
    assert value(after, "notifier_notifications", status="dead") == 0
    assert value(after, "notifier_workers_alive") == 1
    for queue in ("events", "deliveries", "maintenance"):
        assert ("notifier_queue_depth", frozenset({("queue", queue)})) in after


async def _sent(api: AsyncTestClient[Any], event_id: str) -> bool:
    detail = (await api.get(f"/api/v1/events/{event_id}")).json()
    return [n["status"] for n in detail["notifications"]] == ["sent"]


async def test_outbox_events_are_counted_by_the_worker_that_processes_them(
    api: AsyncTestClient[Any], worker: None, db: psycopg.AsyncConnection[Any]
) -> None:
    await db.execute("INSERT INTO notifier.outbox (type, payload) VALUES ('order.paid', '{}')")

    async def counted() -> float:
        samples = await scrape(api)
        return value(samples, "notifier_events_received_total", type="order.paid", producer="sql")

    assert await eventually(counted) == 1


async def test_queue_gauges_show_waiting_jobs_and_how_long_they_waited(
    api: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    # No worker runs: the processing job waits. Pretend it was deferred two minutes ago.
    published = await api.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert published.status_code == 201
    await db.execute("UPDATE procrastinate_events SET at = now() - interval '2 minutes'")

    samples = await scrape(api)

    assert value(samples, "notifier_queue_depth", queue="events") == 1
    assert value(samples, "notifier_queue_depth", queue="deliveries") == 0
    assert 120 <= value(samples, "notifier_queue_oldest_due_job_age_seconds", queue="events") < 180
    assert value(samples, "notifier_queue_oldest_due_job_age_seconds", queue="deliveries") == 0
    assert value(samples, "notifier_workers_alive") == 0


async def test_scheduled_jobs_are_not_queue_depth_until_due(
    api: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    created = await api.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "contract.renewal",
            "entity_id": "contract-17",
            "target_date": "2099-01-31T00:00:00Z",
            "email": "ada@example.com",
        },
    )
    assert created.status_code == 201
    assert value(await scrape(api), "notifier_queue_depth", queue="deliveries") == 0

    await db.execute("UPDATE procrastinate_jobs SET scheduled_at = now() - interval '90 seconds'")
    samples = await scrape(api)

    assert value(samples, "notifier_queue_depth", queue="deliveries") == 1
    assert value(samples, "notifier_queue_oldest_due_job_age_seconds", queue="deliveries") >= 90


def test_event_type_labels_are_bounded() -> None:
    metrics = Metrics()
    for number in range(MAX_EVENT_TYPE_LABELS + 5):
        metrics.count_event(f"type.{number}", producer="api")
    metrics.count_event("type.0", producer="api")

    samples = {
        sample.labels["type"]: sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        if family.name == "notifier_events_received"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert len(samples) == MAX_EVENT_TYPE_LABELS + 1
    assert samples["other"] == 5
    assert samples["type.0"] == 2


async def test_every_delivery_outcome_of_each_channel_is_a_series_from_the_start(
    api: AsyncTestClient[Any], services: Services
) -> None:
    """Born at zero, so that increase() sees a process's first dead delivery (the alert)."""
    samples = await scrape(api)

    for channel in services.channels:
        for outcome in ("delivered", "retry", "failed", "dead"):
            key = (
                "notifier_deliveries_total",
                frozenset({"channel": channel, "outcome": outcome}.items()),
            )
            assert samples.get(key) == 0, key


async def test_requests_are_counted_by_route_template_and_status(
    api: AsyncTestClient[Any],
) -> None:
    unknown = "0191d2c4-9b1e-7c1a-8f00-000000000001"
    assert (await api.get(f"/api/v1/events/{unknown}")).status_code == 404
    assert (await api.post("/api/v1/events/", json={"type": ""})).status_code == 422
    published = await api.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert published.status_code == 201

    samples = await scrape(api)
    by_route = {
        (dict(labels)["route"], dict(labels)["status"]): sample
        for (name, labels), sample in samples.items()
        if name == "notifier_http_requests_total"
    }
    assert by_route[("/api/v1/events/{event_id}", "404")] == 1
    assert by_route[("/api/v1/events", "422")] == 1
    assert by_route[("/api/v1/events", "201")] == 1
    assert not [route for route, _ in by_route if unknown in route], "templates, not paths"
    durations = {
        dict(labels)["route"]
        for (name, labels), _ in samples.items()
        if name == "notifier_http_request_duration_seconds_count"
    }
    assert "/api/v1/events/{event_id}" in durations


async def test_process_metrics_are_exposed(api: AsyncTestClient[Any]) -> None:
    samples = await scrape(api)

    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_start_time_seconds") > 0
