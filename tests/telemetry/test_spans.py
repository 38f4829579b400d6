"""Span helpers: the client span for uninstrumented calls, the sampler, stored trace contexts."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from notifier.telemetry import client_span
from notifier.telemetry.provider import SkipOrphanClientSpans
from notifier.telemetry.tracing import context_from_traceparent, current_traceparent


def recording_provider(
    *, sampler: ParentBased | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_client_span_is_a_child_of_the_current_span_and_records_failures() -> None:
    provider, exporter = recording_provider()
    tracer = provider.get_tracer("tests")

    with tracer.start_as_current_span("deliver") as parent:
        attributes: dict[str, AttributeValue] = {
            "server.address": "smtp.example.com",
            "server.port": 587,
        }
        with client_span("smtp.send", attributes=attributes, tracer_provider=provider):
            pass
        with (
            pytest.raises(ConnectionError),
            client_span("smtp.send", tracer_provider=provider),
        ):
            raise ConnectionError("refused")

    sent, failed, _ = exporter.get_finished_spans()
    assert sent.kind is SpanKind.CLIENT
    assert sent.parent is not None
    assert sent.parent.span_id == parent.get_span_context().span_id
    assert dict(sent.attributes or {}) == {"server.address": "smtp.example.com", "server.port": 587}
    assert sent.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR


def test_client_calls_outside_any_operation_are_not_traced() -> None:
    provider, exporter = recording_provider(sampler=ParentBased(SkipOrphanClientSpans()))
    tracer = provider.get_tracer("tests")

    with tracer.start_as_current_span("poll", kind=SpanKind.CLIENT):
        pass
    with (
        tracer.start_as_current_span("process_event", kind=SpanKind.CONSUMER),
        tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT),
    ):
        pass

    assert sorted(span.name for span in exporter.get_finished_spans()) == [
        "SELECT",
        "process_event",
    ]


def test_a_stored_traceparent_round_trips_and_garbage_is_ignored() -> None:
    provider, _ = recording_provider()
    with provider.get_tracer("tests").start_as_current_span("request") as span:
        stored = current_traceparent()
    assert stored is not None
    assert stored.split("-")[1] == format(span.get_span_context().trace_id, "032x")

    context = context_from_traceparent(stored)
    assert context is not None
    assert context_from_traceparent("00-zz-01") is None
    assert context_from_traceparent(None) is None
    assert current_traceparent() is None  # no span, nothing to store
