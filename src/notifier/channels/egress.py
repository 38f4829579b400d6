"""Where outgoing HTTP may connect: public addresses only, unless an allowlist says otherwise.

A webhook URL is chosen by whoever creates a rule or a notification, so without a guard it
could make a worker POST to the cloud metadata service, to a database admin page on the
private network, or to the worker's own loopback. Every connection the webhook channel opens
goes through :class:`GuardedBackend`, which resolves the host name, vets **every** address it
resolves to, and then connects to the vetted address itself: a DNS answer that changes
between the check and the connect (DNS rebinding) cannot slip a private address in. TLS still
verifies the certificate against the host name of the URL, and the ``Host`` header is that
name too.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import anyio
import httpcore
import httpx

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# The well-known NAT64 prefix (RFC 6052): 64:ff9b::a.b.c.d reaches a.b.c.d through a gateway.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


class BlockedAddressError(Exception):
    """The target resolves to an address outgoing requests must not reach."""


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: mapped, NAT64 or 6to4."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _kind(address: IPAddress) -> str | None:
    """What makes ``address`` unfit for outgoing requests ("a loopback"), or None if public."""
    if address.is_loopback:
        return "a loopback"
    if address.is_link_local:  # 169.254.169.254, the cloud metadata service, among them
        return "a link-local"
    if address.is_unspecified:
        return "an unspecified"
    if address.is_multicast:
        return "a multicast"
    if address.is_private:
        return "a private"
    if address.is_reserved:
        return "a reserved"
    if not address.is_global:  # 100.64.0.0/10 (carrier-grade NAT) and the like
        return "a non-public"
    return None


def address_problem(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why outgoing requests must not reach ``address`` ("10.0.0.1, a private address"), or
    None if they may.

    Public unicast addresses may be reached; so may any address inside ``allowed``. An IPv6
    address that carries an IPv4 one (``::ffff:10.0.0.1``, NAT64, 6to4) must pass as that
    IPv4 address too.
    """
    embedded = _embedded_ipv4(address)
    candidates = [address] if embedded is None else [address, embedded]
    if any(candidate in network for candidate in candidates for network in allowed):
        return None
    if embedded is not None:
        if (kind := _kind(embedded)) is not None:
            return f"{address}, which reaches {embedded}, {kind} address"
        # Python calls the whole of ::/8 reserved, the mapped and NAT64 ranges included:
        # those are judged by the IPv4 address alone.
        if isinstance(address, ipaddress.IPv6Address) and (
            address.ipv4_mapped is not None or address in _NAT64
        ):
            return None
    if (kind := _kind(address)) is not None:
        return f"{address}, {kind} address"
    return None


def numeric_host(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any numeric form a resolver accepts (``127.1``,
    ``0x7f.0.0.1``, ``2130706433``, ``::1``), without any DNS lookup; None for a name."""
    try:
        infos = socket.getaddrinfo(
            host, None, proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST
        )
    except (OSError, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(infos[0][4][0])


def host_problem(host: str, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``host`` is certainly not a permitted target, judged without DNS: an address
    literal that is not allowed, or a ``localhost`` name. Other names are judged when
    :class:`GuardedBackend` resolves them."""
    address = numeric_host(host)
    if address is None and (host == "localhost" or host.endswith(".localhost")):
        address = _LOOPBACK  # RFC 6761: such names always mean loopback
    return None if address is None else address_problem(address, allowed)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class QuickProbeStream(httpcore.AsyncNetworkStream):
    """A connection's stream, answering httpcore's "is it readable?" probe cheaply.

    httpcore asks that of every idle pooled connection whenever a request starts or ends.
    Through anyio each answer builds the stream's whole attribute table, the peer's address
    included (a system call): at a few hundred webhooks per second that was a sixth of a
    worker's time. This answers from the socket with one zero-timeout poll, as httpcore does
    once it has the socket.
    """

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: socket.socket | None = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """As the wrapped stream."""
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """As the wrapped stream."""
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        """As the wrapped stream."""
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        """As the wrapped stream; the TLS stream runs over the same socket."""
        return QuickProbeStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        """As the wrapped stream, but "is_readable" straight from the socket."""
        if info == "is_readable":
            if self._socket is None or self._socket.fileno() < 0:
                return True  # gone: the next read returns b"", as for a closed connection
            probe = select.poll()
            probe.register(self._socket, select.POLLIN)
            return bool(probe.poll(0))
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to vetted addresses."""

    def __init__(self, allowed: Sequence[IPNetwork] = ()) -> None:
        self._allowed = tuple(allowed)
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host``, refuse if any of its addresses is not allowed, connect to one."""
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        # One bad address is enough to refuse: which one a client picks is not ours to steer.
        for address in addresses:
            if (problem := address_problem(address, self._allowed)) is not None:
                raise BlockedAddressError(f"{host} resolves to {problem}")
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                stream = await self._backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
                return QuickProbeStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None, "getaddrinfo returns at least one address or raises"
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: webhooks go over TCP."""
        raise BlockedAddressError("unix sockets are not a webhook target")

    async def sleep(self, seconds: float) -> None:
        """As the default backend does."""
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on a :class:`GuardedBackend`.

    httpx does not pass a network backend through, so this builds the httpcore pool the
    way httpx does, plus the backend. No proxy: a proxy would resolve the host itself,
    out of the guard's sight.
    """

    def __init__(self, allowed: Sequence[IPNetwork] = ()) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            # The limits httpx.AsyncClient gives the transport it builds itself.
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(allowed),
        )
