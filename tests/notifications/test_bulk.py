"""notifications/service: replay_many, cancel_many and count_for_bulk against the real
database: tenant-scoped, bounded, one transaction, and a row a delivery holds is skipped."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest

from notifier.notifications import selection, service
from notifier.notifications.schemas import (
    NotificationCreate,
    NotificationFilter,
    NotificationStatus,
)
from notifier.services import Services
from tests.conftest import CreateApiKey


async def schedule(services: Services, tenant: str = "default", entity_id: str = "e") -> uuid.UUID:
    request = NotificationCreate(
        notification_type="invoice.due",
        entity_id=entity_id,
        target_date=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2),
        lead_time_days=1,
        channel="log",
        recipient="ops",
    )
    outcome = await service.schedule(services.pool, services.channels, "log", tenant, request)
    return outcome.body.id


async def make_dead(db: psycopg.AsyncConnection[Any], ids: list[uuid.UUID]) -> None:
    await db.execute("UPDATE notifier.notifications SET status = 'dead' WHERE id = ANY(%s)", [ids])


async def status_of(db: psycopg.AsyncConnection[Any], notification_id: uuid.UUID) -> str:
    row = await (
        await db.execute(
            "SELECT status FROM notifier.notifications WHERE id = %s", [notification_id]
        )
    ).fetchone()
    assert row is not None
    return str(row["status"])


async def test_bulk_actions_touch_the_callers_tenant_only(
    services: Services, db: psycopg.AsyncConnection[Any], create_api_key: CreateApiKey
) -> None:
    await create_api_key("acme")  # makes the tenant
    ours, theirs = await schedule(services), await schedule(services, "acme")
    await make_dead(db, [ours, theirs])

    assert (
        await service.count_for_bulk(services.pool, "default", "replay", NotificationFilter()) == 1
    )
    assert await service.replay_many(services.pool, "default", NotificationFilter()) == 1
    assert await service.cancel_many(services.pool, "default", NotificationFilter()) == 1

    assert await status_of(db, ours) == "cancelled"
    assert await status_of(db, theirs) == "dead"


async def test_a_status_outside_the_action_matches_nothing(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    pending = await schedule(services)
    where = NotificationFilter(status=NotificationStatus.PENDING)

    assert await service.count_for_bulk(services.pool, "default", "replay", where) == 0
    assert await service.replay_many(services.pool, "default", where) == 0
    assert await status_of(db, pending) == "pending"


async def test_one_run_changes_at_most_the_limit_oldest_first(
    services: Services, db: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selection, "BULK_LIMIT", 2)
    made = [await schedule(services, entity_id=f"e-{n}") for n in range(3)]

    assert (
        await service.count_for_bulk(services.pool, "default", "cancel", NotificationFilter()) == 3
    )
    assert await service.cancel_many(services.pool, "default", NotificationFilter()) == 2
    assert [await status_of(db, i) for i in made] == ["cancelled", "cancelled", "pending"]


async def test_a_row_held_by_a_delivery_is_skipped_not_waited_for(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    held, free = await schedule(services), await schedule(services)
    async with services.pool.connection() as other, other.transaction():
        await other.execute("SELECT 1 FROM notifier.notifications WHERE id = %s FOR UPDATE", [held])
        assert await service.cancel_many(services.pool, "default", NotificationFilter()) == 1

    assert await status_of(db, held) == "pending"
    assert await status_of(db, free) == "cancelled"
