"""Logs: one JSON object per line in production, readable text on a developer's terminal.

Every record carries the trace and span ids of the span it was logged in, so a log line
leads to its trace and back. Fields passed with ``extra=`` (procrastinate passes the job's)
become keys of the object.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import msgspec
from opentelemetry import trace

from notifier.queue.retry import RetryLater
from notifier.settings import SettingsError

LOG_FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=``
# (uvicorn's "color_message" repeats the message with terminal escapes).
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}
)
_ACCESS_FIELDS = ("client.address", "http.request.method", "url.path", "network.protocol.version")


class TraceContextFilter(logging.Filter):
    """Stamp each record with the current span's trace and span ids (hex), if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def describe_error(exc: BaseException) -> str:
    """``exc`` with the errors that caused it: procrastinate's own says only "Database error."

    ``Database error. <- AdminShutdown: terminating connection due to administrator command``
    """
    parts = [_first_line(exc) or type(exc).__name__]
    cause = _cause_of(exc)
    while cause is not None and len(parts) < 5:
        message = _first_line(cause)
        parts.append(f"{type(cause).__name__}: {message}" if message else type(cause).__name__)
        cause = _cause_of(cause)
    return " <- ".join(parts)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().partition("\n")[0].strip()


def _cause_of(exc: BaseException) -> BaseException | None:
    if exc.__cause__ is not None or exc.__suppress_context__:
        return exc.__cause__
    return exc.__context__


# procrastinate's lines about a job's routine life: notifier's tasks log each attempt and
# its outcome themselves, so at INFO these only doubled every line (DEBUG keeps them).
_ROUTINE_JOB_ACTIONS = frozenset(
    {"jobs_deferred", "periodic_task_deferred", "start_job", "job_success"}
)
# Of the job (procrastinate's ``job`` and ``worker`` fields, 800-900 bytes a line), only this.
_JOB_FIELDS = ("id", "task_name", "queue", "attempts")


class JobLogFilter(logging.Filter):
    """procrastinate's job lines, made fit for notifier's logs.

    - A job's start and success, and a retry a task asked for (:class:`RetryLater`, which
      the task logged with its reason), are DEBUG lines, without a traceback.
    - Each line keeps the job's id, task, queue and attempts and the worker's name instead
      of the whole job and worker (a deferral: the jobs' ids), and the duration instead of
      both timestamps.
    - A side task's failure (the heartbeat, say, losing the database) names its causes.
    Unexpected errors keep their level and their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("procrastinate"):
            return True
        action = getattr(record, "action", None)
        expected_retry = action == "job_error_retry" and isinstance(
            record.exc_info[1] if record.exc_info else None, RetryLater
        )
        if expected_retry:
            record.exc_info = None
            record.exc_text = None
        if action == "side_task_failed" and record.exc_info and record.exc_info[1]:
            # "... failed with exception: Database error." says nothing of the cause.
            task = getattr(record, "task_name", "?")
            record.msg = f"side task {task} failed, stopping the worker: %s"
            record.args = (describe_error(record.exc_info[1]),)
        if (action in _ROUTINE_JOB_ACTIONS or expected_retry) and record.levelno > logging.DEBUG:
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        fields = vars(record)
        job = fields.pop("job", None)
        if isinstance(job, dict):
            fields.update({_job_field(key): job.get(key) for key in _JOB_FIELDS})
        jobs = fields.pop("jobs", None)
        if isinstance(jobs, list):
            fields["job_ids"] = [job.get("id") for job in jobs if isinstance(job, dict)]
        worker = fields.get("worker")
        if isinstance(worker, dict):
            fields["worker"] = worker.get("name")
        for key in ("start_timestamp", "end_timestamp", "result"):
            fields.pop(key, None)
        return True


def _job_field(key: str) -> str:
    return "job_id" if key == "id" else key


# Requests of probes and scrapers: every few seconds from each, they drowned the access log.
_PROBE_PATHS = ("/health", "/metrics")


class ProbeAccessFilter(logging.Filter):
    """Leave uvicorn's access lines of ``/health``, ``/health/*`` and ``/metrics`` out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "uvicorn.access" or not isinstance(record.args, tuple):
            return True
        if len(record.args) != 5:
            return True
        path = str(record.args[2]).partition("?")[0]
        return not any(path == probe or path.startswith(probe + "/") for probe in _PROBE_PATHS)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, ids, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            document.update(_access_fields(record.args))
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        # msgspec rather than json: the API writes one of these per request (its access
        # line), and json.dumps cost about as much as the rest of the record.
        return _ENCODER.encode(document).decode()


def _as_text(value: Any) -> str:
    """What a value JSON cannot hold becomes in a log line: its ``str``."""
    return str(value)


_ENCODER = msgspec.json.Encoder(enc_hook=_as_text)


def _access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """uvicorn's access record as fields: ``(client, method, path, http version, status)``."""
    if len(args) != 5:
        return {}
    fields = dict(zip(_ACCESS_FIELDS, args[:4], strict=True))
    fields["url.path"] = str(fields["url.path"]).partition("?")[0]  # url.path has no query
    fields["http.response.status_code"] = args[4]
    return fields


def configure_logging(log_format: str, level: str, *, access_log_probes: bool = False) -> None:
    """Send every logger (uvicorn's and procrastinate's included) to stderr in ``log_format``.

    ``access_log_probes``: keep uvicorn's access lines of health probes and metric scrapes.
    """
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"NOTIFIER_LOG_FORMAT={log_format!r} is not one of {LOG_FORMATS}")
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise SettingsError(f"NOTIFIER_LOG_LEVEL={level!r} is not a logging level")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.addFilter(JobLogFilter())
    if not access_log_probes:
        handler.addFilter(ProbeAccessFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # uvicorn configures nothing when given log_config=None: its loggers reach this handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
