"""A fast webhook receiver for the benchmarks: asyncio, HTTP/1.1 keep-alive, answers 200.

Records when each notification arrived (``time.time()``, keyed by ``data.notification_id``
of the Standard Webhooks body, or the ``x-notification-id`` header the Celery baseline
sends). ``GET /stats`` returns ``{"count": n, "bytes": body bytes, "arrivals": {id: t}}``;
``GET /sample`` the first POST since the last reset (``{"headers": {...}, "body": "..."}``),
which the pg-boss peer sends again with its own ids; ``GET /reset`` clears.

    python bench/receiver.py PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

arrivals: dict[str, float] = {}
received = 0
body_bytes = 0
sample: dict[str, object] = {}


def notification_id(headers: dict[bytes, bytes], body: bytes) -> str:
    given = headers.get(b"x-notification-id")
    if given:
        return given.decode()
    # The webhook body carries it in data.notification_id; anything else (the load
    # generator's calibration run) is counted under its arrival number.
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(body)["data"]["notification_id"])
    return f"anonymous-{received}"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global received, body_bytes  # noqa: PLW0603 - one process, one set of counters
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            now = time.time()
            request_line, *lines = head.split(b"\r\n")
            headers = {}
            for line in lines:
                if b":" in line:
                    name, value = line.split(b":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            method, path, _ = request_line.split(b" ", 2)
            payload = b""
            if method == b"POST":
                received += 1
                body_bytes += len(body)
                arrivals.setdefault(notification_id(headers, body), now)
                if not sample:
                    sample["headers"] = {k.decode(): v.decode() for k, v in headers.items()}
                    sample["body"] = body.decode()
            elif path.startswith(b"/stats"):
                payload = json.dumps(
                    {"count": received, "bytes": body_bytes, "arrivals": arrivals}
                ).encode()
            elif path.startswith(b"/sample"):
                payload = json.dumps(sample).encode()
            elif path.startswith(b"/reset"):
                arrivals.clear()
                sample.clear()
                received = body_bytes = 0
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
