"""The rate-limit resource at the API boundary."""

from __future__ import annotations

import datetime
import enum
from typing import Annotated

import msgspec

from notifier.rate_limits.gcra import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND


class LimitSource(enum.StrEnum):
    """Where a channel's effective limit comes from."""

    TENANT = "tenant"  # this tenant's override
    DEFAULT = "default"  # NOTIFIER_RATE_LIMIT_<CHANNEL>_PER_SECOND
    NONE = "none"  # unlimited


class RateLimitSet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PUT /api/v1/rate-limits/{channel}``: this tenant's own limit for one channel."""

    per_second: Annotated[float, msgspec.Meta(ge=MIN_PER_SECOND, le=MAX_PER_SECOND)]
    burst: Annotated[int, msgspec.Meta(ge=1, le=MAX_BURST)] = 1


class RateLimit(msgspec.Struct, kw_only=True):
    """The limit in force for one channel of the calling tenant."""

    channel: str
    per_second: float | None
    burst: int | None
    source: LimitSource
    updated_at: datetime.datetime | None = None
