"""Logs: one JSON object per line in production, readable text on a developer's terminal.

Every record carries the trace and span ids of the span it was logged in, so a log line
leads to its trace and back. Fields passed with ``extra=`` (procrastinate passes the job's)
become keys of the object.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

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
        return json.dumps(document, default=str, ensure_ascii=False)


def _access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """uvicorn's access record as fields: ``(client, method, path, http version, status)``."""
    if len(args) != 5:
        return {}
    fields = dict(zip(_ACCESS_FIELDS, args[:4], strict=True))
    fields["url.path"] = str(fields["url.path"]).partition("?")[0]  # url.path has no query
    fields["http.response.status_code"] = args[4]
    return fields


def configure_logging(log_format: str, level: str) -> None:
    """Send every logger (uvicorn's and procrastinate's included) to stderr in ``log_format``."""
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"NOTIFIER_LOG_FORMAT={log_format!r} is not one of {LOG_FORMATS}")
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise SettingsError(f"NOTIFIER_LOG_LEVEL={level!r} is not a logging level")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
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
