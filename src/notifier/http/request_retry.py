"""Run an API request once more when its database connection was lost before COMMIT.

A pooled connection can die under a request (``pg_terminate_backend``, a proxy or a
failover closing it) after the pool's checkout look and BEGIN found it fine. Nothing of the
lost transaction committed, so the whole request can run again on a fresh connection
instead of answering 503: the client sees one answer, and a 2xx still means committed.
Requests whose COMMIT was lost on the way (it may have committed) are never run again;
they answer 503 as before, and the client's retry (with its Idempotency-Key) decides.
"""

from __future__ import annotations

import logging
from typing import cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, ReceiveMessage, Scope, Send

from notifier.db import stop_watching, watch_transactions

logger = logging.getLogger("notifier.api")

# Runs of one request in all: the first and two more (connections terminated in a burst
# can take the first fresh one too). Each is safe: its lost run committed nothing.
RUNS = 3


def retry_lost_transactions_middleware(app: ASGIApp) -> ASGIApp:
    """Litestar middleware: a request answered 503 because a transaction lost its connection
    before COMMIT runs once more; its body is replayed from what the first run read."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        http_scope = scope
        received: list[ReceiveMessage] = []

        async def recording_receive() -> ReceiveMessage:
            message = await receive()
            received.append(message)
            return message

        for run in range(1, RUNS + 1):
            again = await _run_once(
                app, http_scope, _replaying(received, recording_receive), send, last=run == RUNS
            )
            if not again:
                return
            logger.warning(
                "%s %s: its connection was lost before COMMIT; running it again",
                http_scope["method"],
                http_scope["path"],
            )

    return middleware


def _replaying(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """A receive that gives ``messages`` again first, then reads on with ``receive``."""
    replay = list(messages)

    async def replaying_receive() -> ReceiveMessage:
        if replay:
            return replay.pop(0)
        return await receive()

    return replaying_receive


async def _run_once(
    app: ASGIApp, scope: HTTPScope, receive: Receive, send: Send, *, last: bool
) -> bool:
    """Run the request; True when its answer was held back to run it again (unless
    ``last``): a 503 for a transaction lost before COMMIT, and nothing else unsure."""
    outcomes, token = watch_transactions()
    held_back = False

    async def guarded_send(message: Message) -> None:
        nonlocal held_back
        if message["type"] == "http.response.start" and not last:
            held_back = message["status"] == 503 and outcomes.safe_to_retry
        if not held_back:
            await send(message)

    try:
        await app(cast(HTTPScope, dict(scope)), receive, guarded_send)
    finally:
        stop_watching(token)
    return held_back
