"""Keyset pagination over ``(created_at, id)``, newest first, with opaque cursors."""

from __future__ import annotations

import base64
import binascii
import datetime
import uuid
from typing import Annotated, Generic, NamedTuple, Protocol, TypeVar
from urllib.parse import urlencode

import msgspec

from notifier.errors import field_error

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Cursor(msgspec.Struct, array_like=True, frozen=True):
    """The position after the last row of a page."""

    created_at: Annotated[datetime.datetime, msgspec.Meta(tz=True)]
    id: uuid.UUID

    def encode(self) -> str:
        """Opaque, URL-safe form for the ``cursor`` query parameter."""
        return base64.urlsafe_b64encode(msgspec.json.encode(self)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse a cursor from a client; a 400 problem if it was not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return msgspec.json.decode(raw, type=cls)
        except (binascii.Error, ValueError, msgspec.DecodeError):
            raise field_error(
                "cursor", "is not a cursor returned by this API", status=400, source="query"
            ) from None


def next_link(path: str, query: dict[str, str], cursor: Cursor | None) -> dict[str, str]:
    """A ``Link: <...>; rel="next"`` header for the following page, if there is one."""
    if cursor is None:
        return {}
    encoded = urlencode({**query, "cursor": cursor.encode()})
    return {"Link": f'<{path}?{encoded}>; rel="next"', "X-Next-Cursor": cursor.encode()}


class Keyed(Protocol):
    """A row that pages are cut from."""

    @property
    def created_at(self) -> datetime.datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


RowT = TypeVar("RowT", bound=Keyed)
# Ours are about 80 characters; anything much longer cannot be one.
MAX_CURSOR_LENGTH = 200


class Page(NamedTuple, Generic[RowT]):
    """One page of a list use case: its rows, and the cursor of the next page if any."""

    items: list[RowT]
    following: Cursor | None


def paginate(rows: list[RowT], limit: int) -> Page[RowT]:
    """Split ``limit + 1`` fetched rows into the page and the cursor after it, if more exist."""
    page = rows[:limit]
    return Page(page, Cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None)
