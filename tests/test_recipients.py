"""Properties of the recipient syntax checks: email addresses and E.164 phone numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.api_types import query_instant
from notifier.errors import ProblemError
from notifier.recipients import email_address_problem, phone_number_problem
from tests.support import outcome


def is_e164(text: str) -> bool:
    """E.164 spelled out without a regular expression."""
    digits = text[1:]
    return (
        text.startswith("+")
        and 2 <= len(digits) <= 15
        and all(char in "0123456789" for char in digits)
        and digits[0] != "0"
    )


@given(st.text(max_size=20) | st.from_regex(r"\+[0-9]{1,16}", fullmatch=True))
def test_phone_numbers_are_accepted_exactly_when_they_are_e164(text: str) -> None:
    assert (phone_number_problem(text) is None) == is_e164(text)


@given(st.emails())
def test_generated_email_addresses_are_accepted(address: str) -> None:
    assert email_address_problem(address) is None


@given(st.text(max_size=80))
def test_any_text_gives_an_answer_about_an_email_address(text: str) -> None:
    problem = email_address_problem(text)
    if "@" not in text:
        assert problem is not None


@pytest.mark.parametrize(
    "address", ["ada", "@example.com", "ada@", "ada@@example.com", "ada@example.com\n", "a b@c.de"]
)
def test_malformed_email_addresses_are_refused(address: str) -> None:
    assert email_address_problem(address) is not None


@given(st.text(max_size=40))
def test_query_instants_are_zoned_datetimes_or_a_422_naming_the_parameter(text: str) -> None:
    result = outcome(lambda: query_instant("created_after", text))

    if isinstance(result, ProblemError):
        assert result.status == 422
        assert (result.errors[0].field, result.errors[0].source) == ("created_after", "query")
    else:
        assert result is not None
        assert result.utcoffset() is not None
