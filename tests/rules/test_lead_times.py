"""Properties of the ISO 8601 lead times of routing rules."""

from __future__ import annotations

import datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.errors import ProblemError
from notifier.rules.service import MAX_LEAD_TIME, parse_lead_times
from tests.support import outcome

LEAD_TIMES = st.timedeltas(min_value=datetime.timedelta(0), max_value=MAX_LEAD_TIME)


@given(LEAD_TIMES)
def test_every_lead_time_in_range_round_trips_through_its_iso_form(
    lead: datetime.timedelta,
) -> None:
    iso = msgspec.json.decode(msgspec.json.encode(lead))  # "P7DT1H..."

    assert parse_lead_times([iso]) == [lead]


@given(st.lists(st.text(max_size=40), min_size=1, max_size=5))
def test_any_text_gives_lead_times_in_range_or_a_422_naming_the_item(texts: list[str]) -> None:
    result = outcome(lambda: parse_lead_times(texts))

    if isinstance(result, ProblemError):
        assert result.status == 422
        (error,) = result.errors
        assert error.field.startswith("lead_times[")
    else:
        assert all(datetime.timedelta(0) <= lead <= MAX_LEAD_TIME for lead in result)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("P3651D", "must not exceed P3650D (ten years)"),
        ("-P1D", "must not be negative"),
        ("P1Y", "is not an ISO 8601 duration"),
    ],
)
def test_lead_times_out_of_range_or_unsupported_are_refused(text: str, message: str) -> None:
    with pytest.raises(ProblemError) as caught:
        parse_lead_times(["P1D", text])

    assert caught.value.errors[0].field == "lead_times[1]"
    assert caught.value.errors[0].message.startswith(message)
