"""A loopback HTTP receiver that misbehaves on request, for the bounded-receiver tests.

It runs an asyncio server in a thread of its own, so a test can aim a worker process or
the channel in the test's own event loop at it. What it does depends on the path's last
segment:

- ``/huge``: 200 with a body of :data:`HUGE_BODY_BYTES` (1 GiB), produced as it is sent
  from one reused 64 KiB block: nothing of that size is ever allocated;
- ``/huge-error``: the same with status 500, the body starting with :data:`ERROR_TEXT`;
- ``/long-header``: 200 with one header line of 100 KiB;
- ``/many-headers``: 200 with 10,000 small header fields;
- ``/trickle-body``: 200 announcing 1 MiB and sending one byte every 50 ms;
- ``/hang``: never answers, until the client goes away or the server stops;
- ``/hold``: answers 200 once the test calls :meth:`HostileReceiver.release`;
- anything else: 200 at once, with an empty body.

It keeps, per request, the path, the ``webhook-id`` and when it arrived; it counts the
requests open at once (a request is open from its arrival until it is answered or its
connection closes) and the most that ever were, and the body bytes each answer got out.
Connections are kept alive between requests, as the webhook channel reuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field

HUGE_BODY_BYTES = 1 << 30
BLOCK = b"x" * 65536
ERROR_TEXT = b"upstream exploded\r\n\tat line 1 " + b"!" * 400


@dataclass
class Arrival:
    path: str
    webhook_id: str
    arrived: float  # time.monotonic()


@dataclass
class HostileReceiver:
    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    open_requests: int = 0
    max_open_requests: int = 0
    # Body bytes sent per answer of /huge and /huge-error, once its connection ended.
    body_bytes_sent: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _released: asyncio.Event | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def ids(self, path_end: str = "") -> set[str]:
        """The webhook-ids of the requests whose path ends in ``path_end``."""
        return {a.webhook_id for a in self.snapshot() if a.path.endswith(path_end)}

    def release(self) -> None:
        """Answer every request held at ``/hold``, and those to come."""
        assert self._loop is not None
        assert self._released is not None
        self._loop.call_soon_threadsafe(self._released.set)

    def _opened(self, arrival: Arrival) -> None:
        with self.lock:
            self.arrivals.append(arrival)
            self.open_requests += 1
            self.max_open_requests = max(self.max_open_requests, self.open_requests)

    def _closed(self) -> None:
        with self.lock:
            self.open_requests -= 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; whether the connection may carry another."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
        path = request_line.split(" ")[1]
        self._opened(Arrival(path, headers.get("webhook-id", ""), time.monotonic()))
        try:
            return await self._answer(path.rsplit("/", 1)[-1], reader, writer)
        finally:
            self._closed()

    async def _answer(
        self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if kind == "hang":
            await reader.read(1)  # b"" once the client gives up and closes
            return False
        if kind in {"huge", "huge-error"}:
            status = b"200 OK" if kind == "huge" else b"500 Internal Server Error"
            writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n" % (status, HUGE_BODY_BYTES))
            sent = 0
            try:
                if kind == "huge-error":
                    writer.write(ERROR_TEXT)
                    sent += len(ERROR_TEXT)
                while sent < HUGE_BODY_BYTES:
                    writer.write(BLOCK)
                    await writer.drain()
                    sent += len(BLOCK)
            finally:
                with self.lock:
                    self.body_bytes_sent.append(sent)
            return False
        if kind == "long-header":
            writer.write(b"HTTP/1.1 200 OK\r\nx-long: " + b"a" * 102400 + b"\r\n")
        elif kind == "many-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for index in range(10000):
                writer.write(b"x-field-%d: yes\r\n" % index)
                await writer.drain()
        elif kind == "trickle-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n")
            while True:
                await writer.drain()
                writer.write(b"x")
                await asyncio.sleep(0.05)
        elif kind == "hold":
            assert self._released is not None
            await self._released.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return True


@contextlib.contextmanager
def hostile_receiver() -> Iterator[HostileReceiver]:
    """Serve a :class:`HostileReceiver` on 127.0.0.1 from a thread; stopped on exit."""
    state = HostileReceiver()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopping: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stopping
        stopping = asyncio.Event()
        state._loop = loop
        state._released = asyncio.Event()
        server = await asyncio.start_server(state._handle, "127.0.0.1", 0, backlog=256)
        state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started.set()
        await stopping.wait()
        server.close()
        # Handlers still running (held, hanging, trickling) end once their connection does.
        state._released.set()
        for writer in list(state._writers):
            writer.transport.abort()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        await server.wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10), "the receiver did not start"
    try:
        yield state
    finally:
        assert stopping is not None
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        loop.close()


@contextlib.contextmanager
def allocation_peak() -> Iterator[list[int]]:
    """The most memory Python held allocated at once inside the block (bytes): one number in
    the list yielded, once the block is over."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
        peak.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
