"""Reading a publish request: the plain shape, CloudEvents 1.0 structured JSON, or a batch.

``POST /api/v1/events/`` takes
- ``application/json``: ``{"type", "payload"}``, or a CloudEvent (it has ``specversion``), or a
  JSON array of either;
- ``application/cloudevents+json``: one CloudEvent;
- ``application/cloudevents-batch+json``: a JSON array of CloudEvents;
- a CloudEvent in binary mode: its attributes in ``ce-*`` headers, its data (a JSON object)
  the ``application/json`` body.

A batch is all-or-nothing: one invalid item rejects the request, naming every item at fault.
notifier stores an event's data as a JSON object (rules and templates read its fields), so
data that is not one is refused with a 4xx naming where it was, never dropped: ``data_base64``
is taken when it holds a JSON object, in binary mode only a JSON body is.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import msgspec

from notifier.api_types import AwareDatetime, EventType, Payload
from notifier.errors import FieldProblem, ProblemError, msgspec_problem
from notifier.events.schemas import EventCreate
from notifier.patterns import whole

CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_BATCH_JSON = "application/cloudevents-batch+json"
MAX_BATCH_SIZE = 1000
TraceParent = Annotated[
    str, msgspec.Meta(pattern=whole(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}"))
]


class CloudEvent(msgspec.Struct, kw_only=True):
    """A CloudEvents 1.0 event in structured JSON mode. Extension attributes are ignored,
    except ``traceparent`` (the distributed tracing extension)."""

    specversion: Literal["1.0"]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    type: EventType
    time: AwareDatetime | None = None
    datacontenttype: Literal["application/json"] | None = None
    dataschema: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    subject: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    data: Payload | None = None
    # Standard for binary data in JSON; notifier takes it when it decodes to a JSON object.
    data_base64: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=2_000_000,
                description="Base64 of a JSON object (stored as the payload), instead of data",
            ),
        ]
        | None
    ) = None
    traceparent: TraceParent | None = None


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to store, whichever shape it arrived in."""

    type: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    occurred_at: datetime.datetime | None = None
    source: str | None = None
    external_id: str | None = None
    traceparent: str | None = None


def parse_publish_request(
    content_type: str, body: bytes, headers: Mapping[str, str] | None = None
) -> tuple[list[NewEvent], bool]:
    """The events in a publish request, and whether it was a batch. Raises a 400/415/422
    problem. ``headers`` (the request's, case-insensitive) carry a binary-mode CloudEvent."""
    try:
        media_type = content_type.partition(";")[0].strip().lower()
        binary = headers is not None and CE_HEADER_PREFIX + "specversion" in headers
        # The HTTP binding: a cloudevents media type means structured mode, headers or not.
        if binary and headers is not None and not media_type.startswith("application/cloudevents"):
            return [_parse_binary(headers, media_type, body)], False
        return _parse(content_type, body)
    except msgspec.DecodeError as exc:
        raise _malformed(str(exc)) from None
    except UnicodeDecodeError as exc:
        # msgspec checks a string's encoding only when it decodes the string itself, which
        # for an item is after the first pass has read the body as raw JSON values.
        raise _malformed(f"is not UTF-8: {exc.reason}") from None


def _parse(content_type: str, body: bytes) -> tuple[list[NewEvent], bool]:
    media_type = content_type.partition(";")[0].strip().lower()
    document = _decode(body)
    if isinstance(document, list):
        if media_type == CLOUDEVENTS_JSON:
            raise _problem(
                422,
                "Unprocessable Content",
                [_at("body", f"{CLOUDEVENTS_JSON} is one event, not an array")],
            )
        if not 1 <= len(document) <= MAX_BATCH_SIZE:
            raise _problem(
                422,
                "Unprocessable Content",
                [_at("body", f"a batch holds 1 to {MAX_BATCH_SIZE} events")],
            )
        events, problems = [], []
        for index, item in enumerate(document):
            try:
                events.append(_parse_one(item, cloudevent=media_type == CLOUDEVENTS_BATCH_JSON))
            except msgspec.ValidationError as exc:
                problems.append(msgspec_problem(exc, prefix=f"[{index}]"))
            except _DataBase64Problem as exc:
                problems.append(_at(f"[{index}].data_base64", str(exc)))
        if problems:
            raise _problem(422, "Unprocessable Content", problems)
        return events, True
    if media_type == CLOUDEVENTS_BATCH_JSON:
        raise _problem(
            422,
            "Unprocessable Content",
            [_at("body", f"{CLOUDEVENTS_BATCH_JSON} must be an array")],
        )
    try:
        return [_parse_one(document, cloudevent=media_type == CLOUDEVENTS_JSON)], False
    except msgspec.ValidationError as exc:
        raise _problem(422, "Unprocessable Content", [msgspec_problem(exc)]) from None
    except _DataBase64Problem as exc:
        raise _problem(422, "Unprocessable Content", [_at("data_base64", str(exc))]) from None


