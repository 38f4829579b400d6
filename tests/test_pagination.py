"""Properties of the opaque pagination cursors: ours round-trip, anything else is a 400."""

from __future__ import annotations

import base64
import datetime
import uuid

from hypothesis import given
from hypothesis import strategies as st

from notifier.errors import ProblemError
from notifier.pagination import Cursor
from tests.support import outcome

INSTANTS = st.datetimes(
    min_value=datetime.datetime(1900, 1, 1),
    max_value=datetime.datetime(9000, 1, 1),
    timezones=st.just(datetime.UTC),
)


@given(created_at=INSTANTS, row_id=st.uuids())
def test_a_cursor_round_trips(created_at: datetime.datetime, row_id: uuid.UUID) -> None:
    cursor = Cursor(created_at, row_id)

    assert Cursor.decode(cursor.encode()) == cursor
    assert cursor.encode().isascii()


@given(st.text(max_size=300) | st.binary(max_size=200).map(lambda raw: raw.hex()))
def test_any_other_text_is_a_cursor_or_a_400_naming_it(text: str) -> None:
    result = outcome(lambda: Cursor.decode(text))

    if isinstance(result, ProblemError):
        assert result.status == 400
        assert [error.field for error in result.errors] == ["cursor"]
    else:
        assert result.created_at.tzinfo is not None


@given(st.binary(max_size=100))
def test_base64_of_arbitrary_bytes_is_a_400_unless_it_is_a_cursor(raw: bytes) -> None:
    text = base64.urlsafe_b64encode(raw).decode().rstrip("=")

    result = outcome(lambda: Cursor.decode(text))

    assert isinstance(result, Cursor) or result.status == 400
