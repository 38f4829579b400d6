"""One published event is one trace, across the API and worker processes, exported over OTLP."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import WebhookReceiver
from tests.telemetry.conftest import Deployment, ReceivedSpan, TraceReceiver


def spans_of_trace(
    receiver: TraceReceiver, trace_id: str, wanted: set[str], timeout: float = 30.0
) -> list[ReceivedSpan]:
    """Wait until spans named ``wanted`` of ``trace_id`` have all arrived; all of its spans."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [span for span in receiver.received() if span.trace_id == trace_id]
        if wanted <= {span.name for span in spans}:
            return spans
        if time.monotonic() > deadline:
            pytest.fail(f"missing {wanted - {s.name for s in spans}} in {spans}")
        time.sleep(0.1)


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (span,) = [span for span in spans if span.name == name]
    return span


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """Names of ``span``'s ancestors, nearest first (the chain must be unbroken)."""
    by_id = {s.span_id: s for s in spans}
    names = []
    while span.parent_span_id and span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


def deliveries(receiver: WebhookReceiver, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.received()) < count:
        assert time.monotonic() < deadline, "the webhook was not delivered"
        time.sleep(0.1)


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's output, each of which must be one JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def add_webhook_rule(deployment: Deployment, receiver: WebhookReceiver) -> None:
    rule = httpx.post(
        f"{deployment.api_url}/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "webhook", "recipient": receiver.url},
        headers=deployment.headers,
    )
    assert rule.status_code == 201, rule.text


def test_a_published_event_is_one_trace_across_api_and_worker(
    deployment: Deployment, trace_receiver: TraceReceiver, receiver: WebhookReceiver
) -> None:
    add_webhook_rule(deployment, receiver)

    published = httpx.post(
        f"{deployment.api_url}/api/v1/events/",
        json={"type": "user.signup", "payload": {"email": "ada@example.com"}},
        headers=deployment.headers,
    )
    assert published.status_code == 201, published.text
    deliveries(receiver, 1)

    # The webhook receiver saw the trace context too: that is the trace to look at.
    traceparent = receiver.received()[0].headers["traceparent"]
    trace_id = traceparent.split("-")[1]
    spans = spans_of_trace(
        trace_receiver, trace_id, {"POST /api/v1/events/", "process_event", "deliver", "POST"}
    )
    server = only(spans, "POST /api/v1/events/")
    process_event = only(spans, "process_event")
    deliver = only(spans, "deliver")
    webhook_call = only(spans, "POST")

    assert server.kind == "SPAN_KIND_SERVER"
    assert server.service == "test-api"
    assert server.attributes["http.route"] == "/api/v1/events/"
    assert process_event.parent_span_id == server.span_id
    assert process_event.kind == deliver.kind == "SPAN_KIND_CONSUMER"
    assert process_event.service == deliver.service == webhook_call.service == "test-worker"
    assert process_event.attributes["messaging.system"] == "procrastinate"
    assert process_event.attributes["messaging.destination.name"] == "events"
    assert deliver.attributes["messaging.destination.name"] == "deliveries"
    assert deliver.parent_span_id == process_event.span_id
    assert ancestors(webhook_call, spans)[:1] == ["deliver"]
    assert ancestors(webhook_call, spans)[-2:] == ["process_event", "POST /api/v1/events/"]
    assert webhook_call.kind == "SPAN_KIND_CLIENT"
    assert webhook_call.attributes["url.full"] == receiver.url.removesuffix("/hooks") + "/REDACTED"
    assert traceparent.split("-")[2] == webhook_call.span_id

    # The database work is traced inside both processes, as children of their spans.
    database_spans = [s for s in spans if s.attributes.get("db.system.name") == "postgresql"]
    assert {s.service for s in database_spans} == {"test-api", "test-worker"}
    for span in database_spans:
        assert ancestors(span, spans)[-1] == "POST /api/v1/events/"
    # No span carries the payload or the recipient's address.
    for span in spans:
        assert "ada@example.com" not in repr(span.attributes)
    # The health probes that waited for the API to start were not traced.
    assert not [s for s in trace_receiver.received() if "/health" in s.name]

    # Both processes log JSON lines; the worker's say which trace they belong to.
    logs = {name: log_lines(path) for name, path in deployment.logs.items()}
    sent = [line for line in logs["worker"] if "sent on attempt 1" in line["message"]]
    assert [(line["trace_id"], line["logger"]) for line in sent] == [
        (trace_id, "notifier.delivery")
    ]
    assert sent[0]["span_id"] == deliver.span_id
    assert any(line["logger"] == "uvicorn.access" for line in logs["api"])


def test_an_outbox_insert_with_a_traceparent_continues_the_producers_trace(
    deployment: Deployment,
    trace_receiver: TraceReceiver,
    receiver: WebhookReceiver,
    database_url: str,
) -> None:
    add_webhook_rule(deployment, receiver)
    trace_id, producer_span = secrets.token_hex(16), secrets.token_hex(8)

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notifier.outbox (type, payload, traceparent) VALUES (%s, %s, %s)",
            ["user.signup", '{"email": "ada@example.com"}', f"00-{trace_id}-{producer_span}-01"],
        )
    deliveries(receiver, 1)

    spans = spans_of_trace(trace_receiver, trace_id, {"process_event", "deliver", "POST"})
    process_event = only(spans, "process_event")
    assert process_event.parent_span_id == producer_span
    assert only(spans, "deliver").parent_span_id == process_event.span_id
    assert ancestors(only(spans, "POST"), spans)[-2:] == ["deliver", "process_event"]
    assert receiver.received()[0].headers["traceparent"].split("-")[1] == trace_id


def test_api_and_worker_metrics_together_show_every_family(
    deployment: Deployment, receiver: WebhookReceiver
) -> None:
    add_webhook_rule(deployment, receiver)
    published = httpx.post(
        f"{deployment.api_url}/api/v1/events/",
        json={"type": "user.signup", "payload": {}},
        headers=deployment.headers,
    )
    assert published.status_code == 201
    deliveries(receiver, 1)

    api = httpx.get(f"{deployment.api_url}/metrics").text
    worker = eventually_text(
        deployment.worker_metrics_url, 'notifier_deliveries_total{channel="webhook"'
    )

    assert 'notifier_events_received_total{producer="api",type="user.signup"} 1.0' in api
    assert 'notifier_notifications{status="sent"} 1.0' in api
    assert 'notifier_queue_depth{queue="deliveries"}' in api
    assert 'notifier_queue_oldest_due_job_age_seconds{queue="events"}' in api
    assert "notifier_workers_alive 1.0" in api
    assert 'notifier_deliveries_total{channel="webhook",outcome="delivered"} 1.0' in worker
    assert "notifier_delivery_lag_seconds_count 1.0" in worker
    # Each process exports what it counts, and only the API the state read from PostgreSQL.
    assert "notifier_queue_depth" not in worker
    assert "notifier_deliveries_total{" not in api


def eventually_text(url: str, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url).text
        if needle in text:
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
