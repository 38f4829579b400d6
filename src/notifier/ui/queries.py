"""SQL of the dashboard's own tables (migration 0013). Functions take a connection and never
commit. Session ids arrive here already hashed: the table never holds a usable one."""

from __future__ import annotations

import datetime

from notifier.db import Connection

# A session's expiry is pushed back at most this often: a read that renews on every
# request would write a row per page view.
RENEW_PRECISION = datetime.timedelta(minutes=1)


async def save_session(
    conn: Connection, id_sha256: bytes, data: bytes, expires_in: datetime.timedelta | None
) -> None:
    """Create or replace a session."""
    await conn.execute(
        """
        INSERT INTO notifier.ui_sessions (id_sha256, data, expires_at)
        VALUES (%(id)s, %(data)s, now() + %(expires_in)s)
        ON CONFLICT (id_sha256) DO UPDATE
            SET data = excluded.data, expires_at = excluded.expires_at
        """,
        {"id": id_sha256, "data": data, "expires_in": expires_in},
    )


async def read_session(
    conn: Connection, id_sha256: bytes, renew_for: datetime.timedelta | None
) -> bytes | None:
    """A live session's data (None if unknown or expired), its expiry pushed to
    ``renew_for`` from now when that moves it by more than RENEW_PRECISION."""
    cursor = await conn.execute(
        """
        WITH found AS (
            SELECT data FROM notifier.ui_sessions
            WHERE id_sha256 = %(id)s AND (expires_at IS NULL OR expires_at > now())
        ), renewed AS (
            UPDATE notifier.ui_sessions SET expires_at = now() + %(renew_for)s
            WHERE id_sha256 = %(id)s AND %(renew_for)s::interval IS NOT NULL
              AND expires_at > now()
              AND expires_at < now() + %(renew_for)s - %(precision)s
        )
        SELECT data FROM found
        """,
        {"id": id_sha256, "renew_for": renew_for, "precision": RENEW_PRECISION},
    )
    row = await cursor.fetchone()
    return bytes(row["data"]) if row else None


async def session_expires_in(conn: Connection, id_sha256: bytes) -> datetime.timedelta | None:
    """How long until a live session expires (None: unknown, expired, or no expiry)."""
    cursor = await conn.execute(
        """
        SELECT expires_at - now() AS left FROM notifier.ui_sessions
        WHERE id_sha256 = %s AND expires_at > now()
        """,
        [id_sha256],
    )
    row = await cursor.fetchone()
    return row["left"] if row else None


async def session_exists(conn: Connection, id_sha256: bytes) -> bool:
    """Whether a live session has this id."""
    cursor = await conn.execute(
        """
        SELECT 1 FROM notifier.ui_sessions
        WHERE id_sha256 = %s AND (expires_at IS NULL OR expires_at > now())
        """,
        [id_sha256],
    )
    return await cursor.fetchone() is not None


async def delete_session(conn: Connection, id_sha256: bytes) -> None:
    """End a session."""
    await conn.execute("DELETE FROM notifier.ui_sessions WHERE id_sha256 = %s", [id_sha256])


async def delete_all_sessions(conn: Connection) -> None:
    """End every session."""
    await conn.execute("DELETE FROM notifier.ui_sessions")


async def delete_expired_sessions(conn: Connection) -> int:
    """Remove sessions past their expiry; how many there were."""
    cursor = await conn.execute("DELETE FROM notifier.ui_sessions WHERE expires_at <= now()")
    return cursor.rowcount


async def ui_secret(conn: Connection, name: str, candidate: str) -> str:
    """The secret called ``name``, stored as ``candidate`` if there is none yet (the first
    process to ask wins; every process gets the same one).

    Two processes asking at once: the second's insert waits for the first's and does
    nothing, but its statement's snapshot predates the first's row; asking again sees it.
    """
    for _ in range(2):
        cursor = await conn.execute(
            """
            WITH made AS (
                INSERT INTO notifier.ui_secrets (name, secret) VALUES (%(name)s, %(candidate)s)
                ON CONFLICT (name) DO NOTHING
                RETURNING secret
            )
            SELECT secret FROM made
            UNION ALL
            SELECT secret FROM notifier.ui_secrets WHERE name = %(name)s
            """,
            {"name": name, "candidate": candidate},
        )
        row = await cursor.fetchone()
        if row is not None:
            return str(row["secret"])
    raise RuntimeError(f"the dashboard secret {name!r} was neither stored nor found")
