"""SQL for endpoints, their secrets, health and attempt log, and tenants' signing secrets.

Functions take a connection and never commit. Secrets go in and come out as the Fernet
tokens stored; encrypting and decrypting is the caller's (notifier.secret_box).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from notifier.db import Connection

# A recover makes at most this many notifications pending again in its one transaction.
MAX_RECOVERED = 10_000


async def insert_endpoint(conn: Connection, values: dict[str, Any]) -> dict[str, Any]:
    """Store a new endpoint (``values`` holds every column but the timestamps)."""
    cursor = await conn.execute(
        """
        INSERT INTO notifier.endpoints
            (tenant_id, url, description, type_filter, headers, rate_per_second, rate_burst,
             enabled, disabled_reason, disabled_at, secret)
        VALUES (%(tenant_id)s, %(url)s, %(description)s, %(type_filter)s, %(headers)s,
                %(rate_per_second)s, %(rate_burst)s, %(enabled)s, %(disabled_reason)s,
                CASE WHEN %(enabled)s THEN NULL ELSE now() END, %(secret)s)
        RETURNING *
        """,
        values | {"headers": Jsonb(values["headers"])},
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def list_endpoints(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    """Every endpoint of the tenant, oldest first."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.endpoints
        WHERE tenant_id = %s AND deleted_at IS NULL
        ORDER BY created_at, id
        """,
        [tenant_id],
    )
    return await cursor.fetchall()


async def get_endpoint(
    conn: Connection, tenant_id: str, endpoint_id: uuid.UUID, *, lock: bool = False
) -> dict[str, Any] | None:
    """One of the tenant's (undeleted) endpoints, locked until the transaction ends if
    ``lock``; None for another tenant's, like a missing one."""
    cursor = await conn.execute(_LOCK_ENDPOINT if lock else _GET_ENDPOINT, [tenant_id, endpoint_id])
    return await cursor.fetchone()


_GET_ENDPOINT = """
    SELECT * FROM notifier.endpoints
    WHERE tenant_id = %s AND id = %s AND deleted_at IS NULL
"""
# NO KEY: deliveries inserting the endpoint's health row (a foreign key to it) go on.
_LOCK_ENDPOINT = _GET_ENDPOINT + " FOR NO KEY UPDATE"


