"""The Celery + Redis baseline: the same delivery work as notifier's deliver task, on Celery.

Per notification: lock and read its row in PostgreSQL, POST it to the receiver, mark it
sent, commit. Broker: the Redis at ``BENCH_REDIS_URL`` (default 127.0.0.1:6379, db 15).

    celery -A bench.celery_app worker -c N
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import psycopg
from celery import Celery
from psycopg.rows import dict_row

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_default_queue="bench_deliveries",
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_connection: psycopg.Connection[dict[str, Any]] | None = None
_client: httpx.Client | None = None


def connection() -> psycopg.Connection[dict[str, Any]]:
    """One connection per worker process, opened on first use (after the fork)."""
    global _connection  # noqa: PLW0603
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(os.environ["BENCH_DATABASE_URL"], row_factory=dict_row)
    return _connection


def client() -> httpx.Client:
    global _client  # noqa: PLW0603
    if _client is None:
        _client = httpx.Client(timeout=10.0)
    return _client


@app.task(name="bench.deliver")
def deliver(notification_id: str) -> None:
    conn = connection()
    with conn.transaction():
        row = conn.execute(
            "SELECT * FROM notifier.notifications WHERE id = %s FOR UPDATE", [notification_id]
        ).fetchone()
        if row is None or row["status"] != "pending":
            return
        body = json.dumps(
            {"type": row["notification_type"], "data": {"notification_id": notification_id}}
        )
        response = client().post(
            row["recipient"],
            content=body,
            headers={"content-type": "application/json", "x-notification-id": notification_id},
        )
        response.raise_for_status()
        conn.execute(
            "UPDATE notifier.notifications SET status = 'sent', sent_at = now(), "
            "attempts = attempts + 1, updated_at = now() WHERE id = %s",
            [notification_id],
        )
