"""Properties of the recipient syntax checks: email addresses and E.164 phone numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.api_types import query_instant
from notifier.errors import ProblemError
from notifier.recipients import (
    e164_phone,
    email_address_problem,
    load_checks,
    phone_number_problem,
)
from tests.support import outcome

# Loaded before the examples run: a first example that imported them could overrun
# Hypothesis's deadline on a loaded machine.
load_checks()


def is_e164(text: str) -> bool:
    """E.164 spelled out without a regular expression."""
    digits = text[1:]
    return (
        text.startswith("+")
        and 2 <= len(digits) <= 15
        and all(char in "0123456789" for char in digits)
        and digits[0] != "0"
    )


@given(
    st.text(max_size=20) | st.from_regex(r"\+[0-9]{1,16}", fullmatch=True),
    st.sampled_from([None, "IN", "US", "GB"]),
)
def test_phone_numbers_resolve_to_e164_or_to_a_problem(text: str, region: str | None) -> None:
    resolved = e164_phone(text, region)

    assert (phone_number_problem(text, region) is None) == (resolved is not None)
    assert resolved is None or is_e164(resolved)
    if is_e164(text):
        assert resolved == text  # what is already E.164 is kept as given


@pytest.mark.parametrize(
    ("text", "region", "resolved"),
    [
        pytest.param("9999912345", "IN", "+919999912345", id="national-in-region"),
        pytest.param("9999912345", None, None, id="national-without-region"),
        pytest.param("9999912345", "US", None, id="national-not-of-region"),
        pytest.param("+91 99999-12345", None, "+919999912345", id="spelt-with-country-code"),
        pytest.param("(415) 555-0123", "US", "+14155550123", id="national-spelt-with-punctuation"),
        pytest.param("12", "US", None, id="too-short"),
        pytest.param("020 7946 0958", "GB", "+442079460958", id="national-with-trunk-prefix"),
    ],
)
def test_phone_numbers_resolve_as_their_numbering_plan_says(
    text: str, region: str | None, resolved: str | None
) -> None:
    assert e164_phone(text, region) == resolved


def test_the_phone_problem_message_says_how_to_fix_it_without_a_pattern() -> None:
    problem = phone_number_problem("9999912345")

    assert problem is not None
    assert "NOTIFIER_DEFAULT_PHONE_REGION" in problem
    assert "+14155550123" in problem
    assert "\\" not in problem
    assert "[0-9]" not in problem


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
