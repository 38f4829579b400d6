"""RFC 9457 problem details: every error the API returns has this shape."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
import psycopg
import psycopg_pool
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap

PROBLEM_MEDIA_TYPE = "application/problem+json"
logger = logging.getLogger("notifier.api")


class FieldProblem(msgspec.Struct, frozen=True):
    """One input at fault: where it is (``field``) and what is wrong with it."""

    field: str
    message: str
    source: str = "body"


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """An RFC 9457 problem document."""

    title: str
    status: int
    type: str = "about:blank"
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] = msgspec.field(default_factory=list)


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
    """The 404 for an id that does not exist (or is not the caller's to see)."""
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


def problem_response(request: Request[Any, Any, Any], error: ProblemError) -> Response[Problem]:
    """Render ``error`` for ``request``."""
    problem = Problem(
        title=error.title,
        status=error.status,
        detail=error.detail,
        instance=request.url.path,
        errors=error.errors,
    )
    return Response(
        problem, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=error.headers
    )


# msgspec says where a value is wrong as a JSON path at the end of its message.
_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _validation_problems(exc: ValidationException) -> tuple[int, list[FieldProblem]]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    problems: list[FieldProblem] = []
    malformed = False
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "is invalid"))
        key = item.get("key")
        source = str(item.get("source") or "body")
        match = _MSGSPEC_PATH.search(message)
        if match:
            message = message[: match.start()]
            field = match.group("path").lstrip(".") or "body"
        else:
            field = str(key) if key else "body"
        if message.startswith(("JSON is malformed", "Input data was truncated")):
            malformed = True
        problems.append(FieldProblem(field=field, message=message, source=source))
    if not problems:
        problems.append(FieldProblem(field="body", message=exc.detail))
        malformed = "malformed" in exc.detail.lower() or "decode" in exc.detail.lower()
    return (HTTP_400_BAD_REQUEST if malformed else HTTP_422_UNPROCESSABLE_ENTITY), problems


def _handle_problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[Problem]:
    return problem_response(request, exc)


def _handle_validation(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[Problem]:
    status, problems = _validation_problems(exc)
    title = "Malformed request" if status == HTTP_400_BAD_REQUEST else "Unprocessable Content"
    detail = "; ".join(f"{p.field}: {p.message}" for p in problems)
    return problem_response(request, ProblemError(status, title, detail, errors=problems))


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    title = {404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large"}.get(
        exc.status_code, "Request failed"
    )
    return problem_response(
        request, ProblemError(exc.status_code, title, exc.detail, headers=exc.headers)
    )


def _handle_database_down(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.warning("database unavailable: %r", exc)
    return problem_response(
        request,
        ProblemError(
            HTTP_503_SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the database is unavailable; nothing was stored, retry later",
            headers={"Retry-After": "5"},
        ),
    )


def _handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request, ProblemError(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error")
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ProblemError: _handle_problem,
    ValidationException: _handle_validation,
    HTTPException: _handle_http,
    psycopg.OperationalError: _handle_database_down,
    psycopg_pool.PoolTimeout: _handle_database_down,
    Exception: _handle_unexpected,
}

__all__ = ["EXCEPTION_HANDLERS", "MediaType", "Problem", "ProblemError", "field_error"]
