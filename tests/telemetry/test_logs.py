"""Log lines: JSON objects carrying the trace and span ids of the span they were logged in."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.settings import Settings, SettingsError
from notifier.telemetry import setup_telemetry
from notifier.telemetry.logs import (
    JobLogFilter,
    JsonFormatter,
    TraceContextFilter,
    configure_logging,
)
from tests.support import WebhookReceiver, eventually


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


def test_any_extra_field_becomes_json(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    logger.info("é", extra={"thing": Opaque(), "ids": (1, 2), "by_id": {7: "x"}})
    logger.info("big", extra={"huge": 2**80})  # beyond msgspec: written by json instead

    plain, big = lines(buffer)
    assert plain["message"] == "é"
    assert (plain["thing"], plain["ids"], plain["by_id"]) == ("opaque!", [1, 2], {"7": "x"})
    timestamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00"  # ISO 8601, UTC
    assert re.fullmatch(timestamp, str(plain["timestamp"]))
    assert big["huge"] == 2**80


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
    capsys: pytest.CaptureFixture[str],  # first: it outlives the worker's last lines
    worker: None,
    database_url: str,
) -> None:
    """procrastinate's error says only "Database error."; the line names what was behind it,
    whether the worker noticed while fetching or a side task (heartbeat, deferrer) did."""
    configure_logging("json", "INFO")
    name = conninfo_to_dict(database_url)["dbname"]
    database = sql.Identifier(str(name))
    admin_url = make_conninfo(database_url, dbname="postgres")
    logged: list[dict[str, Any]] = []

    async def lost() -> list[str]:
        logged.extend(json.loads(line) for line in capsys.readouterr().err.splitlines())
        return [
            str(line["message"])
            for line in logged
            if "lost the database" in str(line["message"])
            or line.get("action") == "side_task_failed"
        ]

    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database))
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
            )
            messages = await eventually(lost)
        finally:
            await admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database)
            )

    for message in messages:
        # "worker lost the database: Database error. <- AdminShutdown: terminating ..."
        assert re.search(r"Database error\. <- \w+: \S", message), message


async def test_a_delivery_retried_once_logs_one_short_line_per_attempt_without_traceback(
    capsys: pytest.CaptureFixture[str],  # first: it outlives the worker's last lines
    client: AsyncTestClient[Any],
    worker: None,
    receiver: WebhookReceiver,
) -> None:
    configure_logging("json", "INFO")
    receiver.script(503)  # an expected retry, then delivered
    rule = await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "webhook", "recipient": receiver.url},
    )
    assert rule.status_code == 201
    published = await client.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert published.status_code == 201

    async def sent() -> bool:
        detail = (await client.get(f"/api/v1/events/{published.json()['id']}")).json()
        return [n["status"] for n in detail["notifications"]] == ["sent"]

    await eventually(sent)
    (notification,) = (await client.get(f"/api/v1/events/{published.json()['id']}")).json()[
        "notifications"
    ]
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    about = [str(line["message"]) for line in logged if notification["id"] in str(line["message"])]
    assert len(about) == 2, about
    assert about[0].startswith(f"notification {notification['id']} attempt 1 failed (")
    assert "; retry in " in about[0]
    assert about[1] == f"notification {notification['id']} sent on attempt 2"
    # procrastinate's start and end of each job say nothing more at INFO.
    jobs = [line for line in logged if str(line["logger"]).startswith("procrastinate")]
    assert not [line for line in jobs if line.get("action") in {"start_job", "job_success"}]
    assert not [line for line in jobs if line.get("action") == "job_error_retry"]
    assert not [line for line in logged if "exception" in line], "no traceback"
    longest = max(logged, key=lambda line: len(json.dumps(line)))
    assert len(json.dumps(longest)) < 400, longest


def test_procrastinate_lines_keep_the_job_id_not_the_whole_job(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = captured
    job = {
        "id": 42,
        "queue": "deliveries",
        "lock": None,
        "queueing_lock": None,
        "task_name": "notifier.deliver",
        "priority": 0,
        "task_kwargs": {"notification_id": "0191d2c4-9b1e-7c1a-8f00-000000000001"},
        "scheduled_at": "2030-01-01T00:00:00+00:00",
        "attempts": 3,
        "abort_requested": False,
        "worker_id": 7,
        "call_string": "notifier.deliver[42](notification_id='0191d2c4-...')",
    }
    worker = {"name": "worker", "worker_id": 7, "job_id": 42, "queues": ["deliveries"]}
    record = logging.getLogger("procrastinate.worker").makeRecord(
        "procrastinate.worker",
        logging.ERROR,
        __file__,
        1,
        "Job %s ended with status: Error, lasted 0.012 s",
        ("notifier.deliver[42](...)",),
        None,
        extra={
            "action": "job_error",
            "job": job,
            "worker": worker,
            "start_timestamp": 1.0,
            "end_timestamp": 1.012,
            "duration": 0.012,
            "result": None,
        },
    )
    handler = logger.handlers[0]
    handler.addFilter(JobLogFilter())
    try:
        logger.handle(record)
    finally:
        handler.removeFilter(handler.filters[-1])

    (line,) = lines(buffer)
    assert {k: line[k] for k in ("job_id", "task_name", "queue", "attempts", "worker")} == {
        "job_id": 42,
        "task_name": "notifier.deliver",
        "queue": "deliveries",
        "attempts": 3,
        "worker": "worker",
    }
    assert "job" not in line
    assert line["duration"] == 0.012
    assert line["level"] == "ERROR", "failures keep their level"


def access_record(path: str, status: int = 200) -> logging.LogRecord:
    return logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("10.0.0.7:5000", "GET", path, "1.1", status),
        None,
    )


@pytest.mark.parametrize("probes_logged", [False, True])
def test_probes_and_scrapes_are_access_logged_only_when_asked(
    probes_logged: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "INFO", access_log_probes=probes_logged)
    access = logging.getLogger("uvicorn.access")
    for path in (
        "/health",
        "/health/live",
        "/health/ready?verbose=1",
        "/metrics",
        "/api/v1/events/",
    ):
        access.handle(access_record(path))

    paths = [json.loads(line)["url.path"] for line in capsys.readouterr().err.splitlines()]
    if probes_logged:
        assert paths == ["/health", "/health/live", "/health/ready", "/metrics", "/api/v1/events/"]
    else:
        assert paths == ["/api/v1/events/"]


def test_access_log_probes_is_a_setting() -> None:
    assert Settings.from_env({"NOTIFIER_ACCESS_LOG_PROBES": "true"}).access_log_probes is True
    assert Settings().access_log_probes is False
