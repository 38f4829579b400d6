"""Use cases of webhook endpoints: one function per capability, each owning its transaction.

The API handlers, the CLI and the maintenance task call these; queries never commit.
Another tenant's endpoint is as unknown as a missing one: every lookup is by tenant and id.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import uuid
from typing import Any

import msgspec

from notifier.api_types import check_payload_size, check_storable, checked_instant
from notifier.channels.base import DeliveryError, OutgoingMessage, WebhookTarget
from notifier.channels.webhook import WebhookChannel
from notifier.db import Connection, Pool, transaction
from notifier.endpoints import queries
from notifier.endpoints.schemas import (
    Endpoint,
    EndpointAttempt,
    EndpointCreate,
    EndpointCreated,
    EndpointUpdate,
    Recovered,
    SigningSecret,
    TestMessage,
    TestResult,
    endpoint_from_row,
)
from notifier.endpoints.signing import overlap_problem, rotated, signing_keys, tenant_secret_row
from notifier.errors import ProblemError, field_error, not_found
from notifier.notifications.scheduling import delivery_job
from notifier.queue import jobs
from notifier.secret_box import SecretBox, UndecryptableSecret, new_signing_secret
from notifier.services import Services
from notifier.settings import Settings
from notifier.telemetry import current_traceparent
from notifier.telemetry.metrics import Metrics

logger = logging.getLogger("notifier.endpoints")

# Headers an endpoint may not set: the protocol's own, and those that would change how
# the request is framed or routed rather than what the receiver reads.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "host",
        "expect",
        "accept-encoding",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "traceparent",
        "tracestate",
        "baggage",
        "proxy-authorization",
        "proxy-connection",
    }
)
# Held notifications released per maintenance run (the rest wait for the next minute).
MAX_RELEASED_PER_RUN = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointDeps:
    """What the endpoint use cases that touch secrets or receivers need."""

    pool: Pool
    secret_box: SecretBox
    webhook: WebhookChannel
    # NOTIFIER_WEBHOOK_SECRET (deprecated): the default tenant's first bare-URL secret.
    legacy_secret: str | None = None

    @classmethod
    def of(cls, services: Services) -> EndpointDeps:
        """The dependencies out of a process's services."""
        webhook = services.channel(WebhookChannel.name)
        assert isinstance(webhook, WebhookChannel), "every process has the webhook channel"
        return cls(
            pool=services.pool,
            secret_box=services.secret_box,
            webhook=webhook,
            legacy_secret=services.settings.webhook_secret,
        )


def _checked_columns(webhook: WebhookChannel, draft: EndpointCreate) -> dict[str, Any]:
    """The columns of ``draft``; a 422 naming the field that could never work."""
    check_storable(draft)
    if problem := webhook.validate_recipient(draft.url):
        raise field_error("url", problem)
    for name in draft.headers:
        if name.lower() in RESERVED_HEADERS or name.lower().startswith("webhook-"):
            raise field_error(f"headers.{name}", "is set by notifier itself and cannot be given")
    if len({name.lower() for name in draft.headers}) < len(draft.headers):
        raise field_error("headers", "names a header twice (names are case-insensitive)")
    if draft.enabled and draft.disabled_reason is not None:
        raise field_error("disabled_reason", "only a disabled endpoint has one")
    return {
        "url": draft.url,
        "description": draft.description,
        "type_filter": draft.type_filter,
        "headers": draft.headers,
        "rate_per_second": draft.rate_limit.per_second if draft.rate_limit else None,
        "rate_burst": draft.rate_limit.burst if draft.rate_limit else None,
        "enabled": draft.enabled,
        "disabled_reason": draft.disabled_reason,
    }


async def _locked(conn: Connection, tenant_id: str, endpoint_id: uuid.UUID) -> dict[str, Any]:
    row = await queries.get_endpoint(conn, tenant_id, endpoint_id, lock=True)
    if row is None:
        raise not_found("endpoint", endpoint_id)
    return row


