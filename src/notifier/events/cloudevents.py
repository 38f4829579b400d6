"""Reading a publish request: the plain shape, CloudEvents 1.0 structured JSON, or a batch.

``POST /api/v1/events/`` takes
- ``application/json``: ``{"type", "payload"}``, or a CloudEvent (it has ``specversion``), or a
  JSON array of either;
- ``application/cloudevents+json``: one CloudEvent;
- ``application/cloudevents-batch+json``: a JSON array of CloudEvents.

A batch is all-or-nothing: one invalid item rejects the request, naming every item at fault.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

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
    data: Payload = msgspec.field(default_factory=dict)
    traceparent: TraceParent | None = None


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to store, whichever shape it arrived in."""

    type: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    occurred_at: datetime.datetime | None = None
    source: str | None = None
    external_id: str | None = None
    traceparent: str | None = None


def parse_publish_request(content_type: str, body: bytes) -> tuple[list[NewEvent], bool]:
    """The events in a publish request, and whether it was a batch. Raises a 400/422 problem."""
    try:
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


def _decode(body: bytes) -> msgspec.Raw | list[msgspec.Raw]:
    """The body as one JSON value or an array of them (DecodeError if it is not JSON)."""
    # msgspec cannot take "an object or an array" as one type: look before decoding.
    if body.lstrip().startswith(b"["):
        return msgspec.json.decode(body, type=list[msgspec.Raw])
    return msgspec.json.decode(body, type=msgspec.Raw)


def _parse_one(raw: msgspec.Raw, *, cloudevent: bool) -> NewEvent:
    # A CloudEvent says so with its top-level `specversion`; anything else is the plain shape.
    if cloudevent or "specversion" in msgspec.json.decode(raw, type=dict[str, msgspec.Raw]):
        event = msgspec.json.decode(raw, type=CloudEvent)
        return NewEvent(
            type=event.type,
            payload=event.data,
            occurred_at=event.time,
            source=event.source,
            external_id=event.id,
            traceparent=event.traceparent,
        )
    plain = msgspec.json.decode(raw, type=EventCreate)
    return NewEvent(type=plain.type, payload=plain.payload, occurred_at=plain.occurred_at)


def _malformed(message: str) -> ProblemError:
    return _problem(400, "Malformed request", [_at("body", message)])


def _at(field: str, message: str) -> FieldProblem:
    return FieldProblem(field=field, message=message)


def _problem(status: int, title: str, problems: list[FieldProblem]) -> ProblemError:
    detail = "; ".join(f"{p.field}: {p.message}" for p in problems)
    return ProblemError(status, title, detail, errors=problems)
