"""Names of procrastinate's tables, types and channels, for statements written elsewhere.

notifier's own code asks :mod:`notifier.queue.jobs` instead; these are for the few
statements that must name them outside the adapter: the bench's loaders (which write what
procrastinate's triggers would, much faster) and its housekeeping (truncate, vacuum, sizes,
counts). On a procrastinate upgrade, every use of a name here is to be checked too.
"""

from __future__ import annotations

from typing import Final

JOBS: Final = "procrastinate_jobs"
JOB_EVENTS: Final = "procrastinate_events"
WORKERS: Final = "procrastinate_workers"
# The type of procrastinate_events.type.
JOB_EVENT_TYPE: Final = "procrastinate_job_event_type"
# What procrastinate's insert trigger notifies for a job due now: every listening worker,
# and the workers of the job's queue.
ANY_QUEUE_CHANNEL: Final = "procrastinate_any_queue_v1"


def queue_channel(queue: str) -> str:
    """The channel procrastinate notifies for a job due now in ``queue``."""
    return f"procrastinate_queue_v1#{queue}"