def _decode(body: bytes) -> msgspec.Raw | list[msgspec.Raw]:
    """The body as one JSON value or an array of them (DecodeError if it is not JSON)."""
    # msgspec cannot take "an object or an array" as one type: look before decoding.
    if body.lstrip().startswith(b"["):
        return msgspec.json.decode(body, type=list[msgspec.Raw])
    return msgspec.json.decode(body, type=msgspec.Raw)


CE_HEADER_PREFIX = "ce-"
# The attributes a binary-mode event may carry in headers (the others are extensions, which
# are ignored as in structured mode). ``traceparent`` is the plain W3C header in this mode.
_BINARY_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "dataschema", "subject")


def _parse_binary(headers: Mapping[str, str], media_type: str, body: bytes) -> NewEvent:
    """A CloudEvent in binary mode: attributes from ``ce-*`` headers, data from the body."""
    if media_type != "application/json":
        raise _problem(
            415,
            "Unsupported Media Type",
            [_at("content-type", "a binary-mode CloudEvent's data must be application/json")],
        )
    attributes: dict[str, Any] = {}
    for name in _BINARY_ATTRIBUTES:
        value = headers.get(CE_HEADER_PREFIX + name)
        if value is not None:
            # The binding percent-encodes what a header cannot carry as it is.
            attributes[name] = unquote(value, errors="strict")
    if (traceparent := headers.get("traceparent")) is not None:
        attributes["traceparent"] = traceparent
    try:
        event = msgspec.convert(attributes, type=CloudEvent, strict=False)
    except msgspec.ValidationError as exc:
        problem = msgspec_problem(exc)
        # Name the header the client set, not a field of a document it never sent.
        field = problem.field.removeprefix("$.").removeprefix("body.").removeprefix("body")
        raise _problem(
            422,
            "Unprocessable Content",
            [_at(f"{CE_HEADER_PREFIX}{field.lstrip('.') or 'specversion'}", problem.message)],
        ) from None
    data: Payload = {}
    if body.strip():
        try:
            data = msgspec.json.decode(body, type=Payload)
        except msgspec.ValidationError:
            raise _problem(
                422,
                "Unprocessable Content",
                [_at("body", "a binary-mode CloudEvent's data must be a JSON object")],
            ) from None
    return _new_event(event, data)


class _DataBase64Problem(Exception):
    """``data_base64`` holds nothing notifier can store; the caller names the item."""


def _cloudevent_data(event: CloudEvent) -> Payload:
    """The event's data as the JSON object notifier stores."""
    if event.data_base64 is None:
        return event.data if event.data is not None else {}
    if event.data is not None:
        raise _DataBase64Problem("a CloudEvent carries data or data_base64, not both")
    try:
        decoded = base64.b64decode(event.data_base64, validate=True)
        return msgspec.json.decode(decoded, type=Payload)
    # ValueError: binascii.Error, UnicodeDecodeError, and b64decode's refusal of non-ASCII.
    except (ValueError, msgspec.DecodeError):
        raise _DataBase64Problem(
            "must be base64 of a JSON object (notifier stores data as JSON); "
            "send JSON data in `data`"
        ) from None


def _new_event(event: CloudEvent, data: Payload) -> NewEvent:
    return NewEvent(
        type=event.type,
        payload=data,
        occurred_at=event.time,
        source=event.source,
        external_id=event.id,
        traceparent=event.traceparent,
    )


def _parse_one(raw: msgspec.Raw, *, cloudevent: bool) -> NewEvent:
    # A CloudEvent says so with its top-level `specversion`; anything else is the plain shape.
    if cloudevent or "specversion" in msgspec.json.decode(raw, type=dict[str, msgspec.Raw]):
        event = msgspec.json.decode(raw, type=CloudEvent)
        return _new_event(event, _cloudevent_data(event))
    plain = msgspec.json.decode(raw, type=EventCreate)
    return NewEvent(type=plain.type, payload=plain.payload, occurred_at=plain.occurred_at)


def _malformed(message: str) -> ProblemError:
    return _problem(400, "Malformed request", [_at("body", message)])


def _at(field: str, message: str) -> FieldProblem:
    return FieldProblem(field=field, message=message)


def _problem(status: int, title: str, problems: list[FieldProblem]) -> ProblemError:
    detail = "; ".join(f"{p.field}: {p.message}" for p in problems)
    return ProblemError(status, title, detail, errors=problems)