async def create_endpoint(
    deps: EndpointDeps, tenant_id: str, draft: EndpointCreate
) -> EndpointCreated:
    """Store a new endpoint with a fresh signing secret, shown in the answer."""
    columns = _checked_columns(deps.webhook, draft)
    secret = new_signing_secret()
    async with transaction(deps.pool) as conn:
        row = await queries.insert_endpoint(
            conn,
            columns | {"tenant_id": tenant_id, "secret": deps.secret_box.encrypt(secret)},
        )
        if not draft.enabled:
            await queries.record_endpoint_event(
                conn, row["id"], tenant_id, "disabled", draft.disabled_reason
            )
    endpoint = endpoint_from_row(row)
    return EndpointCreated(**msgspec.structs.asdict(endpoint), secret=secret)


async def list_endpoints(pool: Pool, tenant_id: str) -> list[Endpoint]:
    """Every endpoint of the tenant, oldest first."""
    async with transaction(pool) as conn:
        rows = await queries.list_endpoints(conn, tenant_id)
    return [endpoint_from_row(row) for row in rows]


async def get_endpoint(pool: Pool, tenant_id: str, endpoint_id: uuid.UUID) -> Endpoint:
    """One of the tenant's endpoints, or a 404."""
    async with transaction(pool) as conn:
        row = await queries.get_endpoint(conn, tenant_id, endpoint_id)
    if row is None:
        raise not_found("endpoint", endpoint_id)
    return endpoint_from_row(row)


def _as_draft(row: dict[str, Any], changes: EndpointUpdate) -> EndpointCreate:
    """The endpoint ``row`` with ``changes``, as a whole endpoint to check and store."""
    current = endpoint_from_row(row)
    fields = {name: getattr(current, name) for name in EndpointCreate.__struct_fields__}
    given = {
        name: value
        for name, value in msgspec.structs.asdict(changes).items()
        if value is not msgspec.UNSET
    }
    if given.get("enabled") is True and "disabled_reason" not in given:
        given["disabled_reason"] = None  # enabling clears the reason it was disabled for
    return EndpointCreate(**(fields | given))


async def update_endpoint(
    deps: EndpointDeps,
    tenant_id: str,
    endpoint_id: uuid.UUID,
    changes: EndpointUpdate,
    *,
    actor: str = "api",
) -> Endpoint:
    """Change the fields given. Disabling holds the endpoint's notifications (they wait,
    spending no attempt); enabling sends what waited, now. Both are recorded as
    endpoint_events rows, in the same transaction."""
    async with transaction(deps.pool) as conn:
        row = await _locked(conn, tenant_id, endpoint_id)
        draft = _as_draft(row, changes)
        columns = _checked_columns(deps.webhook, draft)
        updated = await queries.update_endpoint(conn, endpoint_id, columns)
        if row["enabled"] and not updated["enabled"]:
            reason = updated["disabled_reason"] or f"disabled through the {actor}"
            await queries.record_endpoint_event(conn, endpoint_id, tenant_id, "disabled", reason)
        elif not row["enabled"] and updated["enabled"]:
            await queries.record_endpoint_event(
                conn, endpoint_id, tenant_id, "enabled", f"enabled through the {actor}"
            )
            await queries.reset_health(conn, endpoint_id)
            released = await _release_held(
                conn, await queries.lock_held_notifications(conn, endpoint_id)
            )
            logger.info(
                "endpoint %s enabled: %d waiting notification(s) due now", endpoint_id, released
            )
    return endpoint_from_row(updated)


async def _release_held(conn: Connection, held: list[dict[str, Any]]) -> int:
    """Give held notifications a deliver job each, due now; how many."""
    if not held:
        return 0
    to_defer = [delivery_job(row["id"], tenant_id=row["tenant_id"]) for row in held]
    job_ids = await jobs.defer_jobs(conn, to_defer)
    await queries.release_held(
        conn, {row["id"]: job_id for row, job_id in zip(held, job_ids, strict=True)}
    )
    return len(held)


