"""Annotated types shared by the request and response structs, and the checks that msgspec
constraints cannot express. Pure: no web framework (the HTTP parameters are in
:mod:`notifier.http.params`)."""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import msgspec

from notifier.channels.base import Channel
from notifier.errors import field_error, msgspec_problem
from notifier.instants import EARLIEST_INSTANT, LATEST_INSTANT, storable
from notifier.notifications.localtime import QuietHours, check_quiet_hours, zone_named
from notifier.patterns import NO_WHITESPACE, whole

# Timestamps must say which instant they mean: naive ones are rejected at the boundary.
AwareDatetime = Annotated[datetime.datetime, msgspec.Meta(tz=True)]
EventType = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, pattern=whole(f"{NO_WHITESPACE}+"))
]
Payload = dict[str, Any]
# The examples name the built-in channels: the fuzz tests start from them and so get past
# the channel check to the code behind it.
ChannelName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, examples=["log", "webhook"])]
Recipient = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2048,
        description="Where the channel delivers: an https:// URL for webhook, any text for log",
        examples=["https://hooks.example.com/notifier", "ops-team"],
    ),
]
# Query filters compare with stored values no longer than this.
MAX_FILTER_LENGTH = 200


T = TypeVar("T")


def decode_strictly(body: bytes, type_: type[T]) -> T:
    """``body`` decoded as ``type_`` the strict way, or a 422 naming the field at fault.

    Litestar's own decoding is lenient (``strict=False``): it reads the number ``0`` as a
    time (the Unix epoch) and ``"7"`` as an integer, which the OpenAPI document does not
    allow. The API decodes request bodies with this instead, once
    (:class:`notifier.http.body.StrictBody`). A body that is not JSON at all raises
    ``msgspec.DecodeError``.

    One thing strict msgspec refuses is valid all the same: ``7.0`` where the document says
    ``integer``. JSON Schema has one kind of number, and 7.0 is an integer there (and what
    some encoders write for 7); such bodies are decoded again, those numbers read as ints.
    """
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError:
        pass  # rare: decoded again, whole numbers where ints are expected read as ints
    document = _whole_numbers_as_ints(msgspec.json.decode(body), msgspec.inspect.type_info(type_))
    try:
        return msgspec.convert(document, type_)
    except msgspec.ValidationError as exc:
        problem = msgspec_problem(exc)
        raise field_error(problem.field, problem.message) from None


def _whole_numbers_as_ints(value: Any, expected: msgspec.inspect.Type) -> Any:
    """``value`` with every whole float where ``expected`` wants an int made that int."""
    inspect = msgspec.inspect
    if isinstance(expected, inspect.Metadata):
        expected = expected.type
    if isinstance(value, float):
        members = expected.types if isinstance(expected, inspect.UnionType) else (expected,)
        wants_int = any(isinstance(t, inspect.IntType) for t in members) and not any(
            isinstance(t, inspect.FloatType) for t in members
        )
        return int(value) if wants_int and value.is_integer() else value
    if isinstance(expected, inspect.UnionType):
        # A union holds at most one kind of object and one kind of array (msgspec's rule).
        for member in expected.types:
            if isinstance(value, dict) and isinstance(
                member, inspect.StructType | inspect.DictType
            ):
                return _whole_numbers_as_ints(value, member)
            if isinstance(value, list) and isinstance(member, inspect.ListType):
                return _whole_numbers_as_ints(value, member)
        return value
    if isinstance(value, dict) and isinstance(expected, inspect.StructType):
        fields = {field.encode_name: field.type for field in expected.fields}
        return {
            key: _whole_numbers_as_ints(item, fields[key]) if key in fields else item
            for key, item in value.items()
        }
    if isinstance(value, dict) and isinstance(expected, inspect.DictType):
        return {
            key: _whole_numbers_as_ints(item, expected.value_type) for key, item in value.items()
        }
    if isinstance(value, list) and isinstance(expected, inspect.ListType):
        return [_whole_numbers_as_ints(item, expected.item_type) for item in value]
    return value


def checked_instant(field: str, value: datetime.datetime) -> datetime.datetime:
    """``value`` in UTC; a 422 naming ``field`` unless it lies in the range the service can
    store.

    RFC 3339 allows offsets up to 23:59, PostgreSQL reads at most 15:59 in text (how psycopg
    sends the arrays of a batch insert): "+23:31" was refused by the database, a 422 naming
    nothing. The instant is the same in UTC.
    """
    if not storable(value):
        raise field_error(
            field,
            f"must be between {EARLIEST_INSTANT.isoformat()} and {LATEST_INSTANT.isoformat()}",
        )
    return value.astimezone(datetime.UTC)


