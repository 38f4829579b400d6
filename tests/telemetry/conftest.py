"""A real OTLP/HTTP trace receiver, and notifier's API and worker as separate processes."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support import LOOPBACK_NETWORKS, SECRETS_KEYS, bearer, free_port, wait_until_healthy


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, flattened: ids in lowercase hex as W3C traceparent writes them."""

    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]


@dataclass
class TraceReceiver:
    """What the OTLP receiver got."""

    endpoint: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def flatten(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {item.key: _value(item.value) for item in span.attributes}
                spans.append(
                    ReceivedSpan(
                        service=resource.get("service.name", ""),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.SpanKind.Name(span.kind),
                        attributes=attributes,
                    )
                )
    return spans


@pytest.fixture
def trace_receiver() -> Iterator[TraceReceiver]:
    """An OTLP/HTTP receiver on loopback decoding protobuf export requests."""
    state = TraceReceiver(endpoint="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            assert self.path == "/v1/traces", self.path
            assert self.headers.get("content-type") == "application/x-protobuf"
            request = ExportTraceServiceRequest.FromString(body)
            with state.lock:
                state.spans.extend(flatten(request))
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Deployment:
    """``notifier api`` and ``notifier worker`` running as processes of their own."""

    api_url: str
    worker_metrics_url: str
    logs: dict[str, Path]
    # An admin key of the default tenant, made with `notifier keys create`.
    headers: dict[str, str]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def deployment(
    database_url: str, trace_receiver: TraceReceiver, tmp_path: Path
) -> Iterator[Deployment]:
    """API and worker processes exporting traces to ``trace_receiver``."""
    api_port, metrics_port = free_port(), free_port()
    common = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NOTIFIER_"))},
        "NOTIFIER_DATABASE_URL": database_url,
        "NOTIFIER_SECRETS_KEYS": SECRETS_KEYS,
        "NOTIFIER_DATABASE_POOL_MIN_SIZE": "1",
        "NOTIFIER_WORKER_POLL_INTERVAL_SECONDS": "0.1",
        "NOTIFIER_WORKER_CONCURRENCY": "2",
        "NOTIFIER_METRICS_CACHE_SECONDS": "0",
        "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
        "OTEL_EXPORTER_OTLP_ENDPOINT": trace_receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    commands = {
        "api": (
            ["api", "--port", str(api_port)],
            {"OTEL_SERVICE_NAME": "test-api"},
        ),
        "worker": (
            ["worker"],
            {"OTEL_SERVICE_NAME": "test-worker", "NOTIFIER_WORKER_METRICS_PORT": str(metrics_port)},
        ),
    }
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "notifier",
            "keys",
            "create",
            "--tenant",
            "default",
            "--scope",
            "admin",
        ],
        env=common,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    headers = bearer(created.stdout.strip().splitlines()[-1])
    processes: list[subprocess.Popen[bytes]] = []
    logs = {}
    try:
        for name, (args, env) in commands.items():
            logs[name] = tmp_path / f"{name}.log"
            with logs[name].open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "notifier", *args],
                        env={**common, **env},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        api_url = f"http://127.0.0.1:{api_port}"

        def all_running() -> None:
            for process, name in zip(processes, commands, strict=True):
                assert process.poll() is None, logs[name].read_text()

        wait_until_healthy(api_url, timeout=60, check_alive=all_running)
        yield Deployment(
            api_url=api_url,
            worker_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            logs=logs,
            headers=headers,
        )
    finally:
        for process in processes:
            _stop(process)
