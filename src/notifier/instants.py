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
