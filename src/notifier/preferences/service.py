"""The preference use cases: opt a recipient out (by the API or an unsubscribe link), list
opt-outs, opt back in.

Each function is one transaction of its own, on a connection from ``pool``; the API, the
CLI and the dashboard call these. Invalid input raises
:class:`notifier.errors.ProblemError` naming the field at fault.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import psycopg

from notifier.api_types import check_storable, checked_channel
from notifier.channels.base import Channel
from notifier.db import Pool, transaction
from notifier.errors import ProblemError, field_error, not_found
from notifier.idempotency import Outcome
from notifier.pagination import Cursor, Page, paginate
from notifier.preferences import queries
from notifier.preferences.links import InvalidToken, UnsubscribeScope, verify_token
from notifier.preferences.schemas import OptOut, OptOutCreate, OptOutSource


async def opt_out(
    pool: Pool, channels: Mapping[str, Channel], tenant_id: str, request: OptOutCreate
) -> Outcome[OptOut]:
    """Record the opt-out: 201 when new, 200 with the stored one when the same scope was
    opted out already. From now on matching notifications end ``suppressed``, including
    ones already scheduled. A channel it names must be one of ``channels``."""
    check_storable(request)
    if request.channel is not None:
        checked_channel(channels, request.channel, None)
    async with transaction(pool) as conn:
        stored, created = await queries.upsert_opt_out(conn, tenant_id, request, OptOutSource.API)
    return Outcome(201 if created else 200, stored)


async def list_opt_outs(
    pool: Pool,
    tenant_id: str,
    *,
    limit: int,
    after: Cursor | None = None,
    recipient: str | None = None,
) -> Page[OptOut]:
    """A page of at most ``limit`` of the tenant's opt-outs, newest first, after ``after``;
    only ``recipient``'s (compared case-insensitively) if given."""
    async with transaction(pool) as conn:
        rows = await queries.list_opt_outs(
            conn, tenant_id, limit=limit + 1, recipient=recipient, after=after
        )
    return paginate(rows, limit)


async def opt_in(pool: Pool, tenant_id: str, opt_out_id: uuid.UUID) -> None:
    """Remove the tenant's opt-out (a 404 if none); notifications not yet delivered are
    sent again when due."""
    async with transaction(pool) as conn:
        if not await queries.delete_opt_out(conn, tenant_id, opt_out_id):
            raise not_found("opt-out", opt_out_id)


def unsubscribe_scope(secret: str | None, token: str) -> UnsubscribeScope:
    """Who opts out of what, as the signed ``token`` says; a 404 if links are not enabled
    (no ``secret``), a 400 naming ``token`` if it is not a valid link."""
    if not secret:
        raise ProblemError(404, "Not Found", "unsubscribe links are not enabled")
    try:
        return verify_token(secret, token)
    except InvalidToken as exc:
        raise field_error(
            "token", f"is not a valid unsubscribe link: {exc}", status=400, source="path"
        ) from None


async def unsubscribe(pool: Pool, secret: str | None, token: str) -> None:
    """Record the opt-out an unsubscribe link's ``token`` names; repeating it changes
    nothing. A 404 if the tenant it was signed for has been removed since."""
    scope = unsubscribe_scope(secret, token)
    request = OptOutCreate(
        recipient=scope.recipient,
        channel=scope.channel,
        notification_type=scope.notification_type,
        reason="unsubscribe link",
    )
    try:
        async with transaction(pool) as conn:
            await queries.upsert_opt_out(
                conn, scope.tenant_id, request, OptOutSource.UNSUBSCRIBE_LINK
            )
    except psycopg.errors.ForeignKeyViolation:
        # Signed for a tenant that has since been removed.
        raise ProblemError(404, "Not Found", "this unsubscribe link has expired") from None
