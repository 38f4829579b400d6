"""The OpenTelemetry SDK's part of tracing: the provider, its sampler and exporter, the
instrumentation. Imported by :func:`notifier.telemetry.tracing.setup_tracing` only when the
``OTEL_*`` variables ask for traces, so that a process without tracing never loads the SDK
(docs/performance.md, "Worker start-up"; tests/test_imports.py).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes


class SkipOrphanClientSpans(Sampler):
    """Drop database and HTTP client calls that belong to no operation.

    procrastinate polls, heartbeats and listens on the same instrumented pool; each of those
    queries would otherwise become a one-span trace several times a second. A client span
    inside a request or a job has a parent, and the parent-based sampler keeps it.
    """

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return ALWAYS_ON.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "SkipOrphanClientSpans"


def install_provider(
    service_name: str,
    environ: Mapping[str, str],
    request_hook: Callable[..., Awaitable[None]],
) -> TracerProvider:
    """Install the process's tracer provider exporting over OTLP/HTTP, and instrument
    psycopg and httpx (``request_hook`` is httpx's asynchronous request hook)."""
    # Current semantic conventions (db.system.name, url.full, http.request.method) unless
    # the operator chose otherwise; the instrumentations read this once, when instrumenting.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database")
    resource = Resource.create(
        {
            "service.name": environ.get("OTEL_SERVICE_NAME") or service_name,
            "service.version": version("notifier"),
        }
    )
    # An explicit OTEL_TRACES_SAMPLER wins; otherwise keep every operation, drop orphans.
    sampler = None if environ.get("OTEL_TRACES_SAMPLER") else ParentBased(SkipOrphanClientSpans())
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    PsycopgInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider, async_request_hook=request_hook)
    return provider
