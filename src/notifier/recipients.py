"""Recipient syntax: email addresses and E.164 phone numbers.

The seed API's ``email`` and ``phone`` fields are checked with these, and so are the
recipients of any channel that delivers to an address or a number. Checks are syntax only:
no DNS, no lookups, so they are fast and give the same answer every time.
"""

from __future__ import annotations

import re

import email_validator

# E.164: "+", a country code not starting with 0, at most 15 digits in all. ASCII digits
# only (``\d`` would take any script's digits) and the whole string (``$`` allows a "\n").
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
_E164 = re.compile(E164_PATTERN.removeprefix("^").removesuffix("$"))


def email_address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable email address (``ada@example.com``), or None."""
    try:
        email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        return f"is not a valid email address: {exc}"
    return None


def phone_number_problem(number: str) -> str | None:
    """Why ``number`` is not an E.164 phone number (``+14155550123``), or None."""
    if _E164.fullmatch(number):
        return None
    return "must be an E.164 phone number: '+', country code and number, at most 15 digits"