async def update_endpoint(
    conn: Connection, endpoint_id: uuid.UUID, values: dict[str, Any]
) -> dict[str, Any]:
    """Store the (locked) endpoint's settable columns; ``disabled_at`` follows ``enabled``."""
    cursor = await conn.execute(
        """
        UPDATE notifier.endpoints
        SET url = %(url)s, description = %(description)s, type_filter = %(type_filter)s,
            headers = %(headers)s, rate_per_second = %(rate_per_second)s,
            rate_burst = %(rate_burst)s,
            disabled_at = CASE WHEN %(enabled)s THEN NULL
                               WHEN enabled THEN now() ELSE disabled_at END,
            enabled = %(enabled)s, disabled_reason = %(disabled_reason)s, updated_at = now()
        WHERE id = %(id)s
        RETURNING *
        """,
        values | {"id": endpoint_id, "headers": Jsonb(values["headers"])},
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def delete_endpoint(conn: Connection, endpoint_id: uuid.UUID) -> None:
    """Mark the (locked) endpoint deleted and forget its secrets."""
    await conn.execute(
        """
        UPDATE notifier.endpoints
        SET deleted_at = now(), enabled = false, secret = '', previous_secret = NULL,
            previous_expires_at = NULL, updated_at = now()
        WHERE id = %s
        """,
        [endpoint_id],
    )


async def fail_pending_of_endpoint(conn: Connection, endpoint_id: uuid.UUID, error: str) -> int:
    """Fail every pending notification of the endpoint, held ones included; how many.

    Their jobs, if any, find them failed and send nothing.
    """
    cursor = await conn.execute(
        """
        UPDATE notifier.notifications
        SET status = 'failed', last_error = %s, held_since = NULL, updated_at = now()
        WHERE endpoint_id = %s AND status = 'pending'
        """,
        [error, endpoint_id],
    )
    return cursor.rowcount


async def replace_secret(
    conn: Connection,
    endpoint_id: uuid.UUID,
    *,
    secret: str,
    previous_secret: str | None,
    previous_expires_at: datetime.datetime | None,
) -> dict[str, Any]:
    """Store the (locked) endpoint's new secret and the one still signing beside it."""
    cursor = await conn.execute(
        """
        UPDATE notifier.endpoints
        SET secret = %s, previous_secret = %s, previous_expires_at = %s, updated_at = now()
        WHERE id = %s
        RETURNING *
        """,
        [secret, previous_secret, previous_expires_at, endpoint_id],
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def record_endpoint_event(
    conn: Connection, endpoint_id: uuid.UUID, tenant_id: str, kind: str, reason: str | None
) -> None:
    """Note an endpoint's disable or enable for the record."""
    await conn.execute(
        """
        INSERT INTO notifier.endpoint_events (endpoint_id, tenant_id, kind, reason)
        VALUES (%s, %s, %s, %s)
        """,
        [endpoint_id, tenant_id, kind, reason],
    )


async def reset_health(conn: Connection, endpoint_id: uuid.UUID) -> None:
    """Start the endpoint's failure count afresh (on re-enable)."""
    await conn.execute("DELETE FROM notifier.endpoint_health WHERE endpoint_id = %s", [endpoint_id])


async def lock_held_notifications(conn: Connection, endpoint_id: uuid.UUID) -> list[dict[str, Any]]:
    """The notifications waiting for the endpoint to be enabled again, locked."""
    cursor = await conn.execute(
        """
        SELECT id, tenant_id FROM notifier.notifications
        WHERE endpoint_id = %s AND status = 'pending' AND held_since IS NOT NULL
        ORDER BY id
        FOR UPDATE
        """,
        [endpoint_id],
    )
    return await cursor.fetchall()


async def release_held(conn: Connection, jobs_by_notification: dict[uuid.UUID, int]) -> None:
    """Give held notifications their new deliver jobs, due now."""
    await conn.execute(
        """
        UPDATE notifier.notifications AS n
        SET held_since = NULL, job_id = given.job_id, send_at = least(n.send_at, now()),
            updated_at = now()
        FROM unnest(%s::uuid[], %s::bigint[]) AS given (id, job_id)
        WHERE n.id = given.id
        """,
        [list(jobs_by_notification), list(jobs_by_notification.values())],
    )


async def hold_notifications(conn: Connection, notification_ids: list[uuid.UUID]) -> None:
    """Park (locked, pending) notifications whose endpoint is disabled: no job, no attempt."""
    await conn.execute(
        """
        UPDATE notifier.notifications
        SET held_since = now(), job_id = NULL,
            last_error = 'waiting: its endpoint is disabled', updated_at = now()
        WHERE id = ANY(%s)
        """,
        [notification_ids],
    )


async def endpoints_for_delivery(
    conn: Connection, endpoint_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The endpoints a batch sends to, deleted ones included, by id."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.endpoints WHERE id = ANY(%s)", [endpoint_ids]
    )
    return {row["id"]: row for row in await cursor.fetchall()}


async def tenant_secret(conn: Connection, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's signing secret row for bare-URL webhooks, if made yet."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.tenant_webhook_secrets WHERE tenant_id = %s", [tenant_id]
    )
    return await cursor.fetchone()


async def insert_tenant_secret(conn: Connection, tenant_id: str, secret: str) -> dict[str, Any]:
    """Store the tenant's first signing secret unless another transaction just did; the
    row that is stored either way."""
    await conn.execute(
        """
        INSERT INTO notifier.tenant_webhook_secrets (tenant_id, secret) VALUES (%s, %s)
        ON CONFLICT (tenant_id) DO NOTHING
        """,
        [tenant_id, secret],
    )
    row = await tenant_secret(conn, tenant_id)
    assert row is not None
    return row


async def lock_tenant_secret(conn: Connection, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's signing secret row, locked."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.tenant_webhook_secrets WHERE tenant_id = %s FOR UPDATE",
        [tenant_id],
    )
    return await cursor.fetchone()


async def replace_tenant_secret(
    conn: Connection,
    tenant_id: str,
    *,
    secret: str,
    previous_secret: str | None,
    previous_expires_at: datetime.datetime | None,
) -> dict[str, Any]:
    """Store the tenant's new secret and the one still signing beside it."""
    cursor = await conn.execute(
        """
        UPDATE notifier.tenant_webhook_secrets
        SET secret = %s, previous_secret = %s, previous_expires_at = %s, rotated_at = now()
        WHERE tenant_id = %s
        RETURNING *
        """,
        [secret, previous_secret, previous_expires_at, tenant_id],
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def note_attempt_results(
    conn: Connection, results: dict[uuid.UUID, tuple[bool, int]]
) -> None:
    """Count attempts per endpoint: ``results`` maps an endpoint to whether any of its
    attempts in the batch was delivered, and how many failed. A delivered one clears its
    failures; otherwise they add up from the first failure on.

    The rows are locked in id order, so two batches never wait on each other in a cycle;
    the endpoint row itself is not touched, so deliveries never block its API updates.
    """
    if not results:
        return
    ids = sorted(results)
    await conn.execute(
        """
        INSERT INTO notifier.endpoint_health (endpoint_id)
        SELECT unnest(%s::uuid[]) ORDER BY 1
        ON CONFLICT (endpoint_id) DO NOTHING
        """,
        [ids],
    )
    await conn.execute(
        """
        WITH locked AS (
            SELECT endpoint_id FROM notifier.endpoint_health
            WHERE endpoint_id = ANY(%(ids)s) ORDER BY endpoint_id FOR UPDATE
        )
        UPDATE notifier.endpoint_health AS h
        SET failing_since = CASE WHEN r.delivered THEN NULL
                                 ELSE coalesce(h.failing_since, clock_timestamp()) END,
            failures = CASE WHEN r.delivered THEN 0 ELSE h.failures + r.failed END,
            last_attempt_at = clock_timestamp()
        FROM locked, unnest(%(ids)s::uuid[], %(delivered)s::boolean[], %(failed)s::int[])
            AS r (endpoint_id, delivered, failed)
        WHERE h.endpoint_id = locked.endpoint_id AND r.endpoint_id = h.endpoint_id
        """,
        {
            "ids": ids,
            "delivered": [results[i][0] for i in ids],
            "failed": [results[i][1] for i in ids],
        },
    )


async def disable_failing_endpoints(
    conn: Connection, *, failing_for: datetime.timedelta | None, failures: int | None
) -> list[dict[str, Any]]:
    """Disable every enabled endpoint whose attempts have all failed for ``failing_for`` or
    ``failures`` times in a row (None: that test is off); the endpoints disabled, each with
    the reason recorded on it and in its endpoint_events row."""
    cursor = await conn.execute(
        """
        WITH failing AS (
            SELECT e.id, h.failing_since, h.failures
            FROM notifier.endpoints AS e
            JOIN notifier.endpoint_health AS h ON h.endpoint_id = e.id
            WHERE e.enabled AND e.deleted_at IS NULL AND h.failing_since IS NOT NULL
              AND ((%(span)s::interval IS NOT NULL AND h.failing_since <= now() - %(span)s)
                   OR (%(count)s::int IS NOT NULL AND h.failures >= %(count)s))
            ORDER BY e.id
            FOR UPDATE OF e SKIP LOCKED
        ),
        disabled AS (
            UPDATE notifier.endpoints AS e
            SET enabled = false, disabled_at = now(), updated_at = now(),
                disabled_reason = format(
                    'every attempt failed since %%s (%%s attempts): disabled automatically',
                    to_char(f.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                    f.failures)
            FROM failing AS f
            WHERE e.id = f.id
            RETURNING e.id, e.tenant_id, e.disabled_reason
        ),
        recorded AS (
            INSERT INTO notifier.endpoint_events (endpoint_id, tenant_id, kind, reason)
            SELECT id, tenant_id, 'auto_disabled', disabled_reason FROM disabled
        )
        SELECT * FROM disabled
        """,
        {"span": failing_for, "count": failures},
    )
    return await cursor.fetchall()


async def held_of_enabled_endpoints(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """Held notifications whose endpoint is enabled again, locked (those others hold are
    skipped): what a re-enable racing a delivery may have left behind."""
    cursor = await conn.execute(
        """
        SELECT n.id, n.tenant_id FROM notifier.notifications AS n
        JOIN notifier.endpoints AS e ON e.id = n.endpoint_id
        WHERE n.held_since IS NOT NULL AND n.status = 'pending' AND e.enabled
        ORDER BY n.id
        LIMIT %s
        FOR UPDATE OF n SKIP LOCKED
        """,
        [limit],
    )
    return await cursor.fetchall()


async def list_attempts(
    conn: Connection,
    endpoint_id: uuid.UUID,
    *,
    limit: int,
    before_id: int | None,
    outcome: str | None,
) -> list[dict[str, Any]]:
    """A page of the endpoint's attempts, newest first, before ``before_id`` if given.

    Only the conditions given are in the statement: a prepared ``(x IS NULL OR id < x)``
    gets a generic plan that reads every newer attempt of the endpoint to reach a deep page.
    """
    conditions = [sql.SQL("endpoint_id = %(endpoint_id)s")]
    if before_id is not None:
        conditions.append(sql.SQL("id < %(before)s"))
    if outcome is not None:
        conditions.append(sql.SQL("outcome = %(outcome)s"))
    query = sql.SQL(
        """
        SELECT id, notification_id, attempt, outcome, status_code, duration_ms, error, answer,
               started_at, finished_at
        FROM notifier.delivery_attempts
        WHERE {conditions}
        ORDER BY id DESC
        LIMIT %(limit)s
        """
    ).format(conditions=sql.SQL(" AND ").join(conditions))
    cursor = await conn.execute(
        query,
        {"endpoint_id": endpoint_id, "before": before_id, "outcome": outcome, "limit": limit},
    )
    return await cursor.fetchall()


async def lock_recoverable(
    conn: Connection, tenant_id: str, endpoint_id: uuid.UUID, since: datetime.datetime
) -> list[dict[str, Any]]:
    """The endpoint's failed and dead notifications that ended at or after ``since``
    (oldest first, at most :data:`MAX_RECOVERED`), locked."""
    cursor = await conn.execute(
        """
        SELECT id FROM notifier.notifications
        WHERE tenant_id = %s AND endpoint_id = %s AND status IN ('failed', 'dead')
          AND updated_at >= %s
        ORDER BY updated_at, id
        LIMIT %s
        FOR UPDATE
        """,
        [tenant_id, endpoint_id, since, MAX_RECOVERED],
    )
    return await cursor.fetchall()


async def start_new_rounds(
    conn: Connection, jobs_by_notification: dict[uuid.UUID, int], traceparent: str | None
) -> None:
    """Make (locked) failed or dead notifications pending again, each with its new job."""
    await conn.execute(
        """
        UPDATE notifier.notifications AS n
        SET status = 'pending', attempts = 0, job_id = given.job_id, send_at = now(),
            held_since = NULL, traceparent = coalesce(%s, n.traceparent), updated_at = now()
        FROM unnest(%s::uuid[], %s::bigint[]) AS given (id, job_id)
        WHERE n.id = given.id
        """,
        [traceparent, list(jobs_by_notification), list(jobs_by_notification.values())],
    )


async def endpoint_exists(conn: Connection, tenant_id: str, endpoint_id: uuid.UUID) -> bool:
    """Whether the tenant has this (undeleted) endpoint."""
    return await get_endpoint(conn, tenant_id, endpoint_id) is not None


async def all_secret_tokens(conn: Connection) -> list[tuple[str, Any, str, str | None]]:
    """Every stored secret token, as (table, row key, secret, previous secret), locked:
    for re-encrypting them under a new key."""
    cursor = await conn.execute(
        "SELECT id, secret, previous_secret FROM notifier.endpoints "
        "WHERE secret <> '' ORDER BY id FOR UPDATE"
    )
    found = [
        ("endpoints", row["id"], row["secret"], row["previous_secret"])
        for row in await cursor.fetchall()
    ]
    cursor = await conn.execute(
        "SELECT tenant_id, secret, previous_secret FROM notifier.tenant_webhook_secrets "
        "ORDER BY tenant_id FOR UPDATE"
    )
    found += [
        ("tenant_webhook_secrets", row["tenant_id"], row["secret"], row["previous_secret"])
        for row in await cursor.fetchall()
    ]
    return found


async def store_reencrypted(
    conn: Connection, table: str, key: Any, secret: str, previous_secret: str | None
) -> None:
    """Write back one row's re-encrypted tokens (``table`` from :func:`all_secret_tokens`)."""
    if table == "endpoints":
        await conn.execute(
            "UPDATE notifier.endpoints SET secret = %s, previous_secret = %s WHERE id = %s",
            [secret, previous_secret, key],
        )
    else:
        await conn.execute(
            "UPDATE notifier.tenant_webhook_secrets SET secret = %s, previous_secret = %s "
            "WHERE tenant_id = %s",
            [secret, previous_secret, key],
        )
