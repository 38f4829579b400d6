"""Where outgoing HTTP may connect: public addresses only, unless an allowlist says otherwise.

A webhook URL is chosen by whoever creates a rule or a notification, so without a guard it
could make a worker POST to the cloud metadata service, to a database admin page on the
private network, or to the worker's own loopback. Every connection the webhook channel opens
goes through :class:`GuardedResolver`: it resolves the host name, vets **every** address it
resolves to, and hands aiohttp the vetted addresses, which aiohttp then connects to: a DNS
answer that changes between the check and the connect (DNS rebinding) cannot slip a private
address in. Address literals, which aiohttp connects to without asking a resolver, are
vetted by :func:`check_addresses` before the request. TLS still verifies the certificate
against the host name of the URL, and the ``Host`` header is that name too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import TypeAlias

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# The well-known NAT64 prefix (RFC 6052): 64:ff9b::a.b.c.d reaches a.b.c.d through a gateway.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
DEFAULT_PORTS = {"http": 80, "https": 443}


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


def origin_of(url: str) -> str:
    """``scheme://host:port`` of an http(s) URL, as connections see it: one string for every
    spelling of one endpoint (case, IDNA, a trailing dot, an implicit default port, ``127.1``
    for ``127.0.0.1``), so that a per-host limit cannot be escaped by writing the URL
    differently. A URL that cannot be parsed is its own origin (its send fails anyway)."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    host = target.raw_host.decode("ascii").rstrip(".").lower()
    address = numeric_host(host)
    if address is not None:
        host = f"[{address}]" if address.version == 6 else str(address)
    return f"{target.scheme}://{host}:{port_of(target)}"


def port_of(url: httpx.URL) -> int | None:
    """The port a connection to ``url`` goes to: the one it names, else its scheme's."""
    return url.port if url.port is not None else DEFAULT_PORTS.get(url.scheme)


def host_problem(host: str, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``host`` is certainly not a permitted target, judged without DNS: an address
    literal that is not allowed, or a ``localhost`` name. Other names are judged when
    :class:`GuardedResolver` resolves them."""
    address = numeric_host(host)
    if address is None and (host == "localhost" or host.endswith(".localhost")):
        address = _LOOPBACK  # RFC 6761: such names always mean loopback
    return None if address is None else address_problem(address, allowed)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def check_addresses(
    host: str, addresses: Sequence[IPAddress], allowed: Sequence[IPNetwork] = ()
) -> None:
    """Raise :class:`BlockedAddressError` unless every address of ``host`` may be reached.

    One bad address is enough to refuse: which one a client picks is not ours to steer.
    """
    for address in addresses:
        if (problem := address_problem(address, allowed)) is not None:
            raise BlockedAddressError(f"{host} resolves to {problem}")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for the webhook channel: only vetted addresses come out of it."""

    def __init__(self, allowed: Sequence[IPNetwork] = ()) -> None:
        self._allowed = tuple(allowed)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host``; refuse if any of its addresses is not allowed."""
        addresses = await resolve(host, port)
        check_addresses(host, addresses, self._allowed)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""
