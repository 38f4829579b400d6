"""The queue adapter: the one package that knows procrastinate.

Every touch of procrastinate goes through here: its Python API (the app, the connector, the
retry policy, the job context), its tables (``procrastinate_jobs``, ``procrastinate_events``,
``procrastinate_workers``) and its SQL functions. No other module imports procrastinate or
names its tables and functions (``tests/queue/test_boundary.py`` checks), so that a
procrastinate upgrade is reviewed in this package (and in the migrations, which are history):

- ``jobs.py``: the SQL over procrastinate's tables and functions, as functions that take the
  caller's connection and never commit (defer, cancel, finish, reschedule, the due jobs a
  delivery batch locks, stalled jobs, pruning, statistics), and the fetch;
- ``app.py``: the procrastinate app built from plain task functions, and running a worker;
- ``connector.py``: the connector that fetches with ``notifier.fetch_job`` on the
  asynchronous-commit pool;
- ``retry.py``: the retry policy of every task;
- ``tables.py``: the names of procrastinate's tables and channels, for the few statements
  written outside the adapter (the bench's loaders and housekeeping).

This module names the queues and tasks (the SQL outbox trigger, the migrations and admins'
``procrastinate shell`` refer to the task names) and says what a task is told of its job.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

import msgspec
from procrastinate.exceptions import ConnectorException

EVENTS_QUEUE: Final = "events"
DELIVERIES_QUEUE: Final = "deliveries"
MAINTENANCE_QUEUE: Final = "maintenance"
ALL_QUEUES = (EVENTS_QUEUE, DELIVERIES_QUEUE, MAINTENANCE_QUEUE)

# Explicit task names: the SQL outbox trigger and admins' `procrastinate shell` refer to them.
PROCESS_EVENT_TASK: Final = "notifier.process_event"
DELIVER_TASK: Final = "notifier.deliver"
MAINTENANCE_TASK: Final = "notifier.maintenance"

# The queue each task's jobs go to, when registered and whenever deferred.
TASK_QUEUES: Final[dict[str, str]] = {
    PROCESS_EVENT_TASK: EVENTS_QUEUE,
    DELIVER_TASK: DELIVERIES_QUEUE,
    MAINTENANCE_TASK: MAINTENANCE_QUEUE,
}

# procrastinate wraps the database errors of the queries it runs itself (a worker's fetch,
# finish and heartbeat, its stalled-job and retry calls) in this; the database error is its
# ``__cause__``. The adapter's own SQL (``jobs.py``) raises psycopg's errors unwrapped.
QueueError = ConnectorException


class JobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a task is told of the job it runs (instead of procrastinate's ``JobContext``)."""

    id: int
    task_name: str
    queue: str
    priority: int
    # Runs of this job before this one (procrastinate counts a task's own retries too).
    attempts: int
    # The job's arguments, as the task receives them as keyword arguments.
    args: dict[str, Any]
    # When it was due, for a scheduled job (None: deferred to run at once).
    scheduled_at: datetime.datetime | None = None