async def delete_endpoint(pool: Pool, tenant_id: str, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint and its secrets. Its pending notifications fail, visibly; its
    attempt log stays with the notifications."""
    async with transaction(pool) as conn:
        await _locked(conn, tenant_id, endpoint_id)
        await queries.fail_pending_of_endpoint(
            conn, endpoint_id, "not sent: its endpoint was deleted"
        )
        await queries.delete_endpoint(conn, endpoint_id)


async def reveal_secret(
    deps: EndpointDeps, tenant_id: str, endpoint_id: uuid.UUID
) -> SigningSecret:
    """The endpoint's current signing secret."""
    async with transaction(deps.pool) as conn:
        row = await queries.get_endpoint(conn, tenant_id, endpoint_id)
    if row is None:
        raise not_found("endpoint", endpoint_id)
    return _shown(deps.secret_box, row)


def _undecryptable(exc: UndecryptableSecret) -> ProblemError:
    """A 503: the operator dropped a key still in use (docs/security.md, key rotation)."""
    logger.error("%s", exc)
    return ProblemError(503, "Service Unavailable", "a stored secret cannot be read right now")


def _shown(box: SecretBox, row: dict[str, Any]) -> SigningSecret:
    now = datetime.datetime.now(datetime.UTC)
    expires = row["previous_expires_at"]
    try:
        secret = box.decrypt(row["secret"])
    except UndecryptableSecret as exc:
        raise _undecryptable(exc) from None
    return SigningSecret(
        secret=secret,
        previous_secret_expires_at=expires
        if row["previous_secret"] and expires and expires > now
        else None,
    )


def parse_overlap(text: str) -> datetime.timedelta:
    """A rotation's overlap from an ISO 8601 duration; a 422 naming ``overlap``."""
    try:
        overlap = msgspec.convert(text, datetime.timedelta)
    except msgspec.ValidationError as exc:
        raise field_error("overlap", f"is not an ISO 8601 duration such as PT24H: {exc}") from None
    if problem := overlap_problem(overlap):
        raise field_error("overlap", problem)
    return overlap


async def rotate_secret(
    deps: EndpointDeps, tenant_id: str, endpoint_id: uuid.UUID, overlap: datetime.timedelta
) -> SigningSecret:
    """A new secret for the endpoint; the current one keeps signing beside it for
    ``overlap`` (receivers accept a message if any signature verifies)."""
    now = datetime.datetime.now(datetime.UTC)
    async with transaction(deps.pool) as conn:
        row = await _locked(conn, tenant_id, endpoint_id)
        secret, columns = rotated(deps.secret_box, row, overlap, now)
        updated = await queries.replace_secret(conn, endpoint_id, **columns)
    return SigningSecret(
        secret=secret,
        previous_secret_expires_at=updated["previous_expires_at"],
    )


async def reveal_tenant_secret(deps: EndpointDeps, tenant_id: str) -> SigningSecret:
    """The secret the tenant's bare-URL webhooks are signed with, made on first need."""
    async with transaction(deps.pool) as conn:
        row = await tenant_secret_row(conn, deps.secret_box, deps.legacy_secret, tenant_id)
    return _shown(deps.secret_box, row)


async def rotate_tenant_secret(
    deps: EndpointDeps, tenant_id: str, overlap: datetime.timedelta
) -> SigningSecret:
    """A new secret for the tenant's bare-URL webhooks, the old signing beside it for
    ``overlap``."""
    now = datetime.datetime.now(datetime.UTC)
    async with transaction(deps.pool) as conn:
        await tenant_secret_row(conn, deps.secret_box, deps.legacy_secret, tenant_id)
        row = await queries.lock_tenant_secret(conn, tenant_id)
        assert row is not None
        secret, columns = rotated(deps.secret_box, row, overlap, now)
        updated = await queries.replace_tenant_secret(conn, tenant_id, **columns)
    return SigningSecret(secret=secret, previous_secret_expires_at=updated["previous_expires_at"])


async def list_attempts(
    pool: Pool,
    tenant_id: str,
    endpoint_id: uuid.UUID,
    *,
    limit: int,
    before_id: int | None,
    outcome: str | None,
) -> list[EndpointAttempt]:
    """A page of the endpoint's attempts, newest first."""
    async with transaction(pool) as conn:
        if await queries.get_endpoint(conn, tenant_id, endpoint_id) is None:
            raise not_found("endpoint", endpoint_id)
        rows = await queries.list_attempts(
            conn, endpoint_id, limit=limit, before_id=before_id, outcome=outcome
        )
    return [EndpointAttempt(**row) for row in rows]


async def send_test(
    deps: EndpointDeps, tenant_id: str, endpoint_id: uuid.UUID, message: TestMessage
) -> TestResult:
    """POST a signed example message to the endpoint now, and say how it went.

    Sent whether the endpoint is enabled or not (testing a disabled one before enabling
    it again is the point), outside any transaction: nothing is stored.
    """
    check_storable(message)
    check_payload_size("payload", message.payload)
    now = datetime.datetime.now(datetime.UTC)
    async with transaction(deps.pool) as conn:
        row = await queries.get_endpoint(conn, tenant_id, endpoint_id)
    if row is None:
        raise not_found("endpoint", endpoint_id)
    try:
        keys = signing_keys(deps.secret_box, row, now)
    except UndecryptableSecret as exc:
        raise _undecryptable(exc) from None
    target = WebhookTarget(
        url=row["url"],
        secrets=keys,
        headers=tuple(row["headers"].items()),
        endpoint_id=row["id"],
    )
    outgoing = OutgoingMessage(
        notification_id=uuid.uuid4(),
        notification_type=message.type,
        recipient=row["url"],
        attempt=1,
        context=message.payload,
        webhook=target,
    )
    try:
        receipt = await deps.webhook.send(outgoing)
    except DeliveryError as exc:
        return TestResult(
            delivered=False,
            status_code=exc.status_code,
            duration_ms=exc.duration_ms,
            error=str(exc),
            answer=exc.answer.decode(errors="replace") or None,
        )
    return TestResult(
        delivered=True,
        status_code=receipt.status_code,
        duration_ms=receipt.duration_ms,
        error=None,
        answer=receipt.answer.decode(errors="replace") or None,
    )


async def recover(
    pool: Pool, tenant_id: str, endpoint_id: uuid.UUID, since: datetime.datetime
) -> Recovered:
    """Make every failed or dead notification of the endpoint that ended at or after
    ``since`` pending again, each with a deliver job due now, in one transaction."""
    since = checked_instant("since", since)
    async with transaction(pool) as conn:
        await _locked(conn, tenant_id, endpoint_id)
        rows = await queries.lock_recoverable(conn, tenant_id, endpoint_id, since)
        if rows:
            job_ids = await jobs.defer_jobs(
                conn, [delivery_job(row["id"], tenant_id=tenant_id) for row in rows]
            )
            await queries.start_new_rounds(
                conn,
                {row["id"]: job_id for row, job_id in zip(rows, job_ids, strict=True)},
                current_traceparent(),
            )
    return Recovered(recovered=len(rows))


async def disable_failing_endpoints(
    pool: Pool,
    metrics: Metrics,
    *,
    failing_for: datetime.timedelta | None,
    failures: int | None,
) -> int:
    """Disable the endpoints whose every attempt failed for ``failing_for`` or ``failures``
    times in a row (None: that test is off; ``NOTIFIER_ENDPOINT_DISABLE_AFTER_*``); how
    many. Each gets its reason and time, an endpoint_events row and a count in
    ``notifier_endpoints_disabled_total``."""
    if failing_for is None and failures is None:
        return 0
    async with transaction(pool) as conn:
        disabled = await queries.disable_failing_endpoints(
            conn, failing_for=failing_for, failures=failures
        )
    for row in disabled:
        logger.warning(
            "endpoint %s of tenant %s disabled: %s",
            row["id"],
            row["tenant_id"],
            row["disabled_reason"],
        )
    metrics.endpoints_disabled.inc(len(disabled))
    return len(disabled)


def disable_thresholds(settings: Settings) -> dict[str, Any]:
    """The ``failing_for`` and ``failures`` of :func:`disable_failing_endpoints` that the
    settings give."""
    days = settings.endpoint_disable_after_days
    return {
        "failing_for": datetime.timedelta(days=days) if days else None,
        "failures": settings.endpoint_disable_after_failures or None,
    }


async def release_held_of_enabled_endpoints(pool: Pool) -> int:
    """Send the held notifications of endpoints that are enabled again; how many.

    An enable releases its endpoint's held notifications itself; a delivery that found the
    endpoint disabled just before and held its notification after the enable committed
    leaves one behind, which this finds at the next maintenance run.
    """
    async with transaction(pool) as conn:
        held = await queries.held_of_enabled_endpoints(conn, MAX_RELEASED_PER_RUN)
        return await _release_held(conn, held)
