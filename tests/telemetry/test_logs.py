"""Log lines: JSON objects carrying the trace and span ids of the span they were logged in."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.settings import Settings, SettingsError
from notifier.telemetry import setup_telemetry
from notifier.telemetry.logs import JsonFormatter, TraceContextFilter, configure_logging
from tests.support import eventually


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines into a buffer, through the same filter and formatter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.telemetry.captured")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_line_inside_a_span_carries_its_trace_and_span_ids(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = captured
    tracer = TracerProvider().get_tracer("tests")

    with tracer.start_as_current_span("work") as span:
        logger.info("notification %s sent", "n-1", extra={"attempt": 2})
    logger.warning("outside")

    inside, outside = lines(buffer)
    context = span.get_span_context()
    assert inside["message"] == "notification n-1 sent"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "tests.telemetry.captured"
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["attempt"] == 2
    assert str(inside["timestamp"]).endswith("+00:00")
    assert outside["level"] == "WARNING"
    assert "trace_id" not in outside


def test_exceptions_stay_inside_their_one_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")

    (line,) = lines(buffer)
    assert "ValueError: boom" in str(line["exception"])


def test_access_lines_become_fields_without_the_query(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = captured
    access = logging.getLogger("uvicorn.access")
    record = access.makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/api/v1/events/?limit=5", "1.1", 200),
        None,
    )
    logger.handle(record)

    (line,) = lines(buffer)
    assert line["http.request.method"] == "GET"
    assert line["url.path"] == "/api/v1/events/"
    assert line["http.response.status_code"] == 200


@pytest.mark.parametrize(
    ("log_format", "level"), [("yaml", "INFO"), ("json", "LOUD")], ids=["format", "level"]
)
def test_unusable_log_settings_are_refused(log_format: str, level: str) -> None:
    with pytest.raises(SettingsError):
        configure_logging(log_format, level)


def test_setup_without_an_otlp_endpoint_traces_nothing() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        telemetry = setup_telemetry(Settings(), "notifier-test", environ={})
        assert telemetry.tracer_provider is None
        disabled = setup_telemetry(
            Settings(log_format="text"),
            "notifier-test",
            environ={
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_SDK_DISABLED": "true",
            },
        )
        assert disabled.tracer_provider is None
        with pytest.raises(SettingsError, match="http/protobuf"):
            setup_telemetry(
                Settings(),
                "notifier-test",
                environ={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                },
            )
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


async def test_a_worker_that_loses_the_database_logs_why(
    worker: None, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """procrastinate's error says only "Database error."; the line names what was behind it."""
    caplog.set_level(logging.INFO, logger="notifier.worker")
    name = conninfo_to_dict(database_url)["dbname"]
    database = sql.Identifier(str(name))
    admin_url = make_conninfo(database_url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database))
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
            )

            async def lost() -> bool:
                return any("worker lost the database" in r.getMessage() for r in caplog.records)

            await eventually(lost)
        finally:
            await admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database)
            )

    (line,) = [r.getMessage() for r in caplog.records if "lost the database" in r.getMessage()]
    # e.g. "Database error. <- AdminShutdown: terminating connection due to administrator command"
    assert re.search(r" <- (\w+\.)*[A-Z]\w+: \S", line), line
