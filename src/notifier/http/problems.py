"""The HTTP edge of errors: every error the API returns is an RFC 9457 problem document.

The OpenAPI descriptions of error answers, and Litestar's exception handlers: a
:class:`~notifier.errors.ProblemError` raised by a use case, Litestar's own validation and
HTTP errors, and infrastructure errors (database down, a transaction pooler) mapped to
problem documents.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap

from notifier.errors import (
    PROBLEM_MEDIA_TYPE,
    FieldProblem,
    Problem,
    ProblemError,
    field_problem_at,
    split_msgspec_path,
)
from notifier.queue import QueueError

logger = logging.getLogger("notifier.api")


_RESPONSE_DESCRIPTIONS = {
    400: "Malformed request: the body is not UTF-8 JSON, or a cursor or header is unusable",
    401: "No API key, or one that is malformed, unknown, expired or revoked",
    403: "The API key lacks the scope this operation needs",
    404: "No such resource",
    409: "The resource's state does not allow this",
    413: "The body is larger than `NOTIFIER_API_MAX_BODY_BYTES`",
    415: "The body's `Content-Type` is not one this operation accepts (see its request body)",
    422: (
        "A value is invalid, or a query parameter the operation does not define; "
        "`errors` names each field at fault"
    ),
    429: "The API key's rate limit is exhausted; retry after `Retry-After` seconds",
    503: "The database is unavailable; retry after `Retry-After` seconds",
}


def problem_responses(*statuses: int, needs_key: bool = True) -> dict[int, ResponseSpec]:
    """OpenAPI descriptions of a handler's error answers, all problem documents.

    Given for 400, they replace the default one Litestar documents for every handler with
    parameters, which describes its own error shape rather than ours. Every operation may
    answer 422 for a query parameter it does not define (http/request_checks.py). Every API
    operation needs a key, so every one may also answer 401, 403, 429 and 503.
    """
    always = (422, 401, 403, 429, 503) if needs_key else (422,)
    return {
        status: ResponseSpec(
            Problem,
            description=_RESPONSE_DESCRIPTIONS[status],
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in dict.fromkeys((*statuses, *always))
    }


def problem_response(request: Request[Any, Any, Any], error: ProblemError) -> Response[Problem]:
    """Render ``error`` for ``request``."""
    problem = Problem(
        title=error.title,
        status=error.status,
        detail=error.detail or error.title,
        instance=request.url.path,
        errors=error.errors,
    )
    return Response(
        problem, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=error.headers
    )


# Litestar validates the request body as the handler argument called ``data``.
_BODY_PATH = ".data"
_NO_BODY = "Object missing required field `data`"
_BODY_REQUIRED = FieldProblem(field="body", message="a JSON body is required")


def _body_problem(exc: ValidationException) -> FieldProblem | None:
    """The body's problem, from the msgspec error that Litestar wraps, if it is about the body.

    Litestar's own summary drops the path for errors at the body's root, and cannot tell
    them from errors in a body field itself called ``data``; msgspec's error still can.
    """
    cause = exc.__cause__
    if not isinstance(cause, msgspec.ValidationError):
        return None
    message, path = split_msgspec_path(str(cause))
    if path is None:
        return _BODY_REQUIRED if message == _NO_BODY else None
    if path != _BODY_PATH and not path.startswith((_BODY_PATH + ".", _BODY_PATH + "[")):
        return None
    return field_problem_at(message, path.removeprefix(_BODY_PATH))


def _validation_problems(exc: ValidationException) -> tuple[int, list[FieldProblem]]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    body = _body_problem(exc)
    problems: list[FieldProblem] = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        raw_source = item.get("source") or "body"
        source = str(getattr(raw_source, "value", raw_source))  # Litestar gives a ParamType enum
        if source == "body" and body is not None:
            problems.append(body)
            body = None  # msgspec stops at the body's first error: name it once
            continue
        message, path = split_msgspec_path(str(item.get("message", "is invalid")))
        key = item.get("key")
        field = path.lstrip(".") if path else (str(key) if key else "body")
        problems.append(FieldProblem(field=field, message=message, source=source))
    if body is not None:
        problems.append(body)
    if not problems:
        problems.append(FieldProblem(field="body", message=exc.detail))
    malformed = _BODY_REQUIRED in problems
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
    if isinstance(exc.__cause__, SerializationException):
        # The body is not JSON at all (truncated, trailing garbage, bad encoding).
        return problem_response(
            request,
            ProblemError(
                HTTP_400_BAD_REQUEST,
                "Malformed request",
                f"body: {exc.detail}",
                errors=[FieldProblem(field="body", message=exc.detail)],
            ),
        )
    if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        limit = request.route_handler.resolve_request_max_body_size()
        message = f"must be at most {limit} bytes"
        return problem_response(
            request,
            ProblemError(
                exc.status_code,
                "Content Too Large",
                f"body: {message}",
                errors=[FieldProblem(field="body", message=message)],
            ),
        )
    title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Request failed")
    return problem_response(
        request, ProblemError(exc.status_code, title, exc.detail, headers=exc.headers)
    )


def _handle_database_down(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.warning("database unavailable: %r", exc)
    return _unavailable(request)


def _unavailable(request: Request[Any, Any, Any]) -> Response[Problem]:
    return problem_response(
        request,
        ProblemError(
            HTTP_503_SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the database is unavailable; retry later",
            headers={"Retry-After": "5"},
        ),
    )


# A statement psycopg prepared is missing, or its name taken, on the server connection: a
# transaction pooler (PgBouncer) gave this transaction another client's server connection.
# The request is fine and a retry lands elsewhere; the operator must turn preparing off.
POOLER_STATEMENT_ERRORS = (
    psycopg.errors.InvalidSqlStatementName,
    psycopg.errors.DuplicatePreparedStatement,
)


def _handle_pooler_statement_error(
    request: Request[Any, Any, Any], exc: psycopg.Error
) -> Response[Problem]:
    logger.error(
        "%r: a transaction pooler shares server connections between clients; set "
        "NOTIFIER_DATABASE_PREPARED_STATEMENTS=false (docs/operations.md, PgBouncer)",
        exc,
    )
    return _unavailable(request)


def _handle_queue_error(request: Request[Any, Any, Any], exc: QueueError) -> Response[Problem]:
    """The queue wraps the database errors of its own queries: a lost connection is still a 503."""
    if isinstance(exc.__cause__, psycopg.OperationalError):
        return _handle_database_down(request, exc.__cause__)
    if isinstance(exc.__cause__, POOLER_STATEMENT_ERRORS):
        return _handle_pooler_statement_error(request, exc.__cause__)
    return _handle_unexpected(request, exc)


def _handle_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Problem]:
    """msgspec gives up decoding JSON nested beyond Python's recursion limit."""
    logger.warning("recursion limit on %s %s: %r", request.method, request.url.path, exc)
    message = "is nested too deeply"
    return problem_response(
        request,
        ProblemError(
            HTTP_400_BAD_REQUEST,
            "Malformed request",
            f"body: {message}",
            errors=[FieldProblem(field="body", message=message)],
        ),
    )


def _handle_unstorable(
    request: Request[Any, Any, Any], exc: psycopg.DataError
) -> Response[Problem]:
    """PostgreSQL refused a value the request carried that validation let through."""
    logger.warning("database refused a value on %s %s: %r", request.method, request.url.path, exc)
    message = str(exc).partition("\n")[0] or "a value in the request cannot be stored"
    return problem_response(
        request,
        ProblemError(HTTP_422_UNPROCESSABLE_ENTITY, "Unprocessable Content", message),
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
    **dict.fromkeys(POOLER_STATEMENT_ERRORS, _handle_pooler_statement_error),
    QueueError: _handle_queue_error,
    psycopg.DataError: _handle_unstorable,
    RecursionError: _handle_too_deep,
    Exception: _handle_unexpected,
}
