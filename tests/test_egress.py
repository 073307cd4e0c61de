"""The server-side push egress policy and IPv6 addresses that carry an IPv4 address inside them.

Each form (RFC 4291 mapped/compatible, RFC 2765 translated, RFC 6052/8215 NAT64, RFC 3056 6to4, RFC 4380
Teredo, RFC 5214 ISATAP) is tried with a public embedded address (allowed) and a private one (refused), and
every refusal must happen before a socket is opened: ``socket.create_connection`` is replaced by a trap, so
no test here can send a packet anywhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cargohold.server.control.egress import EgressDenied, EgressPolicy, EgressTransport, embedded_ipv4, parse_networks

# form -> (addresses whose embedded IPv4 is public: allowed, addresses embedding a refused IPv4: refused)
FORMS: dict[str, tuple[list[str], list[str]]] = {
    "ipv4-mapped": (["::ffff:8.8.8.8"], ["::ffff:10.0.0.5", "::ffff:127.0.0.1"]),
    "ipv4-compatible": (["::8.8.8.8"], ["::10.0.0.5", "::169.254.169.254"]),
    "ipv4-translated": (["::ffff:0:808:808"], ["::ffff:0:a00:5"]),
    "nat64-well-known": (["64:ff9b::8.8.8.8"], ["64:ff9b::a00:5", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1"]),
    # Local-use NAT64 does not say its prefix length: 8.8.8.8 at every RFC 6052 position is allowed; 10.0.0.5
    # at the /48 position is refused even though the /96 reading of the same address is 8.8.8.8.
    "nat64-local-use": (["64:ff9b:1:808:8:808:808:808"], ["64:ff9b:1::a00:5", "64:ff9b:1:a00:0:500:808:808"]),
    "6to4": (["2002:808:808::1"], ["2002:a00:5::1", "2002:a9fe:a9fe::1"]),
    # Teredo: server 8.8.8.8 and client 140.82.112.3 (stored inverted) / a private client / a private server.
    "teredo": (["2001:0:808:808::73ad:8ffc"], ["2001:0:808:808::f5ff:fffa", "2001:0:a00:5::73ad:8ffc"]),
    # ISATAP behind a public prefix; with a private IPv4 inside, or behind a link-local prefix, refused.
    "isatap": (
        ["2a00:1450:4001::200:5efe:808:808", "2a00:1450:4001::5efe:808:808"],
        ["2a00:1450:4001::200:5efe:a00:5", "2a00:1450:4001::5efe:7f00:1", "fe80::200:5efe:808:808"],
    ),
}


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Fail any attempt to open a socket; resolve ``*.embed.test`` names to the address in their label."""
    attempts: list[Any] = []

    def trap(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        raise AssertionError(f"a connection to {address} was attempted")

    real = socket.getaddrinfo

    def fake_dns(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".embed.test"):
            literal = ipaddress.ip_address(host.removesuffix(".embed.test").replace("-", ":"))
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(literal), port, 0, 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", trap)
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)
    yield attempts
    assert attempts == []


def _name(address: str) -> str:
    return ipaddress.ip_address(address).exploded.replace(":", "-") + ".embed.test"


@pytest.mark.parametrize("form", FORMS)
def test_embedded_ipv4_is_judged_by_the_ipv4_address(form: str, no_connections: list[Any]) -> None:
    allowed, refused = FORMS[form]
    policy = EgressPolicy()
    for text in allowed:
        address = ipaddress.ip_address(text)
        assert isinstance(address, ipaddress.IPv6Address)
        assert embedded_ipv4(address), f"{text} should be recognised as {form}"
        assert policy.allows(address), text
    for text in refused:
        address = ipaddress.ip_address(text)
        assert not policy.allows(address), f"{text} ({form}) must be refused"
        with pytest.raises(EgressDenied, match="outside its push policy"):
            policy.resolve(_name(text), 443)
        # Through the transport a push uses, by literal and by name: refused before any socket.
        with httpx.Client(transport=EgressTransport(policy)) as client:
            for url in (f"http://[{address}]:5000/v2/", f"https://{_name(text)}/v2/"):
                with pytest.raises(httpx.ConnectError) as caught:
                    client.get(url)
                assert isinstance(caught.value.__cause__, EgressDenied), url


def test_refusal_names_the_embedded_address(no_connections: list[Any]) -> None:
    with pytest.raises(EgressDenied, match=r"embedding IPv4 10\.0\.0\.5"):
        EgressPolicy().resolve(_name("64:ff9b::a00:5"), 5000)


def test_an_admin_allowed_ipv4_network_allows_its_embedded_forms() -> None:
    policy = EgressPolicy(parse_networks(["10.0.0.0/8"]))
    for text in ("64:ff9b::a00:5", "2002:a00:5::1", "::ffff:10.0.0.5", "2001:0:a00:5::73ad:8ffc"):
        assert policy.allows(ipaddress.ip_address(text)), text
    for text in ("64:ff9b::7f00:1", "2002:c0a8:101::1", "2001:0:808:808::3f57:fefe"):
        assert not policy.allows(ipaddress.ip_address(text)), text
    # Listing the IPv6 prefix itself is an explicit choice too.
    assert EgressPolicy(parse_networks(["64:ff9b::/96"])).allows(ipaddress.ip_address("64:ff9b::a00:5"))


def test_plain_ipv6_addresses_embed_nothing() -> None:
    for text in ("2606:4700::1111", "::1", "::", "fe80::1", "2a00:1450:4001::68"):
        address = ipaddress.ip_address(text)
        assert isinstance(address, ipaddress.IPv6Address)
        assert embedded_ipv4(address) is None, text
    assert EgressPolicy().allows(ipaddress.ip_address("2606:4700::1111"))
    assert not EgressPolicy().allows(ipaddress.ip_address("::1"))
