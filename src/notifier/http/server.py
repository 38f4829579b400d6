"""How the API is served: uvicorn with its httptools protocol, each answer in one write.

uvicorn writes an answer's status line and headers as soon as the application starts the
answer, and its body in a second write: two ``send`` system calls, two TCP segments and
two wake-ups of the client for every answer (on loopback the kernel delivers a segment in
the sender's system call; docs/performance.md, "One write per answer, and less Python per
publish"). Here the writes a
connection makes during one turn of the event loop are joined into one: an answer's head
and body go out together, and nothing is held back past the turn in which it was written.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _JoinedWrites:
    """A transport that holds each turn's writes and sends them as one at its end.

    Everything but writing and closing goes straight to the wrapped transport (flow
    control, addresses, ``is_closing``).
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def close(self) -> None:
        # What was written before a close is still sent: the transport sends its buffer
        # before it closes.
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class JoinedWritesProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, whose writes of one loop turn go out as one."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_JoinedWrites(transport, self.loop))  # type: ignore[arg-type]
