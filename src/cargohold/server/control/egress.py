"""Which hosts the server may connect to on a client's behalf, and the httpx transport that enforces it.

Server-side push (:mod:`cargohold.server.control.blob_copies`) makes the server open connections to a registry the
*caller* names. Unchecked, that is a server-side request forgery tool: any project token could make the
server talk to its own admin port, to a database on the private network, or to the cloud metadata
service at 169.254.169.254. So by default only publicly routable addresses are allowed (Python's
``ip_address.is_global``: not loopback, private, link-local, CGNAT, reserved, multicast), and an admin
adds the private networks their registries live on (``--push-allow-network 10.0.0.0/8``).

The check happens where the socket is opened, not on the name: :class:`EgressBackend` resolves the host,
drops every address the policy refuses, and connects to an allowed address itself, while TLS still
verifies the certificate against the original host name. A DNS answer that changes between a first check
and the connection (DNS rebinding) therefore cannot slip through, and neither can a redirect, because
every connection of the transport goes through the same backend.

IPv6 addresses that carry an IPv4 address inside them are judged by that IPv4 address (see
:func:`embedded_ipv4`): on a host with NAT64 or a 6to4/Teredo/ISATAP path, ``64:ff9b::a00:5`` *is*
10.0.0.5, although ``ipaddress`` calls it global.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpcore
import httpx

from cargohold.client.retry import NotRetryable
from cargohold.client.tls import verify_option

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressDenied(httpcore.ConnectError, NotRetryable):
    """No address of the host is allowed. A ``ConnectError`` so httpx surfaces it as one; never retried (the
    policy gives the same answer every time)."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``--push-allow-network`` values (CIDRs or single addresses, comma-separated allowed); ``ValueError``
    names the bad one."""
    networks: list[IPNetwork] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not a network: write a CIDR like 10.0.0.0/8 or an address") from None
    return tuple(networks)


@dataclass(frozen=True)
class EgressPolicy:
    """Allowed destinations: public addresses (unless ``allow_public`` is off) plus ``allowed_networks``."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_public: bool = True

    def allows(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed_networks):
            return True  # an admin listed this very network (even a NAT64 prefix): their call
        if isinstance(address, ipaddress.IPv6Address):
            embedded = embedded_ipv4(address)
            if embedded is not None:
                # The packets end up at (or pass through) these IPv4 hosts: each must be allowed itself.
                if not all(self.allows(inner) for inner in embedded):
                    return False
                if not is_isatap(address):
                    return True  # a translation prefix: the IPv4 address is the destination
        return self.allow_public and address.is_global and not address.is_multicast

    def resolve(self, host: str, port: int) -> list[str]:
        """The allowed addresses of ``host`` in resolver order; :class:`EgressDenied` says why when none is."""
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        found = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
        allowed = [a for a in found if self.allows(ipaddress.ip_address(a))]
        if not allowed:
            raise EgressDenied(
                f"this Cargohold server may not connect to {host} ({', '.join(found) or 'no address'}): "
                f"{_describe(found)} are outside its push policy; an admin can allow them with "
                "--push-allow-network (CARGOHOLD_PUSH_ALLOW_NETWORKS)"
            )
        return allowed


IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
"""RFC 4291 (deprecated) ``::a.b.c.d``; ``::`` and ``::1`` are in it too, and are judged as what they are."""
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
"""RFC 2765 SIIT ``::ffff:0:a.b.c.d``."""
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
"""RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 destination."""
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
"""RFC 8215 local-use NAT64 prefix; the operator picks a prefix length from /48 to /96 inside it."""
NAT64_PREFIX_LENGTHS = (48, 56, 64, 96)
"""RFC 6052 prefix lengths that fit inside the local-use /48 (32 and 40 are shorter than it)."""
ISATAP_MARKER = 0x00005EFE
"""RFC 5214 interface identifier ``0000:5efe:a.b.c.d`` (``0200:5efe`` with the universal bit set)."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 address hands its packets to, or ``None`` when it embeds none.

    Covers IPv4-mapped, IPv4-compatible and IPv4-translated addresses, NAT64 (well-known and local-use
    prefixes, RFC 6052), 6to4 (RFC 3056), Teredo (RFC 4380: the server and the de-obfuscated client) and
    ISATAP interface identifiers (RFC 5214). The local-use NAT64 prefix does not say its length, so every
    length it may have yields a candidate; the caller allows the address only if it allows them all.
    """
    value = int(address)
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    elif (address in IPV4_COMPATIBLE and value > 1) or address in IPV4_TRANSLATED or address in NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    elif address in NAT64_LOCAL_USE:
        found.extend(_rfc6052_ipv4(value, length) for length in NAT64_PREFIX_LENGTHS)
    elif address.sixtofour is not None:
        found.append(address.sixtofour)
    elif address.teredo is not None:
        found.extend(address.teredo)
    if is_isatap(address):
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return tuple(dict.fromkeys(found)) or None


def is_isatap(address: ipaddress.IPv6Address) -> bool:
    """An ISATAP interface identifier (the u and g bits of its first octet may be set) behind any prefix.

    The prefix in front of it is ordinary IPv6, routed as usual to an ISATAP router, so both the prefix
    and the embedded IPv4 address must pass the policy.
    """
    return (int(address) >> 32) & 0xFCFFFFFF == ISATAP_MARKER


def _rfc6052_ipv4(value: int, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address RFC 6052 (section 2.2) places after a ``prefix_length``-bit prefix.

    Bits 64-71 (the "u" octet) never carry address bits, so an address that would straddle them is split
    around that octet.
    """
    octets = int.to_bytes(value, 16, "big")
    start = prefix_length // 8
    if prefix_length == 96:
        return ipaddress.IPv4Address(octets[12:16])
    carried = [octet for index, octet in enumerate(octets[start:], start) if index != 8]
    return ipaddress.IPv4Address(bytes(carried[:4]))


def _describe(addresses: Sequence[str]) -> str:
    kinds = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
        if inner:
            kinds.append(f"IPv6 addresses embedding IPv4 {', '.join(map(str, inner))}")
            continue
        kind = (
            "loopback"
            if address.is_loopback
            else "link-local"
            if address.is_link_local
            else "private"
            if address.is_private
            else "non-public"
        )
        kinds.append(f"{kind} addresses")
    return " and ".join(dict.fromkeys(kinds)) or "its addresses"


class EgressBackend(httpcore.NetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self.policy.resolve(host, port):
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        raise EgressDenied("connections to Unix sockets are not allowed for server-side pushes")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class EgressTransport(httpx.HTTPTransport):
    """An ``httpx.HTTPTransport`` whose connections all go through :class:`EgressBackend`.

    httpx does not take a network backend, so the connection pool it built is replaced by an identical
    one that has ours. Proxies from the environment are ignored on purpose: a proxy would make the
    address check meaningless.
    """

    def __init__(self, policy: EgressPolicy, *, max_connections: int = 8) -> None:
        ssl_context = verify_option(True)
        assert isinstance(ssl_context, ssl.SSLContext)  # verify_option(True) is the shared verifying context
        super().__init__(verify=ssl_context, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):  # pragma: no cover
            raise RuntimeError("this httpx version cannot enforce the push policy; server-side push is unavailable")
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=EgressBackend(policy),
        )
