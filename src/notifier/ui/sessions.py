"""The dashboard's server-side sessions: Litestar's session middleware on a PostgreSQL store.

Why not Litestar's stock pieces as they are:

- Its stores keep sessions in one process's memory, a file or Redis; notifier's API runs
  as several processes with PostgreSQL as its only shared state, so sessions live in
  ``notifier.ui_sessions`` (:class:`PostgresStore`), keyed by the SHA-256 of the id.
- Its server-side backend stores a session for every visitor, even one who never signs
  in (an empty dict), and writes it back on every response. :class:`DashboardSessionBackend`
  stores one only when there is something in it, writes it only when it changed, gives it
  a fresh id when the caller asks (at sign-in, so an id planted before sign-in is worth
  nothing after it), and deletes it server-side when it is cleared (sign-out).

The idle expiry is the store row's (pushed back as requests come, at most once a minute);
the absolute one is checked by :mod:`notifier.ui.auth` against the sign-in time.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.stores.base import Store
from litestar.types import Empty

from notifier.db import Pool, single_statement
from notifier.ui import queries

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.types import Message, ScopeSession

SESSION_COOKIE = "notifier_ui_session"
STORE_NAME = "notifier-ui-sessions"
# Where a handler asks for a new session id (connection state key).
ROTATE_STATE_KEY = "ui_rotate_session"
# Where the backend remembers the session as loaded, to skip writing it back unchanged.
_LOADED_STATE_KEY = "ui_session_loaded"


def _hashed(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _interval(seconds: int | datetime.timedelta | None) -> datetime.timedelta | None:
    if seconds is None or isinstance(seconds, datetime.timedelta):
        return seconds
    return datetime.timedelta(seconds=seconds)


class PostgresStore(Store):
    """A Litestar store on ``notifier.ui_sessions``; the pool is bound at start-up."""

    def __init__(self) -> None:
        self._pool: Pool | None = None

    def bind(self, pool: Pool | None) -> None:
        """Use ``pool`` (None: the app is shutting down)."""
        self._pool = pool

    @property
    def pool(self) -> Pool:
        """The bound pool."""
        if self._pool is None:
            raise RuntimeError("the dashboard's session store is used before start-up")
        return self._pool

    async def set(
        self, key: str, value: str | bytes, expires_in: int | datetime.timedelta | None = None
    ) -> None:
        """Store ``value`` under ``key`` for ``expires_in`` (None: no expiry)."""
        data = value.encode() if isinstance(value, str) else value
        async with single_statement(self.pool) as conn:
            await queries.save_session(conn, _hashed(key), data, _interval(expires_in))

    async def get(
        self, key: str, renew_for: int | datetime.timedelta | None = None
    ) -> bytes | None:
        """The live value under ``key``, its expiry renewed to ``renew_for`` from now."""
        async with single_statement(self.pool) as conn:
            return await queries.read_session(conn, _hashed(key), _interval(renew_for))

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        async with single_statement(self.pool) as conn:
            await queries.delete_session(conn, _hashed(key))

    async def delete_all(self) -> None:
        """Forget every session."""
        async with single_statement(self.pool) as conn:
            await queries.delete_all_sessions(conn)

    async def exists(self, key: str) -> bool:
        """Whether a live value is stored under ``key``."""
        async with single_statement(self.pool) as conn:
            return await queries.session_exists(conn, _hashed(key))

    async def expires_in(self, key: str) -> int | None:
        """Whole seconds until ``key`` expires (None: unknown, expired or never)."""
        async with single_statement(self.pool) as conn:
            left = await queries.session_expires_in(conn, _hashed(key))
        return None if left is None else int(left.total_seconds())

    async def delete_expired(self) -> int:
        """Remove every expired session; how many there were."""
        async with single_statement(self.pool) as conn:
            return await queries.delete_expired_sessions(conn)


class DashboardSessionBackend(ServerSideSessionBackend):
    """Stores a session only when it holds something and changed; see the module docs."""

    async def load_from_connection(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> dict[str, Any]:
        """The session of the request's cookie (empty if none, unknown or expired)."""
        session_id = connection.cookies.get(self.config.key)
        if not session_id or session_id == "null":
            return {}
        store = self.config.get_store_from_app(connection.scope["app"])
        data = await self.get(session_id, store=store)
        if data is None:
            return {}
        connection.state[_LOADED_STATE_KEY] = data
        return self.deserialize_data(data)

    async def get(self, session_id: str, store: Store) -> bytes | None:
        """The session's data, its idle expiry renewed on every access."""
        return await store.get(session_id, renew_for=self.config.max_age)

    async def store_in_message(
        self,
        scope_session: ScopeSession,
        message: Message,
        connection: ASGIConnection[Any, Any, Any, Any],
    ) -> None:
        """Save, replace or delete the session, and set or clear its cookie, as needed."""
        store = self.config.get_store_from_app(connection.scope["app"])
        headers = MutableScopeHeaders.from_message(message)
        cookie_id = connection.cookies.get(self.config.key)
        if cookie_id == "null":
            cookie_id = None
        if scope_session is Empty or not scope_session:
            if cookie_id:
                await self.delete(cookie_id, store=store)
                headers.add("Set-Cookie", self._cookie("", max_age=0))
            return
        data = self.serialize_data(scope_session, connection.scope)
        loaded = connection.state.get(_LOADED_STATE_KEY)
        if cookie_id and loaded is not None and not connection.state.get(ROTATE_STATE_KEY):
            if data != loaded:
                await self.set(cookie_id, data, store=store)
            return
        if cookie_id:
            await self.delete(cookie_id, store=store)
        session_id = self.generate_session_id()
        await self.set(session_id, data, store=store)
        headers.add("Set-Cookie", self._cookie(session_id))

    def _cookie(self, value: str, *, max_age: int | None = None) -> str:
        config = self.config
        return Cookie(
            key=config.key,
            value=value,
            path=config.path,
            httponly=True,
            samesite=config.samesite,
            # Max-Age=0 deletes the cookie; no Max-Age: it ends with the browser.
            max_age=max_age,
        ).to_header(header="")


@dataclass
class DashboardSessionConfig(ServerSideSessionConfig):
    """Litestar's server-side session config with :class:`DashboardSessionBackend`."""

    _backend_class = DashboardSessionBackend


def session_config(idle: datetime.timedelta, path: str) -> DashboardSessionConfig:
    """Sessions for the routes under ``path``: cookie HttpOnly, SameSite=Strict, no
    Max-Age (it ends with the browser), idle expiry ``idle`` on the server."""
    return DashboardSessionConfig(
        key=SESSION_COOKIE,
        store=STORE_NAME,
        max_age=int(idle.total_seconds()),
        path=path,
        httponly=True,
        samesite="strict",
        # Secure is added per request, when it came over https (ui.plugin).
        secure=False,
    )
