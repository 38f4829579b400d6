"""``Idempotency-Key``: a repeated POST gets the first answer and creates nothing new.

The key is claimed inside the use case's own transaction, so the stored answer commits
(or rolls back) together with what it describes. A concurrent duplicate blocks on the
key's unique index until the first transaction ends, then replays its answer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from notifier.db import Connection
from notifier.errors import FieldProblem, ProblemError, field_error

T = TypeVar("T")
HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Visible ASCII, spaces only inside: what survives any HTTP hop unchanged.
KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
_KEY = re.compile(KEY_PATTERN)


class IdempotentRequest(msgspec.Struct, frozen=True):
    """A POST that carried an ``Idempotency-Key``; keys are per tenant."""

    tenant_id: str
    scope: str
    key: str
    request_hash: str


class StoredResponse(msgspec.Struct, frozen=True):
    """The answer given the first time."""

    status: int
    body: Any

    def decode(self, type_: type[T]) -> T:
        """The stored body as the endpoint's response type."""
        return msgspec.convert(self.body, type_, strict=False)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What a use case answers: the status it stands for (201 created, 200 found, 202
    accepted ...) and the body. ``replayed``: the first answer to this ``Idempotency-Key``,
    given again; nothing was done this time."""

    status: int
    body: T
    replayed: bool = False


def identify(tenant_id: str, key: str, *, method: str, path: str, body: bytes) -> IdempotentRequest:
    """The identity of a request that carried ``key``: its scope (method and path) and the
    hash of its body; a 400 naming the header if ``key`` is not a usable key."""
    if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
        raise field_error(
            HEADER,
            f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (spaces inside allowed)",
            status=400,
            source="header",
        )
    scope = f"{method} {path.rstrip('/')}"
    digest = hashlib.sha256(scope.encode() + b"\n" + body).hexdigest()
    return IdempotentRequest(tenant_id=tenant_id, scope=scope, key=key, request_hash=digest)


async def once(
    conn: Connection,
    request: IdempotentRequest | None,
    answer_type: Any,
    work: Callable[[], Awaitable[Outcome[T]]],
) -> Outcome[T]:
    """Do ``work`` once per ``Idempotency-Key``, on ``conn`` in the caller's transaction.

    Without a key (``request`` None) this is just ``work``. With one: claim the key; if it
    already has an answer, return that (decoded as ``answer_type``, ``replayed`` set)
    without doing the work; else do the work and store its answer with the key, so both
    commit or roll back together. Every idempotent POST goes through here.
    """
    stored = await claim(conn, request)
    if stored is not None:
        return Outcome(stored.status, stored.decode(answer_type), replayed=True)
    outcome = await work()
    await remember(conn, request, outcome.status, outcome.body)
    return outcome


async def claim(conn: Connection, request: IdempotentRequest | None) -> StoredResponse | None:
    """Claim the key for this transaction, or return the answer it already has."""
    if request is None:
        return None
    cursor = await conn.execute(
        """
        INSERT INTO notifier.idempotency_keys (tenant_id, scope, key, request_hash)
        VALUES (%(tenant_id)s, %(scope)s, %(key)s, %(request_hash)s)
        ON CONFLICT (tenant_id, scope, key) DO NOTHING
        RETURNING key
        """,
        msgspec.structs.asdict(request),
    )
    if await cursor.fetchone() is not None:
        return None
    cursor = await conn.execute(
        """
        SELECT request_hash, response_status, response_body
        FROM notifier.idempotency_keys
        WHERE tenant_id = %(tenant_id)s AND scope = %(scope)s AND key = %(key)s
        """,
        msgspec.structs.asdict(request),
    )
    stored = await cursor.fetchone()
    if stored is None:
        # Pruned between the two statements (it had expired): rare, and a retry succeeds.
        raise ProblemError(409, "Conflict", "this Idempotency-Key just expired; retry")
    if stored["request_hash"] != request.request_hash:
        message = "was first used with a different request"
        raise ProblemError(
            422,
            "Idempotency-Key reused",
            f"Idempotency-Key: {message}",
            errors=[FieldProblem(field=HEADER, message=message, source="header")],
        )
    return StoredResponse(status=stored["response_status"], body=stored["response_body"])


async def remember(
    conn: Connection, request: IdempotentRequest | None, status: int, body: object
) -> None:
    """Store the answer with the key, in the same transaction as the work it describes."""
    if request is None:
        return
    await conn.execute(
        """
        UPDATE notifier.idempotency_keys
        SET response_status = %(status)s, response_body = %(body)s::jsonb
        WHERE tenant_id = %(tenant_id)s AND scope = %(scope)s AND key = %(key)s
        """,
        {
            "tenant_id": request.tenant_id,
            "status": status,
            "body": msgspec.json.encode(body).decode(),
            "scope": request.scope,
            "key": request.key,
        },
    )


async def prune(conn: Connection, *, older_than_hours: int) -> int:
    """Forget keys older than the retention window. Returns how many were removed."""
    cursor = await conn.execute(
        """
        DELETE FROM notifier.idempotency_keys
        WHERE created_at < now() - make_interval(hours => %s)
        """,
        [older_than_hours],
    )
    return cursor.rowcount
