"""Trusted reverse proxies (``--trusted-proxy``), request IDs and JSON logs.

The chain rules are checked on :class:`TrustedProxies` directly; the rest on real servers: one that trusts
127.0.0.1 as its proxy and logs JSON (so every test request pretends to come through nginx), and one that
trusts nobody.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cargohold.edge.proxies import TrustedProxies, forwarded_hops, x_forwarded_for_hops
from cargohold.edge.requestid import accepted_request_id
from servers import ServerProcess

BAD_TOKEN = "chp_" + "a" * 36


def networks(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr) for cidr in cidrs]


def resolve_xff(
    proxies: TrustedProxies, peer: str, xff: list[str], proto: list[str] = ()
) -> tuple[str | None, str | None]:  # type: ignore[assignment]
    return proxies.resolve_from(peer, lambda: x_forwarded_for_hops(xff, proto))


def test_right_most_untrusted_address_is_the_client() -> None:
    proxies = TrustedProxies(networks("10.0.0.0/8", "127.0.0.1/32"))
    # client -> 10.0.0.5 (inner proxy) -> 127.0.0.1 (nginx) -> us; the client forged a first entry.
    assert resolve_xff(proxies, "127.0.0.1", ["6.6.6.6, 203.0.113.9", "10.0.0.5"], ["https"]) == (
        "203.0.113.9",
        "https",
    )
    # Every hop trusted: the left-most is the client.
    assert resolve_xff(proxies, "127.0.0.1", ["10.0.0.7, 10.0.0.5"]) == ("10.0.0.7", None)
    # An entry that is not an address ends the walk at the hop that handed it over.
    assert resolve_xff(proxies, "127.0.0.1", ["203.0.113.9, unknown, 10.0.0.5"]) == ("10.0.0.5", None)
    # Ports, brackets and IPv4-mapped IPv6 are understood.
    assert resolve_xff(proxies, "127.0.0.1", ["[2001:db8::1]:4711"]) == ("2001:db8::1", None)
    assert resolve_xff(proxies, "::ffff:127.0.0.1", ["198.51.100.4:80"]) == ("198.51.100.4", None)
    # No header from a trusted proxy: the proxy itself.
    assert resolve_xff(proxies, "127.0.0.1", []) == ("127.0.0.1", None)


def test_untrusted_peers_headers_are_ignored() -> None:
    proxies = TrustedProxies(networks("10.0.0.0/8"))
    assert resolve_xff(proxies, "198.51.100.20", ["203.0.113.9"], ["https"]) == ("198.51.100.20", None)
    assert TrustedProxies([]).resolve_from(
        "127.0.0.1", lambda: pytest.fail("headers of an untrusted peer were read")
    ) == (
        "127.0.0.1",
        None,
    )


def test_forwarded_header_elements() -> None:
    proxies = TrustedProxies(networks("127.0.0.0/8"), "forwarded")
    hops = forwarded_hops(['for=6.6.6.6, for="[2001:db8::7]:1234";proto=https;by=_nginx', "for=127.0.0.2;proto=http"])
    assert proxies.resolve_from("127.0.0.1", lambda: hops) == ("2001:db8::7", "https")
    assert forwarded_hops(["for=_hidden"])[0].address is None
    with pytest.raises(ValueError, match="unknown proxy header"):
        TrustedProxies([], "x-real-ip")


def test_sane_request_ids_are_kept_others_replaced() -> None:
    assert accepted_request_id("3f2a-req.1:abc_DEF") == "3f2a-req.1:abc_DEF"
    for insane in ("", "x" * 129, "a b", "id\nforged=1", "é", None):
        replaced = accepted_request_id(insane)
        assert replaced != insane and len(replaced) == 24


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        data_dir=tmp_path_factory.mktemp("proxied") / "data",
        extra_args=["--trusted-proxy", "127.0.0.1/32", "--log-format", "json"],
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def json_log(server: ServerProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def test_forwarded_clients_have_their_own_rate_limit(proxied: ServerProcess) -> None:
    with proxied.anonymous() as http:
        bad = {"Authorization": f"Bearer {BAD_TOKEN}"}
        statuses = [http.get("/v2/", headers={**bad, "X-Forwarded-For": "203.0.113.7"}).status_code for _ in range(11)]
        assert statuses[:10] == [401] * 10 and statuses[10] == 429, statuses
        other = http.get("/v2/", headers={**bad, "X-Forwarded-For": "203.0.113.8"})
        assert other.status_code == 401, "another runner behind the same proxy is not locked out"
        again = http.get("/v2/", headers={**bad, "X-Forwarded-For": "203.0.113.7"})
        assert again.status_code == 429 and "203.0.113.7" in again.json()["errors"][0]["message"]
    access = [entry for entry in json_log(proxied) if entry["logger"] == "cargohold.access"]
    assert any(entry["remote"] == "203.0.113.8" for entry in access)
    assert not any(entry["remote"] == "127.0.0.1" and entry["path"] == "/v2/" for entry in access)


def test_untrusted_peers_share_their_own_limit_whatever_they_claim(server: ServerProcess) -> None:
    with server.anonymous() as http:
        bad = {"Authorization": f"Bearer {BAD_TOKEN}"}
        for index in range(10):
            assert http.get("/v2/", headers={**bad, "X-Forwarded-For": f"203.0.113.{index}"}).status_code == 401
        assert http.get("/v2/", headers={**bad, "X-Forwarded-For": "198.51.100.1"}).status_code == 429
    assert "remote=203.0.113" not in server.log()


def _push_tag(http: httpx.Client, repository: str, tag: str) -> None:
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    start = http.post(f"/v2/{repository}/blobs/uploads/")
    assert http.put(start.headers["Location"], params={"digest": config_digest}, content=config).status_code == 201
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
        "layers": [],
    }
    put = http.put(
        f"/v2/{repository}/manifests/{tag}",
        content=json.dumps(manifest),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert put.status_code == 201, put.text


def test_request_ids_reach_the_response_the_logs_errors_and_the_audit_log(proxied: ServerProcess) -> None:
    with proxied.client() as http:
        project = http.post("/api/v1/projects", json={"name": "ids"}).json()["id"]
        _push_tag(http, f"{project}/web", "1.0")
        pinned = http.post(
            f"/api/v1/projects/{project}/tags/pin",
            json={"repository": f"{project}/web", "tag": "1.0"},
            headers={
                "X-Request-ID": "pin-request-42",
                "X-Forwarded-For": "198.51.100.77",
                "X-Forwarded-Proto": "https",
            },
        )
        assert pinned.status_code == 200, pinned.text
        assert pinned.headers["X-Request-ID"] == "pin-request-42"
        history = http.get(f"/api/v1/projects/{project}/history").json()["events"]
        pin = next(event for event in history if event["action"] == "pin")
        assert pin["request_id"] == "pin-request-42" and pin["client_address"] == "198.51.100.77"

        missing = http.get(f"/v2/{project}/web/manifests/2.0", headers={"X-Request-ID": "bad id!"})
        generated = missing.headers["X-Request-ID"]
        assert generated != "bad id!" and missing.json()["request_id"] == generated
        denied = http.get("/api/v1/projects/nope0nope0", headers={"X-Request-ID": "api-err-1"})
        assert denied.status_code == 404 and denied.json()["request_id"] == "api-err-1"
    entries = json_log(proxied)  # every line parses as JSON
    assert entries and all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    access = {entry.get("request_id"): entry for entry in entries if entry["logger"] == "cargohold.access"}
    assert access["pin-request-42"]["remote"] == "198.51.100.77"
    assert access["pin-request-42"]["status"] == "200"
    assert access["pin-request-42"]["proto"] == "https", "the scheme the client used, as the proxy says"
    assert access[generated]["proto"] == "http"
    assert access[generated]["status"] == "404"


def test_text_access_lines_carry_the_request_id(server: ServerProcess, tmp_path: Path) -> None:
    with server.anonymous() as http:
        response = http.get("/v2/", headers={"X-Request-ID": "text-line-7"})
    assert response.headers["X-Request-ID"] == "text-line-7"
    deadline = time.monotonic() + 10  # aiohttp writes the access line just after the response went out
    while not (
        lines := [line for line in server.log().splitlines() if "cargohold.access" in line and "id=text-line-7" in line]
    ):
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.01)
    assert len(lines) == 1 and "remote=127.0.0.1" in lines[0]
