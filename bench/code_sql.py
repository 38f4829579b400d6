"""The SQL the benchmark runs, taken from notifier's code rather than copied from it.

- The fetch: workers run ``notifier.queue.NOTIFIER_FETCH_JOB_QUERY`` (notifier's fetch
  function) and procrastinate's own ``FETCH_JOB_QUERY`` is the lever's baseline; both are
  imported, and their plans, nested statements included, come from PostgreSQL's
  ``auto_explain`` in the measuring session.
- The publish: ``notifier.events.queries.publish_events`` writes its statement inline.
  TODO(queue SQL module): import the statement once the queue's SQL lives in one module;
  until then it is taken from a real call of ``publish_events`` (recorded on its way to
  the database, the transaction rolled back) and turned into a pgbench script.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, LiteralString

import psycopg
from psycopg.rows import DictRow, dict_row

from notifier.events.cloudevents import NewEvent
from notifier.events.queries import TenantEvent, publish_events
from notifier.queue import FETCH_JOB_QUERY, NOTIFIER_FETCH_JOB_QUERY
from notifier.tenancy import DEFAULT_TENANT

# What workers fetch jobs with, and procrastinate's own fetch, with their parameters.
FETCHES: dict[str, LiteralString] = {
    "notifier": NOTIFIER_FETCH_JOB_QUERY,
    "stock": FETCH_JOB_QUERY,
}
FETCH_PARAMETERS = {"queues": ["deliveries"], "worker_id": None}


class _Recording(psycopg.AsyncConnection[DictRow]):
    """A connection that keeps every statement executed on it, with its parameters."""

    statements: list[tuple[Any, Any]]

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self.statements.append((query, params))
        return await super().execute(query, params, **kwargs)


async def _publish_statement(url: str, event: NewEvent) -> tuple[str, dict[str, Any]]:
    async with await _Recording.connect(url, row_factory=dict_row) as conn:
        conn.statements = []
        async with conn.transaction(force_rollback=True):
            await publish_events(conn, [TenantEvent(DEFAULT_TENANT, event)])
    if len(conn.statements) != 1:
        raise RuntimeError(
            f"notifier.events.queries.publish_events ran {len(conn.statements)} statements"
            " for one new event; bench/code_sql.py expects one"
        )
    query, params = conn.statements[0]
    return str(query), dict(params)


def publish_script(url: str, event_type: str, payload: dict[str, Any]) -> str:
    """A pgbench script publishing one event per transaction with the statement
    ``publish_events`` runs: the same SQL, its parameters written in as literals, but the
    event's id drawn by PostgreSQL for each transaction (the only parameter that must vary).
    """
    query, params = asyncio.run(_publish_statement(url, NewEvent(type=event_type, payload=payload)))
    placeholder = "%(ids)s"
    if placeholder not in query or "ids" not in params:
        raise RuntimeError(
            "publish_events no longer passes the event ids as %(ids)s: update"
            " bench/code_sql.py publish_script"
        )
    query = query.replace(placeholder, "ARRAY[gen_random_uuid()]")
    del params["ids"]
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
