"""Where a webhook goes and how it is signed, decided at delivery; and what its attempts
tell about its endpoint.

:func:`route_webhooks` is the one place a delivery resolves an endpoint (URL, secrets,
headers, enabled state, type filter) or a bare URL's tenant secret.
"""

from __future__ import annotations

import datetime
import enum
import logging
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from notifier.channels.base import WebhookTarget
from notifier.channels.webhook import WebhookChannel
from notifier.db import Connection, transaction
from notifier.endpoints import queries
from notifier.endpoints.schemas import type_matches
from notifier.endpoints.signing import signing_keys, tenant_secret_row
from notifier.notifications import queries as notification_queries
from notifier.notifications.queries import LockedDelivery
from notifier.notifications.schemas import NotificationStatus
from notifier.services import Services

logger = logging.getLogger("notifier.endpoints")


class Verdict(enum.Enum):
    """What becomes of a notification to an endpoint."""

    SEND = "send"
    HOLD = "hold"  # the endpoint is disabled: wait, spending no attempt
    REFUSE = "refuse"  # it can never be sent there: fail it, spending no attempt


class Decision(NamedTuple):
    verdict: Verdict
    reason: str | None = None


def decide(endpoint: dict[str, Any] | None, notification_type: str) -> Decision:
    """The fate of a notification of ``notification_type`` to ``endpoint`` (no I/O)."""
    if endpoint is None or endpoint["deleted_at"] is not None:
        return Decision(Verdict.REFUSE, "its endpoint was deleted")
    if not type_matches(endpoint["type_filter"], notification_type):
        return Decision(
            Verdict.REFUSE, f"its endpoint's type_filter does not let {notification_type!r} in"
        )
    if not endpoint["enabled"]:
        return Decision(Verdict.HOLD)
    return Decision(Verdict.SEND)


async def route_webhooks(
    conn: Connection, services: Services, batch: list[LockedDelivery]
) -> list[LockedDelivery]:
    """Those of the (locked, pending) notifications still to send, each webhook among them
    given its ``webhook`` target (and its endpoint's URL as ``recipient``, so host caps and
    URL checks see where it really goes).

    Notifications whose endpoint is disabled are held (no job, no attempt: re-enabling
    sends them); those their endpoint refuses (deleted, filtered out) fail now.
    """
    if not any(locked.notification.channel == WebhookChannel.name for locked in batch):
        return batch
    now = datetime.datetime.now(datetime.UTC)
    endpoint_ids = sorted(
        {locked.notification.endpoint_id for locked in batch if locked.notification.endpoint_id}
    )
    endpoints = await queries.endpoints_for_delivery(conn, endpoint_ids) if endpoint_ids else {}
    # Decrypted once per batch (about 70 us each), however many of its messages they sign.
    tenant_keys: dict[str, tuple[bytes, ...]] = {}
    endpoint_keys: dict[uuid.UUID, tuple[bytes, ...]] = {}
    held: list[uuid.UUID] = []
    routed: list[LockedDelivery] = []
    box = services.secret_box
    for locked in batch:
        row = locked.notification
        if row.channel != WebhookChannel.name:
            routed.append(locked)
            continue
        if row.endpoint_id is None:
            if row.tenant_id not in tenant_keys:
                secret_row = await queries.tenant_secret(conn, row.tenant_id)
                if secret_row is None:
                    secret_row = await _make_tenant_secret(services, row.tenant_id)
                tenant_keys[row.tenant_id] = signing_keys(box, secret_row, now)
            target = WebhookTarget(url=row.recipient, secrets=tenant_keys[row.tenant_id])
            routed.append(_with_target(locked, target))
            continue
        endpoint = endpoints.get(row.endpoint_id)
        verdict, reason = decide(endpoint, row.notification_type)
        if verdict is Verdict.HOLD:
            held.append(row.id)
        elif verdict is Verdict.REFUSE:
            await notification_queries.set_status(
                conn, row.id, NotificationStatus.FAILED, last_error=f"not sent: {reason}"
            )
            logger.warning("notification %s not sent: %s", row.id, reason)
        else:
            assert endpoint is not None
            if endpoint["id"] not in endpoint_keys:
                endpoint_keys[endpoint["id"]] = signing_keys(box, endpoint, now)
            target = WebhookTarget(
                url=endpoint["url"],
                secrets=endpoint_keys[endpoint["id"]],
                headers=tuple(endpoint["headers"].items()),
                endpoint_id=endpoint["id"],
            )
            routed.append(_with_target(locked, target))
    if held:
        await queries.hold_notifications(conn, held)
        logger.info("%d notification(s) wait for their disabled endpoint", len(held))
    return routed


def _with_target(locked: LockedDelivery, target: WebhookTarget) -> LockedDelivery:
    """``locked`` sent to ``target``: its recipient becomes the URL it goes to."""
    row = msgspec.structs.replace(locked.notification, recipient=target.url, webhook=target)
    return LockedDelivery(row, locked.job_id)


async def _make_tenant_secret(services: Services, tenant_id: str) -> dict[str, Any]:
    """The tenant's first signing secret, made in a short transaction of its own.

    Made in the delivery's transaction, which lasts as long as its sends, the new row would
    hold every other delivery of the tenant at its unique index until those sends ended.
    """
    async with transaction(services.pool) as own:
        return await tenant_secret_row(
            own, services.secret_box, services.settings.webhook_secret, tenant_id
        )


async def note_endpoint_attempts(
    conn: Connection, attempts: Sequence[tuple[uuid.UUID | None, str]]
) -> None:
    """Count a batch's attempts (endpoint, outcome) towards their endpoints' health: any
    delivered clears the endpoint's failures, else each failed attempt adds one."""
    results: dict[uuid.UUID, tuple[bool, int]] = {}
    for endpoint_id, outcome in attempts:
        if endpoint_id is not None:
            delivered, failed = results.get(endpoint_id, (False, 0))
            results[endpoint_id] = (
                delivered or outcome == "delivered",
                failed + (outcome != "delivered"),
            )
    await queries.note_attempt_results(conn, results)
