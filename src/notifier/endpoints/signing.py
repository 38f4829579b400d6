"""Which secrets sign a webhook: its endpoint's, or its tenant's for a bare URL.

Every tenant signs with secrets of its own, so one tenant can never produce a message
another tenant's receiver accepts. A rotation keeps the previous secret signing beside the
new one until its overlap ends (Standard Webhooks: several space-separated signatures).
"""

from __future__ import annotations

import datetime
from typing import Any

from notifier.channels.webhook import decode_secret
from notifier.db import Connection
from notifier.endpoints import queries
from notifier.secret_box import SecretBox, new_signing_secret
from notifier.tenancy import DEFAULT_TENANT

# A rotation's overlap: the old secret keeps signing this long by default, at most a week.
DEFAULT_OVERLAP = datetime.timedelta(hours=24)
MAX_OVERLAP = datetime.timedelta(days=7)


def signing_keys(box: SecretBox, row: dict[str, Any], now: datetime.datetime) -> tuple[bytes, ...]:
    """The raw keys to sign with, newest first: the row's secret, and its previous one
    while the rotation's overlap lasts. ``row`` has ``secret``, ``previous_secret`` and
    ``previous_expires_at`` (an endpoint or a tenant secret row)."""
    keys = [decode_secret(box.decrypt(row["secret"]))]
    expires = row["previous_expires_at"]
    if row["previous_secret"] and expires is not None and now < expires:
        keys.append(decode_secret(box.decrypt(row["previous_secret"])))
    return tuple(keys)


async def tenant_secret_row(
    conn: Connection, box: SecretBox, legacy_secret: str | None, tenant_id: str
) -> dict[str, Any]:
    """The tenant's signing secret for bare-URL webhooks, made on first need.

    The default tenant's first secret is ``legacy_secret`` (``NOTIFIER_WEBHOOK_SECRET``)
    when that is set, so
    that receivers of a single-tenant installation keep verifying across the upgrade; every
    other tenant gets a random one (docs/security.md). Once stored, the variable is no
    longer read for it.
    """
    row = await queries.tenant_secret(conn, tenant_id)
    if row is not None:
        return row
    first = legacy_secret if tenant_id == DEFAULT_TENANT and legacy_secret else new_signing_secret()
    return await queries.insert_tenant_secret(conn, tenant_id, box.encrypt(first))


def overlap_problem(overlap: datetime.timedelta) -> str | None:
    """Why a rotation's overlap cannot be used, or None."""
    if overlap < datetime.timedelta(0):
        return "must not be negative"
    if overlap > MAX_OVERLAP:
        return "must be at most P7D (a week)"
    return None


def rotated(
    box: SecretBox, row: dict[str, Any], overlap: datetime.timedelta, now: datetime.datetime
) -> tuple[str, dict[str, Any]]:
    """A new secret for ``row``, and the columns that store it: the current secret becomes
    the previous one, signing beside the new until ``now + overlap`` (none if zero)."""
    secret = new_signing_secret()
    keep_previous = overlap > datetime.timedelta(0)
    columns = {
        "secret": box.encrypt(secret),
        "previous_secret": row["secret"] if keep_previous else None,
        "previous_expires_at": now + overlap if keep_previous else None,
    }
    return secret, columns
