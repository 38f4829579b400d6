"""The one rule for which limit a tenant's channel is under, without a database."""

from __future__ import annotations

from notifier.rate_limits.gcra import Limit
from notifier.rate_limits.limiter import LimitInForce, limit_in_force
from notifier.rate_limits.schemas import LimitSource
from notifier.settings import Settings


def test_the_tenants_own_limit_comes_first() -> None:
    settings = Settings(rate_limit_webhook_per_second=5.0)

    assert limit_in_force(settings, "webhook", Limit(2.0, 3)) == LimitInForce(
        Limit(2.0, 3), LimitSource.TENANT
    )


def test_else_the_channels_default_with_the_default_burst() -> None:
    settings = Settings(rate_limit_email_per_second=5.0, rate_limit_burst=4)

    assert limit_in_force(settings, "email", None) == LimitInForce(
        Limit(5.0, 4), LimitSource.DEFAULT
    )


def test_else_none_and_a_zero_rate_means_none() -> None:
    settings = Settings(rate_limit_sms_per_second=0.0)

    assert limit_in_force(settings, "sms", None) == LimitInForce(None, LimitSource.NONE)
    assert limit_in_force(settings, "log", None) == LimitInForce(None, LimitSource.NONE)
