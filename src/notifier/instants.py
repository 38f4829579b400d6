"""The instants notifier can store: one range for the API's timestamps and events' dates."""

from __future__ import annotations

import datetime

# Instants both PostgreSQL and Python represent in any time zone, with lead times of up to
# ten years subtracted. Outside it, a stored value could not be read back, and processing
# an event whose date lies there would crash and be retried forever instead of storing a
# visible failed notification.
EARLIEST_INSTANT = datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC)
LATEST_INSTANT = datetime.datetime(9000, 1, 1, tzinfo=datetime.UTC)


def storable(value: datetime.datetime) -> bool:
    """Whether the aware ``value`` lies in the range notifier can store."""
    return EARLIEST_INSTANT <= value < LATEST_INSTANT


def nearest_storable(value: datetime.datetime) -> datetime.datetime:
    """The instant of the storable range nearest to the aware ``value``, in UTC.

    Every stored time lies in the range, so a filter's bound outside it selects the same
    rows as the range's own edge; and the edge, unlike ``value`` (year 1 at +09:00, or an
    offset over 15:59), is a time both Python's UTC and PostgreSQL can take.
    """
    return min(max(value, EARLIEST_INSTANT), LATEST_INSTANT).astimezone(datetime.UTC)
