"""The errors use cases raise, as RFC 9457 problem details: pure, no web framework.

A use case raises :class:`ProblemError` (usually through :func:`field_error` or
:func:`not_found`) when its input or the state it finds does not allow it; the HTTP edge
(:mod:`notifier.http.problems`) renders it as ``application/problem+json``, the CLI and the
dashboard show its ``detail``.
"""

from __future__ import annotations

import re

import msgspec

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldProblem(msgspec.Struct, frozen=True):
    """One input at fault: where it is (``field``) and what is wrong with it."""

    field: str
    message: str
    source: str = "body"


class Problem(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """An RFC 9457 problem document.

    ``detail`` and ``errors`` are always present (``errors`` may be empty), so clients
    can read them without checking first.
    """

    title: str
    status: int
    detail: str
    errors: list[FieldProblem]
    type: str = "about:blank"
    instance: str | None = None


class ProblemError(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}


def not_found(resource: str, resource_id: object) -> ProblemError:
    """The 404 for an id that does not exist."""
    return ProblemError(404, "Not Found", f"{resource} {resource_id} does not exist")


def field_error(
    field: str, message: str, *, status: int = 422, source: str = "body"
) -> ProblemError:
    """A 4xx naming one input at fault."""
    return ProblemError(
        status,
        "Invalid request" if status == 400 else "Unprocessable Content",
        f"{field}: {message}",
        errors=[FieldProblem(field=field, message=message, source=source)],
    )


# msgspec says where a value is wrong as a JSON path at the end of its message.
_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
# ... and names a missing or unexpected field only in the message.
_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def split_msgspec_path(message: str) -> tuple[str, str | None]:
    """``("Expected `int`, got `str`", ".data.limit")`` from msgspec's message."""
    match = _MSGSPEC_PATH.search(message)
    if match is None:
        return message, None
    return message[: match.start()], match.group("path")


def field_problem_at(message: str, path: str) -> FieldProblem:
    """``path`` (``.a[0]``) as a field name, completed by the field msgspec names in words."""
    field = path.lstrip(".")
    if named := _NAMED_FIELD.search(message):
        field = f"{field}.{named['name']}" if field else named["name"]
    return FieldProblem(field=field or "body", message=message)


def msgspec_problem(error: msgspec.ValidationError, *, prefix: str = "") -> FieldProblem:
    """The field a msgspec validation error is about, under ``prefix`` (e.g. ``[2]``)."""
    message, path = split_msgspec_path(str(error))
    return field_problem_at(message, prefix + (path or ""))
