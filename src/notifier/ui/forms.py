"""Reading the dashboard's forms and filters with the API's own types and checks.

A form's fields arrive as text. Each is converted on its own into the same msgspec Struct
the API decodes (so the same limits apply), and every field at fault gets its message, to be
shown next to it; the values typed are kept to fill the form again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import msgspec

from notifier.api_types import checked_instant
from notifier.errors import ProblemError, msgspec_problem, split_msgspec_path
from notifier.notifications.schemas import NotificationFilter

StructT = TypeVar("StructT", bound=msgspec.Struct)

# <input type="datetime-local"> sends a time without a zone; the pages say it is UTC.
_LOCAL_MINUTE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
_LOCAL_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?")


class FormErrors(Exception):
    """The form's fields at fault, each with its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def as_utc_instant(text: str) -> str:
    """A ``datetime-local`` value read as UTC; anything else as typed (RFC 3339)."""
    if _LOCAL_MINUTE.fullmatch(text):
        return f"{text}:00Z"
    return f"{text}Z" if _LOCAL_SECOND.fullmatch(text) else text


def field_message(error: msgspec.ValidationError) -> str:
    """msgspec's message without the JSON path (the page shows it next to the field)."""
    message, _ = split_msgspec_path(str(error))
    return message


def convert_fields(
    type_: type[StructT], values: Mapping[str, Any], *, instants: frozenset[str] = frozenset()
) -> StructT:
    """``values`` as ``type_``, naming every field at fault (:class:`FormErrors`), not only
    the first: each field msgspec refuses is set aside and the rest converted again.
    ``instants`` name fields holding times, checked like the API's."""
    errors: dict[str, str] = {}
    remaining = dict(values)
    converted: StructT | None = None
    for _ in range(len(values) + 1):
        try:
            converted = msgspec.convert(remaining, type_, strict=False)
            break
        except msgspec.ValidationError as exc:
            problem = msgspec_problem(exc)
            name = re.split(r"[.\[]", problem.field, maxsplit=1)[0]
            known = name in errors
            errors.setdefault(name, field_message(exc))
            if known or name not in remaining:
                break  # a required field set aside: nothing more to learn
            del remaining[name]
    if converted is not None:
        for name in instants:
            value = getattr(converted, name, None)
            if value is not None:
                try:
                    checked_instant(name, value)
                except ProblemError as exc:
                    errors[name] = exc.errors[0].message if exc.errors else str(exc)
    if errors or converted is None:
        raise FormErrors(errors)
    return converted


def service_errors(
    exc: ProblemError,
    fields: Iterable[str],
    *,
    fallback: str,
    aliases: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A 4xx of a use case as messages by form field: ``lead_times[1]`` and
    ``headers.X-A`` are their field's, a body field the form shows as another is under its
    name in ``aliases``, and one the form has not under ``fallback``. A 5xx, or a 4xx
    naming no field, is raised again (the error page says it)."""
    if exc.status >= 500 or not exc.errors:
        raise exc
    known = set(fields)
    errors: dict[str, str] = {}
    for problem in exc.errors:
        field = problem.field.split("[")[0].split(".")[0]
        field = (aliases or {}).get(field, field)
        errors.setdefault(field if field in known else fallback, problem.message)
    return errors


# The filter's query parameters, as the API names them, and the Struct's field of each.
FILTER_FIELDS = {
    "status": "status",
    "type": "notification_type",
    "entity_id": "entity_id",
    "recipient": "recipient",
    "channel": "channel",
    "created_after": "created_after",
    "created_before": "created_before",
}
_INSTANT_FIELDS = frozenset({"created_after", "created_before"})


def filter_values(query: Mapping[str, str]) -> dict[str, str]:
    """The filter fields given (not blank) in ``query``, by their query names."""
    values = {}
    for name in FILTER_FIELDS:
        value = query.get(name, "").strip()
        if value:
            values[name] = value
    return values


def notification_filter(values: Mapping[str, str]) -> NotificationFilter:
    """The filter of :func:`filter_values`; :class:`FormErrors` by query name if not valid."""
    fields = {
        FILTER_FIELDS[name]: as_utc_instant(value) if name in _INSTANT_FIELDS else value
        for name, value in values.items()
    }
    try:
        return convert_fields(NotificationFilter, fields, instants=_INSTANT_FIELDS)
    except FormErrors as exc:
        by_query_name = {field: name for name, field in FILTER_FIELDS.items()}
        raise FormErrors({by_query_name[k]: v for k, v in exc.errors.items()}) from None
