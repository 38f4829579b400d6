"""Properties of the publish request parser (plain events, CloudEvents, batches)."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.errors import ProblemError
from notifier.events.cloudevents import (
    CLOUDEVENTS_BATCH_JSON,
    CLOUDEVENTS_JSON,
    parse_publish_request,
)
from tests.support import outcome

CONTENT_TYPES = st.sampled_from(
    ["application/json", CLOUDEVENTS_JSON, CLOUDEVENTS_BATCH_JSON, "text/plain", ""]
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
EVENT_TYPES = st.text(
    st.characters(blacklist_categories=["Z", "C"]), min_size=1, max_size=200
).filter(lambda text: not any(char.isspace() for char in text))
PAYLOADS = st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=5)
INSTANTS = st.datetimes(
    min_value=datetime.datetime(1900, 1, 2),
    max_value=datetime.datetime(8999, 12, 30),
    timezones=st.sampled_from([datetime.UTC, datetime.timezone(datetime.timedelta(hours=-5))]),
)


@given(content_type=CONTENT_TYPES, body=st.binary(max_size=200))
def test_any_bytes_give_events_or_a_400_or_422_problem(content_type: str, body: bytes) -> None:
    result = outcome(lambda: parse_publish_request(content_type, body))

    if isinstance(result, ProblemError):
        assert result.status in {400, 422}
        assert result.errors, "a problem names the field at fault"


@given(content_type=CONTENT_TYPES, document=JSON_VALUES)
def test_any_json_gives_events_or_a_422_problem_naming_fields(
    content_type: str, document: Any
) -> None:
    result = outcome(lambda: parse_publish_request(content_type, msgspec.json.encode(document)))

    if isinstance(result, ProblemError):
        assert result.status == 422
        assert all(error.field for error in result.errors)
    else:
        events, is_batch = result
        assert is_batch == isinstance(document, list)
        assert len(events) == (len(document) if is_batch else 1)


@given(event_type=EVENT_TYPES, payload=PAYLOADS, occurred_at=st.none() | INSTANTS)
def test_a_plain_event_round_trips(
    event_type: str, payload: dict[str, Any], occurred_at: datetime.datetime | None
) -> None:
    body = msgspec.json.encode({"type": event_type, "payload": payload, "occurred_at": occurred_at})

    (event,), is_batch = parse_publish_request("application/json", body)

    assert not is_batch
    assert (event.type, event.payload, event.occurred_at) == (event_type, payload, occurred_at)
    assert event.source is None


@given(
    items=st.lists(
        st.tuples(EVENT_TYPES, st.text(min_size=1, max_size=255), PAYLOADS), min_size=1, max_size=5
    ),
    content_type=st.sampled_from(["application/json", CLOUDEVENTS_BATCH_JSON]),
)
def test_a_batch_of_cloudevents_round_trips_in_order(
    items: list[tuple[str, str, dict[str, Any]]], content_type: str
) -> None:
    batch = [
        {"specversion": "1.0", "id": ident, "source": "s", "type": kind, "data": data}
        for kind, ident, data in items
    ]

    events, is_batch = parse_publish_request(content_type, msgspec.json.encode(batch))

    assert is_batch
    assert [(e.type, e.external_id, e.payload, e.source) for e in events] == [
        (kind, ident, data, "s") for kind, ident, data in items
    ]


# Each is not UTF-8 (see tests/test_request_checks.py); the API refuses such bodies before
# parsing, and the parser refuses them too, wherever in the document they sit.
NOT_UTF8 = [b"\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\xe2\x82"]
MARK = "\N{SNOWMAN}"
DOCUMENTS = [
    ("application/json", {"type": MARK}),
    ("application/json", {"type": "t", "payload": {MARK: 1}}),
    ("application/json", {"type": "t", "payload": {"k": [{"n": MARK}]}}),
    (CLOUDEVENTS_JSON, {"specversion": "1.0", "id": "1", "source": MARK, "type": "t"}),
    ("application/json", {"specversion": "1.0", "id": MARK, "source": "s", "type": "t"}),
    ("application/json", [{"type": "t"}, {"type": "t", "payload": {"k": MARK}}]),
    (CLOUDEVENTS_BATCH_JSON, [{"specversion": "1.0", "id": "1", "source": "s", "type": MARK}]),
]


@pytest.mark.parametrize("bad", NOT_UTF8)
@pytest.mark.parametrize(("content_type", "document"), DOCUMENTS)
def test_a_string_that_is_not_utf8_anywhere_is_a_400_naming_the_body(
    content_type: str, document: Any, bad: bytes
) -> None:
    """msgspec raised UnicodeDecodeError past the parser for these (a 500)."""
    body = msgspec.json.encode(document).replace(MARK.encode(), bad)

    result = outcome(lambda: parse_publish_request(content_type, body))

    assert isinstance(result, ProblemError)
    assert (result.status, [error.field for error in result.errors]) == (400, ["body"])
    assert "UTF-8" in result.errors[0].message
