"""The SQL the benchmark runs, imported from notifier's code rather than copied from it.

- The fetch: workers run ``notifier.queue.jobs.FETCH_JOB_SQL`` (notifier's fetch function)
  and procrastinate's own ``PROCRASTINATE_FETCH_JOB_SQL`` is the lever's baseline; their
  plans, nested statements included, come from PostgreSQL's ``auto_explain`` in the
  measuring session.
- The publish: ``notifier.events.queries.PUBLISH_EVENTS_SQL`` (the queue adapter's defer
  embedded) with the parameters ``publish_parameters`` gives it, turned into a pgbench
  script.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, LiteralString

import psycopg

from notifier.events.cloudevents import NewEvent
from notifier.events.queries import PUBLISH_EVENTS_SQL, TenantEvent, publish_parameters
from notifier.queue.jobs import FETCH_JOB_SQL, PROCRASTINATE_FETCH_JOB_SQL
from notifier.tenancy import DEFAULT_TENANT

# What workers fetch jobs with, and procrastinate's own fetch, with their parameters.
FETCHES: dict[str, LiteralString] = {
    "notifier": FETCH_JOB_SQL,
    "stock": PROCRASTINATE_FETCH_JOB_SQL,
}
FETCH_PARAMETERS = {"queues": ["deliveries"], "worker_id": None}


def publish_script(url: str, event_type: str, payload: dict[str, Any]) -> str:
    """A pgbench script publishing one event per transaction with the statement a publish
    runs: the same SQL, its parameters written in as literals, but the event's id drawn by
    PostgreSQL for each transaction (the only parameter that must vary).
    """
    event = NewEvent(type=event_type, payload=payload)
    params = publish_parameters([uuid.uuid4()], [TenantEvent(DEFAULT_TENANT, event)])
    placeholder = "%(ids)b"
    if placeholder not in PUBLISH_EVENTS_SQL or "ids" not in params:
        raise RuntimeError(
            "PUBLISH_EVENTS_SQL no longer takes the event ids as %(ids)b: update"
            " bench/code_sql.py publish_script"
        )
    query = PUBLISH_EVENTS_SQL.replace(placeholder, "ARRAY[gen_random_uuid()]")
    del params["ids"]
    # The service sends its arrays in binary (%b); literals are text, written in the same places.
    for name in params:
        query = query.replace(f"%({name})b", f"%({name})s")
    with psycopg.connect(url) as conn:
        statement = psycopg.ClientCursor(conn).mogrify(query, params)
    return statement.strip() + ";\n"


def enable_auto_explain(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Have PostgreSQL send this session the plan of every statement it runs, nested ones
    (inside functions and triggers) included, with timings and buffers: the list they are
    appended to, as ``{"ms": duration, "plan": EXPLAIN JSON}``. Needs a superuser (LOAD)."""
    plans: list[dict[str, Any]] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        message = notice.message_primary or ""
        if message.startswith("duration:") and "plan:" in message:
            head, _, body = message.partition("plan:")
            plans.append({"ms": float(head.split()[1]), "plan": json.loads(body)})

    conn.add_notice_handler(keep)
    conn.execute("LOAD 'auto_explain'")
    for name, value in (
        ("log_min_duration", "0"),
        ("log_analyze", "on"),
        ("log_buffers", "on"),
        ("log_timing", "on"),
        ("log_nested_statements", "on"),
        ("log_format", "json"),
        ("log_level", "notice"),
    ):
        conn.execute(f"SET auto_explain.{name} = {value}".encode())
    return plans
