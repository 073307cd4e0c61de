"""The real client behind trusted reverse proxies (``--trusted-proxy CIDR``, ``--proxy-header``).

Behind nginx every connection comes from the proxy, so without this the failed-authentication rate limit
would be one bucket for all of CI (one job's eleven bad tokens lock out every runner) and the access log
would name the proxy for everyone.

Rules:

* Forwarding headers are read only when the TCP peer is a trusted proxy; anyone else is taken at its peer
  address, whatever headers it sends (a client cannot claim to be someone else).
* The chain is walked from the right (the hop nearest to us): every address that is itself a trusted proxy
  is skipped, and the first one that is not is the client. Entries left of it were written by the client or
  by proxies we do not know, so they prove nothing. If every hop is trusted, the left-most is the client.
* An entry that is not an address (``unknown``, an obfuscated ``_hidden`` node, garbage) ends the walk: the
  hop that handed it to us is the client as far as we can vouch.
* Only one header is read, the one ``--proxy-header`` names: ``X-Forwarded-For`` (with ``X-Forwarded-Proto``)
  or ``Forwarded`` (RFC 7239). Reading both would let a client smuggle the one its proxy passes through
  unchanged.

The outcome is stored on the request (:func:`client_address`, :func:`client_scheme`) for the rate limiter,
the access log and the audit log; the TCP peer stays ``request.remote``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web

from cargohold.edge.requestid import set_client_address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CLIENT_ADDRESS_KEY = web.RequestKey("cargohold.client_address", str)
CLIENT_SCHEME_KEY = web.RequestKey("cargohold.client_scheme", str)


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:443``, ``2001:db8::1``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class Hop:
    """One entry of a forwarding chain: the address it names (None when not an address) and its scheme."""

    address: IPAddress | None
    proto: str | None = None


def x_forwarded_for_hops(values: Iterable[str], proto_values: Iterable[str]) -> list[Hop]:
    """Hops of every ``X-Forwarded-For`` header, in order; ``X-Forwarded-Proto`` (its right-most value, the
    one our nearest proxy wrote) goes on the last hop."""
    hops = [Hop(parse_address(item)) for value in values for item in value.split(",") if item.strip()]
    protos = [item.strip().lower() for value in proto_values for item in value.split(",") if item.strip()]
    if hops and protos:
        hops[-1] = Hop(hops[-1].address, protos[-1])
    return hops


def forwarded_hops(values: Iterable[str]) -> list[Hop]:
    """Hops of every RFC 7239 ``Forwarded`` header: each element's ``for`` and ``proto``."""
    hops: list[Hop] = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            pairs = {}
            for pair in _split_outside_quotes(element, ";"):
                name, sep, raw = pair.strip().partition("=")
                if sep:
                    pairs[name.strip().lower()] = raw.strip().strip('"')
            if "for" in pairs or "proto" in pairs:
                hops.append(Hop(parse_address(pairs.get("for", "")), pairs.get("proto", "").lower() or None))
    return hops


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


class TrustedProxies:
    """Which peers may name the client, and how to find the client in what they send."""

    def __init__(self, networks: Sequence[IPNetwork], header: str = "x-forwarded-for") -> None:
        if header not in ("x-forwarded-for", "forwarded"):
            raise ValueError(f"unknown proxy header {header!r}; use x-forwarded-for or forwarded")
        self.networks = tuple(networks)
        self.header = header

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def resolve_from(self, peer: str | None, hops: Callable[[], list[Hop]]) -> tuple[str | None, str | None]:
        """``(client address, client scheme or None)`` for a request from ``peer``, whose forwarding chain
        ``hops`` reads (only when the peer is trusted: everyone else's headers are not even parsed)."""
        peer_address = parse_address(peer) if peer else None
        if not self.trusts(peer_address):
            return peer, None
        client: Hop = Hop(peer_address)
        scheme: str | None = None
        for hop in reversed(hops()):
            if hop.address is None:
                break
            client = hop
            scheme = hop.proto or scheme
            if not self.trusts(hop.address):
                break
        return str(client.address) if client.address is not None else peer, client.proto or scheme

    def hops_of(self, request: web.BaseRequest) -> list[Hop]:
        if self.header == "forwarded":
            return forwarded_hops(request.headers.getall("Forwarded", ()))
        return x_forwarded_for_hops(
            request.headers.getall("X-Forwarded-For", ()), request.headers.getall("X-Forwarded-Proto", ())
        )

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        proxies = self

        @web.middleware
        async def real_client(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            address, scheme = proxies.resolve_from(request.remote, lambda: proxies.hops_of(request))
            if address is not None:  # None: no peer address at all (a Unix socket); readers fall back
                request[CLIENT_ADDRESS_KEY] = address
            request[CLIENT_SCHEME_KEY] = scheme or request.scheme
            set_client_address(address)
            return await handler(request)

        return real_client


def client_address(request: web.BaseRequest) -> str:
    """The client's address: from a trusted proxy's header when there is one, else the TCP peer."""
    return request.get(CLIENT_ADDRESS_KEY) or request.remote or "unknown"


def client_scheme(request: web.BaseRequest) -> str:
    """``https`` or ``http`` as the client used it (a trusted proxy's word for it, else our own socket's)."""
    return str(request.get(CLIENT_SCHEME_KEY) or request.scheme)