def query_instant(field: str, text: str | None) -> datetime.datetime | None:
    """``text`` as an RFC 3339 instant with a zone; a 422 naming the query ``field`` if not."""
    if text is None:
        return None
    try:
        return msgspec.convert(text, AwareDatetime)
    except msgspec.ValidationError as exc:
        raise field_error(
            field,
            f"{exc}: give an RFC 3339 time with a zone, e.g. 2026-01-31T09:00:00Z",
            source="query",
        ) from None


# Encoded JSON of one event payload or notification data. Each notification copies it, so
# a rule fanning out multiplies it. 64 KiB is what CloudEvents intermediaries must carry.
MAX_PAYLOAD_BYTES = 64 * 1024


def check_payload_size(field: str, payload: Payload) -> None:
    """A 422 naming ``field`` if ``payload`` encodes to more than :data:`MAX_PAYLOAD_BYTES`."""
    size = len(msgspec.json.encode(payload))
    if size > MAX_PAYLOAD_BYTES:
        raise field_error(field, f"must be at most {MAX_PAYLOAD_BYTES} bytes as JSON, is {size}")


def check_storable(data: msgspec.Struct | dict[str, Any], *, source: str = "body") -> None:
    """A 422 naming the first value in ``data`` that PostgreSQL could not store or the API
    could not read back: a string or key holding NUL (text and jsonb refuse it), or JSON
    nested deeper than :data:`MAX_JSON_DEPTH`."""
    value = msgspec.to_builtins(data)
    if _surely_storable(value):
        return
    problem = _unstorable(value)
    if problem is not None:
        path, message = problem
        raise field_error(path or "body", message, source=source)


# Real payloads are a few levels deep; a bound keeps every later read and encode of them
# well inside Python's recursion limit.
MAX_JSON_DEPTH = 64
_NUL = "\x00"


def _surely_storable(value: Any) -> bool:
    """True when one JSON encoding of ``value`` shows it storable; False: look closer.

    Walking the value in Python cost more than the rest of a publish's validation. Its
    encoding escapes every NUL as ``\\u0000`` (so a string merely holding that text only
    sends the value to the exact walk), and nesting past the limit takes more brackets than
    the limit. Nearly every value passes here.
    """
    encoded = msgspec.json.encode(value)
    return b"\\u0000" not in encoded and (
        encoded.count(b"[") + encoded.count(b"{") <= MAX_JSON_DEPTH
    )


def _unstorable(value: Any) -> tuple[str, str] | None:
    """(path, problem) of the first unstorable value, depth first, in document order."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return path, f"must not nest deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str) and _NUL in item:
            return path, "must not contain the NUL character (\\u0000)"
        if isinstance(item, dict):
            if any(_NUL in key for key in item):
                return path, "must not have a key containing the NUL character (\\u0000)"
            children = [(v, f"{path}.{k}" if path else k) for k, v in item.items()]
        elif isinstance(item, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(item)]
        else:
            continue
        stack.extend((child, child_path, depth + 1) for child, child_path in reversed(children))
    return None


def checked_channel(channels: Mapping[str, Channel], name: str, recipient: str | None) -> Channel:
    """The configured channel ``name``; a 422 naming ``channel`` or ``recipient`` if it is
    unknown or could never deliver to ``recipient``."""
    channel = channels.get(name)
    if channel is None:
        raise field_error("channel", f"unknown channel {name!r}; have {sorted(channels)}")
    if recipient is not None and (problem := channel.validate_recipient(recipient)):
        raise field_error("recipient", problem)
    return channel


def checked_local_time(
    timezone: str | None, quiet_hours: QuietHours | None
) -> zoneinfo.ZoneInfo | None:
    """The recipient's zone; a 422 naming ``timezone`` or ``quiet_hours`` if either is unusable."""
    zone = None
    if timezone is not None:
        try:
            zone = zone_named(timezone)
        except ValueError as exc:
            raise field_error("timezone", str(exc)) from None
    if quiet_hours is not None:
        try:
            check_quiet_hours(quiet_hours)
        except ValueError as exc:
            raise field_error("quiet_hours", str(exc)) from None
    return zone
