"""Annotated types shared by the API's request and response structs."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import msgspec

# Timestamps must say which instant they mean: naive ones are rejected at the boundary.
AwareDatetime = Annotated[datetime.datetime, msgspec.Meta(tz=True)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^\S+$")]
Payload = dict[str, Any]
