"""The pure decisions of endpoint delivery and signing, without a database."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from notifier.channels.webhook import decode_secret
from notifier.endpoints.delivery import Verdict, decide
from notifier.endpoints.schemas import type_matches
from notifier.endpoints.signing import overlap_problem, rotated, signing_keys
from notifier.secret_box import SecretBox, new_signing_secret
from notifier.settings import Settings, SettingsError
from tests.support import SECRETS_KEYS

NOW = datetime.datetime(2026, 12, 7, 12, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("patterns", "notification_type", "matches"),
    [
        (None, "anything", True),
        (["*"], "user.signup", True),
        (["user.signup"], "user.signup", True),
        (["user.signup"], "user.signups", False),
        (["billing.*"], "billing.paid", True),
        (["billing.*"], "billing", False),
        (["billing.*"], "billingx.paid", False),
        (["a", "billing.*"], "billing.x.y", True),
    ],
    ids=[
        "no-filter",
        "star",
        "exact",
        "exact-prefix",
        "pattern",
        "bare-prefix",
        "no-dot",
        "any-of",
    ],
)
def test_type_filters(patterns: list[str] | None, notification_type: str, matches: bool) -> None:
    assert type_matches(patterns, notification_type) is matches


def endpoint(**changes: Any) -> dict[str, Any]:
    return {"deleted_at": None, "type_filter": None, "enabled": True} | changes


def test_decide() -> None:
    assert decide(endpoint(), "x").verdict is Verdict.SEND
    assert decide(endpoint(enabled=False), "x").verdict is Verdict.HOLD
    assert decide(endpoint(type_filter=["y"]), "x").verdict is Verdict.REFUSE
    # A filtered-out type fails even while disabled: waiting would not change it.
    assert decide(endpoint(type_filter=["y"], enabled=False), "x").verdict is Verdict.REFUSE
    assert decide(endpoint(deleted_at=NOW), "x").verdict is Verdict.REFUSE
    assert decide(None, "x").verdict is Verdict.REFUSE


def test_signing_keys_follow_the_overlap() -> None:
    box = SecretBox.from_settings(Settings(secrets_keys=SECRETS_KEYS))
    first = new_signing_secret()
    row = {"secret": box.encrypt(first), "previous_secret": None, "previous_expires_at": None}
    assert signing_keys(box, row, NOW) == (decode_secret(first),)

    second, columns = rotated(box, row, datetime.timedelta(hours=1), NOW)
    assert signing_keys(box, columns, NOW) == (decode_secret(second), decode_secret(first))
    later = NOW + datetime.timedelta(hours=1)
    assert signing_keys(box, columns, later) == (decode_secret(second),)

    _, no_overlap = rotated(box, row, datetime.timedelta(0), NOW)
    assert no_overlap["previous_secret"] is None
    assert len(signing_keys(box, no_overlap, NOW)) == 1


def test_overlap_bounds() -> None:
    assert overlap_problem(datetime.timedelta(days=7)) is None
    assert overlap_problem(datetime.timedelta(days=7, seconds=1)) == "must be at most P7D (a week)"
    assert overlap_problem(datetime.timedelta(seconds=-1)) == "must not be negative"


def test_a_webhook_secret_that_is_no_secret_is_refused_when_read() -> None:
    with pytest.raises(SettingsError, match="NOTIFIER_WEBHOOK_SECRET"):
        Settings(webhook_secret="whsec_not base64!")
    assert Settings(webhook_secret="whsec_c2VjcmV0").webhook_secret == "whsec_c2VjcmV0"
