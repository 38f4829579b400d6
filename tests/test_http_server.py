"""The API as `notifier api` serves it: uvicorn with each answer written at once
(notifier.http.server), over a raw socket so that the bytes on the wire are seen."""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest

pytestmark = pytest.mark.usefixtures("live_api")


def _connect(live_api: str) -> socket.socket:
    parts = urllib.parse.urlsplit(live_api)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _publish_request(api_headers: dict[str, str], *, close: bool = False) -> bytes:
    body = json.dumps({"type": "wire.checked", "payload": {"n": 1}}).encode()
    head = [
        "POST /api/v1/events/ HTTP/1.1",
        "host: test",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in api_headers.items()),
        *(["connection: close"] if close else []),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _read_answer(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, what follows) of the next answer, read by Content-Length."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return head, rest[:length], rest[length:]


def test_an_answer_arrives_in_one_piece(live_api: str, api_headers: dict[str, str]) -> None:
    """Head and body go out in one write: the first read after the request has both."""
    with _connect(live_api) as sock:
        for _ in range(3):  # on one keep-alive connection
            sock.sendall(_publish_request(api_headers))
            first = sock.recv(65536)
            head, body, rest = _read_answer(sock, first)
            assert head.startswith(b"HTTP/1.1 201"), head
            assert first == head + b"\r\n\r\n" + body
            assert rest == b""
            assert json.loads(body)["type"] == "wire.checked"


def test_pipelined_requests_are_answered_in_order(
    live_api: str, api_headers: dict[str, str]
) -> None:
    with _connect(live_api) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n"
            + _publish_request(api_headers)
            + b"GET /nowhere HTTP/1.1\r\nhost: test\r\n\r\n"
        )
        statuses = []
        rest = b""
        for _ in range(3):
            head, _, rest = _read_answer(sock, rest)
            statuses.append(head.split(b" ", 2)[1])
        assert statuses == [b"200", b"201", b"404"]


def test_an_answer_before_a_close_is_sent_whole(live_api: str, api_headers: dict[str, str]) -> None:
    """Writes held for the end of the loop's turn still go out when the server closes."""
    with _connect(live_api) as sock:
        sock.sendall(_publish_request(api_headers, close=True))
        head, body, rest = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 201"), head
        assert json.loads(body)["type"] == "wire.checked"
        assert rest == b""
        assert sock.recv(65536) == b""  # then closed
