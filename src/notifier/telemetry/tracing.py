"""Distributed tracing: OpenTelemetry over OTLP, configured by the standard ``OTEL_*`` variables.

One trace runs from the HTTP request (or the producer's ``traceparent`` on an outbox row)
through ``process_event`` and every ``deliver`` it schedules. The trace context travels on
the row a job acts on (``events.traceparent``, ``notifications.traceparent``): the worker
middleware reads it back and starts the job's CONSUMER span as its child.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from notifier.db import Pool
from notifier.queue import DELIVER_TASK, PROCESS_EVENT_TASK, JobInfo
from notifier.queue.app import AroundJob
from notifier.settings import SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger("notifier.telemetry")
tracer = trace.get_tracer("notifier")
_propagator = TraceContextTextMapPropagator()

SUPPORTED_PROTOCOL = "http/protobuf"
# Routes that are polled, not used: a trace per probe or scrape would drown the real ones.
UNTRACED_PATHS = ["^/health", "^/metrics$", "^/schema"]


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an OTLP endpoint is set, SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def setup_tracing(service_name: str, environ: Mapping[str, str]) -> TracerProvider | None:
    """Install the process's tracer provider and instrumentation; None when tracing is off.

    The exporter itself reads ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout) and the
    batch processor ``OTEL_BSP_*``. ``OTEL_SERVICE_NAME`` overrides ``service_name``.
    """
    if not tracing_wanted(environ):
        return None
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or SUPPORTED_PROTOCOL
    )
    if protocol != SUPPORTED_PROTOCOL:
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use {SUPPORTED_PROTOCOL!r}"
            " (the collector's OTLP/HTTP port, usually 4318)"
        )
    # Deferred import: a process without tracing never loads the SDK, the exporter or the
    # instrumentors (about a twentieth of a worker's start-up imports, psutil among them).
    from notifier.telemetry.provider import install_provider  # noqa: PLC0415

    provider = install_provider(service_name, environ, _redact_request_url)
    logger.info("tracing to OTLP endpoint as %s", provider.resource.attributes["service.name"])
    return provider


async def _redact_request_url(span: trace.Span, request: Any) -> None:
    """httpx's request hook: the span's URL as :func:`redacted_url` leaves it."""
    span.set_attribute("url.full", redacted_url(str(request.url)))


def redacted_url(url: str) -> str:
    """Only the scheme, host and port of an outgoing URL.

    Webhook URLs often carry their credentials in the path or the query
    (``/services/T0/B0/<token>``, ``?sig=``), which must not reach a trace.
    """
    parsed = httpx.URL(url)
    origin = f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
    return origin + ("/REDACTED" if parsed.raw_path not in {b"", b"/"} else "/")


def tracing_enabled() -> bool:
    """Whether :func:`setup_tracing` installed a provider in this process.

    An SDK provider exists only where the SDK was imported: a process that never imported
    it (tracing off) is answered without importing it now.
    """
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    return sdk is not None and isinstance(trace.get_tracer_provider(), sdk.TracerProvider)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store beside work done later."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """The trace context a stored ``traceparent`` names (None if absent or malformed)."""
    if not traceparent:
        return None
    extracted = _propagator.extract({"traceparent": traceparent})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


@contextmanager
def client_span(
    name: str,
    *,
    attributes: Mapping[str, AttributeValue] | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> Iterator[trace.Span]:
    """A CLIENT span around an outgoing call that no library instruments (an SMTP send).

    Give semantic-convention attributes only (``server.address``, ``server.port``,
    ``network.protocol.name``): never recipients, bodies or credentials. An exception
    leaving the block marks the span as failed. ``tracer_provider`` defaults to the
    process's (a no-op one while tracing is off).
    """
    active = (
        trace.get_tracer("notifier", tracer_provider=tracer_provider) if tracer_provider else tracer
    )
    with active.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def consumer_span(
    task_name: str,
    *,
    job_id: int | None,
    queue: str,
    traceparent: str | None,
    attempt: int | None = None,
    acting_on: Mapping[str, Any] | None = None,
    batched: bool = False,
) -> AbstractContextManager[Any]:
    """The CONSUMER span of a job's work, a child of the trace ``traceparent`` names (a new
    trace without one); nothing while tracing is off.

    Every job's run gets one (:func:`job_tracing_middleware`), and so does each
    notification a delivery batch takes along (``batched``), whose own job never runs.
    ``attempt`` counts the job's runs; ``acting_on`` holds the ids of the event or
    notification the work is about (``event_id``, ``notification_id``).
    """
    if not tracing_enabled():
        return nullcontext()
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "procrastinate",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": str(job_id),
        "notifier.task": task_name,
    }
    if attempt is not None:
        attributes["notifier.job.attempt"] = attempt
    for key in ("event_id", "notification_id"):
        if acting_on and key in acting_on:
            attributes[f"notifier.{key.replace('_id', '.id')}"] = str(acting_on[key])
    if batched:
        attributes["notifier.batched"] = True
    return tracer.start_as_current_span(
        task_name.removeprefix("notifier."),
        context=context_from_traceparent(traceparent),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


# The row each task acts on, which carries the trace context it continues.
_TRACED_ROWS = {
    PROCESS_EVENT_TASK: ("notifier.events", "event_id"),
    DELIVER_TASK: ("notifier.notifications", "notification_id"),
}


async def _stored_traceparent(pool: Pool, task_name: str, kwargs: Mapping[str, Any]) -> str | None:
    table_and_key = _TRACED_ROWS.get(task_name)
    if table_and_key is None:
        return None
    table, key = table_and_key
    try:
        row_id = uuid.UUID(str(kwargs.get(key)))
    except ValueError:
        return None
    async with pool.connection() as conn:
        # table comes from the constant map above, never from the job.
        cursor = await conn.execute(f"SELECT traceparent FROM {table} WHERE id = %s", [row_id])  # noqa: S608
        row = await cursor.fetchone()
    return row["traceparent"] if row else None


def job_tracing_middleware(pool: Pool) -> AroundJob:
    """What wraps every job a worker runs: the job in a CONSUMER span.

    The span is a child of the trace context stored on the job's event or notification;
    when tracing is off it costs nothing (no lookup, a no-op span).
    """

    async def trace_job(job: JobInfo, call_next: Callable[[], Awaitable[Any]]) -> Any:
        if not tracing_enabled():
            return await call_next()
        with consumer_span(
            job.task_name,
            job_id=job.id,
            queue=job.queue,
            traceparent=await _stored_traceparent(pool, job.task_name, job.args),
            attempt=job.attempts + 1,
            acting_on=job.args,
        ):
            return await call_next()

    return trace_job
