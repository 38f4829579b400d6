"""Recipient syntax: email addresses and phone numbers.

The seed API's ``email`` and ``phone`` fields are checked with these, and so are the
recipients of any channel that delivers to an address or a number. Checks are syntax and
numbering-plan only (``phonenumbers`` carries the plans): no DNS, no lookups, so they are
fast and give the same answer every time.

``email_validator`` and ``phonenumbers`` are imported by the checks that use them, on first
use: a worker delivering webhooks never needs them, and they were about a tenth of its
start-up imports (docs/performance.md, "Worker start-up"). The settings load
``phonenumbers`` only when NOTIFIER_DEFAULT_PHONE_REGION is set.
"""

from __future__ import annotations

import re

# E.164: "+", a country code not starting with 0, at most 15 digits in all. ASCII digits
# only (``\d`` would take any script's digits) and the whole string (``$`` allows a "\n").
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
_E164 = re.compile(E164_PATTERN.removeprefix("^").removesuffix("$"))
# phonenumbers gives up on longer input anyway; a bound on the work one request can ask for.
MAX_PHONE_LENGTH = 32


def load_checks() -> None:
    """Import what the checks use now rather than at their first use: for the API, which
    checks recipients in its requests, so that the first request does not wait for it."""
    import email_validator  # noqa: F401, PLC0415 - loaded here on purpose (module docstring)
    import phonenumbers  # noqa: F401, PLC0415


def email_address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable email address (``ada@example.com``), or None."""
    import email_validator  # noqa: PLC0415 - on first use (module docstring)

    try:
        email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        return f"is not a valid email address: {exc}"
    return None


def phone_region_problem(region: str) -> str | None:
    """Why ``region`` cannot be the region national phone numbers are read in, or None."""
    import phonenumbers  # noqa: PLC0415 - on first use (module docstring)

    if region not in phonenumbers.SUPPORTED_REGIONS:
        return f"{region!r} is not a region with a known numbering plan: give an ISO 3166 code such as IN, US or GB"
    return None


def e164_phone(number: str, default_region: str | None = None) -> str | None:
    """``number`` in E.164 form (``+919999912345``), or None if it is no phone number.

    A number already in E.164 form is kept as it is. Others are read with the numbering
    plans of ``phonenumbers``: with a country code in any common spelling
    (``+91 99999-12345``), or, given ``default_region``, as a national number of that
    region (``9999912345`` in ``IN``); either must be a valid number of its plan.
    """
    if _E164.fullmatch(number):
        return number
    if len(number) > MAX_PHONE_LENGTH:
        return None
    import phonenumbers  # noqa: PLC0415 - on first use (module docstring)

    try:
        parsed = phonenumbers.parse(number, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_number_problem(number: str, default_region: str | None = None) -> str | None:
    """Why ``number`` cannot be sent an SMS (see :func:`e164_phone`), saying how to fix it;
    or None."""
    if e164_phone(number, default_region) is not None:
        return None
    if default_region is None:
        return (
            "is not a phone number with a country code: give it in E.164 form, '+' then "
            "country code and number (+14155550123), or set NOTIFIER_DEFAULT_PHONE_REGION "
            "(e.g. IN) so that national numbers such as 9999912345 are read in that region"
        )
    return (
        f"is neither a valid phone number of region {default_region} "
        "(NOTIFIER_DEFAULT_PHONE_REGION) nor one with a country code: give it in E.164 "
        "form, '+' then country code and number (+14155550123)"
    )


def sms_recipient(number: str, default_region: str | None = None) -> str:
    """The E.164 number an SMS to ``number`` goes to; ValueError saying how to fix it if
    it is none (:func:`phone_number_problem`).

    The one resolution of SMS recipients: the REST API's (``recipient`` or ``phone``) and
    routing rules' (a payload field or the rule's own) both go through it.
    """
    resolved = e164_phone(number, default_region)
    if resolved is None:
        problem = phone_number_problem(number, default_region)
        raise ValueError(problem or "is not a phone number")
    return resolved
