"""No 500 from input, over HTTP: hypothesis-generated bodies, references, ranges, queries and credentials
against a real ``cargohold serve``, whose log must not gain a single traceback.

Fewer examples than the parser-level suite (tests/test_fuzz_parsers.py): these prove the handlers use the
validated parsers and turn every refusal into a 4xx in the route's error format.
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol_helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    image_manifest,
    push_blob,
    push_image,
    to_bytes,
)
from servers import InProcessServer, running

HTTP_FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**20, -(10**20), 10**400, 1e20, -1e300, 0.5])
    | st.text(max_size=20)
    | st.sampled_from(["pull", "push", "admin", "project", "oidc", "sha256:" + "a" * 64, "latest", "../x", "\n"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
raw_bodies = st.sampled_from(
    [
        b"[" * 50_000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"by": NaN}',
        b'{"by": Infinity}',
        b'{"expires_in": 1' + b"0" * 5000 + b"}",
        b"\xff\xfe\x00{",
        b'{"name": "\xc3\x28"}',
        b"null",
        b"[]",
        b"",
    ]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    proc = InProcessServer(data_dir=tmp_path_factory.mktemp("fuzz") / "data")
    try:
        with running(proc):
            yield proc
    finally:
        log = proc.log()
        assert "Traceback" not in log, f"the server logged a traceback:\n{log[-6000:]}"
        assert " status=500 " not in log, "a request got a 500"


@pytest.fixture(scope="module")
def world(server: InProcessServer) -> dict[str, str]:
    """A project, a pending build and a saved build: their IDs."""
    with server.client() as http:
        project = http.post("/api/v1/projects", json={"name": "fuzz"}).json()["id"]
        pending = http.post(f"/api/v1/projects/{project}/builds").json()["build_id"]
        saved = http.post(f"/api/v1/projects/{project}/builds").json()["build_id"]
        push_image(http, project, saved, layer_count=1)
        response = http.post(f"/api/v1/builds/{saved}/save", json={})
        assert response.status_code == 200, response.text
    return {"project": project, "pending": pending, "saved": saved}


def _push_build_with_config(http: httpx.Client, project: str, config: bytes) -> str:
    build = str(http.post(f"/api/v1/projects/{project}/builds").json()["build_id"])
    push_blob(http, project, config)
    manifest = to_bytes(image_manifest(descriptor(OCI_CONFIG, config), []))
    put = http.put(f"/v2/{project}/manifests/{build}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201, put.text
    return build


_SOURCES = itertools.count()


def _fresh_source() -> tuple[str, int]:
    """Another loopback source address: failed authentications are throttled per client address, so each
    example that fails on purpose comes from its own address and is judged on its content, not the 429."""
    n = next(_SOURCES)
    return (f"127.1.{n // 250 % 250}.{n % 250 + 1}", 0)


def _raw(
    server: InProcessServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    source: tuple[str, int] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=source)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        basic = base64.b64encode(f"x-token:{server.admin_token}".encode()).decode()
        all_headers = {"Content-Length": str(len(body)), "Authorization": f"Basic {basic}", **(headers or {})}
        for key, value in all_headers.items():
            connection.putheader(key, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _assert_client_error_or_success(status: int, headers: dict[str, str], body: bytes, what: str) -> None:
    assert status < 500, f"{what} -> {status} {body[:300]!r}"
    if status == 400 and headers.get("content-type", "").startswith("text/plain"):
        return  # aiohttp's HTTP parser refused the request itself (e.g. a header line over 8190 bytes)
    if status >= 400 and body:
        document = json.loads(body)
        assert document.get("errors") or document.get("ok") is False, f"{what} -> {status} {body[:300]!r}"


CONTROL_ROUTES = {
    "create-token": ("POST", "/api/v1/tokens", ["kind", "name", "project_id", "build_id", "expires_in"]),
    "create-project": ("POST", "/api/v1/projects", ["name", "retention_seconds", "max_builds"]),
    "update-project": ("PATCH", "/api/v1/projects/{project}", ["name", "retention_seconds", "max_builds"]),
    "create-build": ("POST", "/api/v1/projects/{project}/builds", ["provenance"]),
    "save-build": ("POST", "/api/v1/builds/{saved}/save", ["save_tags", "targets"]),
    "fail-build": ("POST", "/api/v1/builds/{pending}/fail", ["reason"]),
    "tag-build": ("POST", "/api/v1/builds/{saved}/tags", ["tags"]),
    "extend-build": ("POST", "/api/v1/builds/{saved}/extend", ["by", "until"]),
    "add-trust": (
        "POST",
        "/api/v1/projects/{project}/trust",
        ["repository", "owner", "workflow", "ref_pattern", "allow_events", "pull_only", "issuer", "repository_id"],
    ),
    "expire": ("POST", "/api/v1/expire", ["dry_run", "project"]),
    "blob-copies": ("POST", "/api/v1/blob-copies", ["repository", "digest", "destination"]),
}


@pytest.mark.parametrize("route", CONTROL_ROUTES)
@HTTP_FUZZ
@given(data=st.data())
def test_control_api_bodies_never_cause_a_500(
    server: InProcessServer, world: dict[str, str], route: str, data: st.DataObject
) -> None:
    method, template, fields = CONTROL_ROUTES[route]
    body = data.draw(
        st.dictionaries(st.sampled_from(fields), json_values, max_size=len(fields)).map(
            lambda d: json.dumps(d).encode()
        )
        | raw_bodies
    )
    status, headers, response = _raw(server, method, template.format(**world), body)
    _assert_client_error_or_success(status, headers, response, f"{method} {template} {body[:200]!r}")


@HTTP_FUZZ
@given(
    st.sampled_from(["limit", "before", "tag", "build", "month", "ref", "project", "all"]),
    st.text(max_size=30) | st.sampled_from(["-1", "0", "9" * 5000, "%ff", "²", "2025-13", "99999-01", "a:b:c"]),
    st.sampled_from(
        [
            "/api/v1/projects/{project}/builds",
            "/api/v1/projects/{project}/history",
            "/api/v1/projects/{project}/usage",
            "/api/v1/pull-info",
            "/api/v1/tokens",
        ]
    ),
)
def test_query_parameters_never_cause_a_500(
    server: InProcessServer, world: dict[str, str], key: str, value: str, path: str
) -> None:
    encoded = value if value.startswith("%") else quote(value, safe="")
    status, headers, body = _raw(server, "GET", f"{path.format(**world)}?{key}={encoded}")
    _assert_client_error_or_success(status, headers, body, f"{path}?{key}={value[:50]}")


references = (
    st.text(max_size=140)
    | st.text(alphabet="abcdef0123456789:sha256512.-_A", max_size=140)
    | st.sampled_from([".INVALID_MANIFEST_NAME", "sha256:", ":", "sha256:" + "A" * 64, "md5:" + "0" * 32, "a" * 129])
)


@HTTP_FUZZ
@given(
    references, st.sampled_from(["GET", "HEAD", "DELETE", "PUT"]), st.sampled_from(["manifests", "blobs", "referrers"])
)
def test_references_never_cause_a_500(
    server: InProcessServer, world: dict[str, str], reference: str, method: str, kind: str
) -> None:
    body = b'{"schemaVersion": 2}' if method == "PUT" else b""
    path = f"/v2/{world['project']}/{kind}/{quote(reference, safe=':')}"
    status, headers, response = _raw(server, method, path, body, {"Content-Type": OCI_MANIFEST})
    _assert_client_error_or_success(status, headers, response, f"{method} {path}")


@HTTP_FUZZ
@given(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
    | st.builds(
        lambda a, b: f"bytes={a}-{b}",
        st.sampled_from(["", "0", "1", "-1", "9" * 20, "9" * 5000, "18446744073709551616"]),
        st.sampled_from(["", "0", "5", "-3", "9" * 20, "9" * 5000]),
    )
)
def test_range_and_content_range_never_cause_a_500(server: InProcessServer, world: dict[str, str], header: str) -> None:
    project = world["project"]
    with server.client() as http:
        digest = push_blob(http, project, b"range-fuzz-blob")
        start = http.post(f"/v2/{project}/blobs/uploads/")
    status, headers, body = _raw(server, "GET", f"/v2/{project}/blobs/{digest}", headers={"Range": header})
    _assert_client_error_or_success(status, headers, body, f"Range: {header[:60]}")
    location = start.headers["location"]
    content_range = header.removeprefix("bytes=")
    status, headers, body = _raw(server, "PATCH", location, b"abc", {"Content-Range": content_range})
    _assert_client_error_or_success(status, headers, body, f"Content-Range: {content_range[:60]}")


@HTTP_FUZZ
@given(
    st.dictionaries(st.sampled_from(["token", "x"]), json_values, max_size=2).map(lambda d: json.dumps(d).encode())
    | raw_bodies
)
def test_oidc_exchange_bodies_never_cause_a_500(server: InProcessServer, body: bytes) -> None:
    status, _headers, response = _raw(
        server, "POST", "/auth/oidc/github-actions", body, {"Authorization": ""}, _fresh_source()
    )
    assert status in (400, 401, 403, 413), (status, response[:300])
    assert json.loads(response)["ok"] is False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@HTTP_FUZZ
@given(
    st.sampled_from(["Basic ", "Bearer ", "bearer ", "Digest "])
    | st.just("Basic " + _b64(b"x-token:\xff\xfe"))
    | st.just("Bearer " + _b64(b"[" * 5000) + ".e30.sig")
    | st.just("Bearer " + _b64(b'{"alg":"EdDSA","kid":' + b"[" * 3000 + b"]" * 3000 + b"}") + ".e30.sig")
    | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(lambda t: "Bearer " + t)
    | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(
        lambda t: "Basic " + base64.b64encode(t.encode()).decode()
    )
)
def test_credentials_never_cause_a_500(server: InProcessServer, world: dict[str, str], authorization: str) -> None:
    for path in (f"/v2/{world['project']}/tags/list", "/api/v1/whoami", "/token?service=cargohold"):
        status, _headers, body = _raw(server, "GET", path, b"", {"Authorization": authorization}, _fresh_source())
        assert status in (200, 400, 401, 403, 404), (path, authorization[:80], status, body[:200])


def test_known_cases_from_the_review_are_4xx(server: InProcessServer, world: dict[str, str]) -> None:
    """Each of these answered 500 with a traceback before (issue 11, finding 5)."""
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000
    saved = world["saved"]
    with server.client() as http:
        project = http.post("/api/v1/projects", json={"name": "known cases"}).json()["id"]
    for path, body in (
        (f"/v2/{project}/manifests/nested", nested),
        ("/api/v1/tokens", nested),
        ("/auth/oidc/github-actions", nested),
        (f"/api/v1/builds/{saved}/extend", b'{"by": 1e20}'),
        (
            "/api/v1/tokens",
            b'{"kind": "pull", "project_id": "%s", "expires_in": 100000000000000000}' % project.encode(),
        ),
    ):
        method = "PUT" if "/v2/" in path else "POST"
        status, _headers, response = _raw(server, method, path, body, {"Content-Type": OCI_MANIFEST})
        assert 400 <= status < 500, (path, status, response[:300])
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 10, "platform": "x"}],
    }
    with server.client() as http:
        # A config blob that is not JSON (or not an object): the platform is unknown, the save goes ahead.
        for config in (b"this config blob is not JSON", b"[1, 2]", b'{"os": ["linux"], "architecture": 5}'):
            unknown = _push_build_with_config(http, project, config)
            response = http.post(f"/api/v1/builds/{unknown}/save", json={})
            assert response.status_code == 200, response.text
            assert response.json()["platforms"] == []
        build = http.post(f"/api/v1/projects/{project}/builds").json()["build_id"]
        put = http.put(
            f"/v2/{project}/manifests/{build}", content=json.dumps(index), headers={"Content-Type": OCI_INDEX}
        )
        assert put.status_code == 400 and put.json()["errors"][0]["code"] == "MANIFEST_INVALID", put.text
        assert "platform" in put.json()["errors"][0]["message"]


def test_a_manifest_put_with_any_json_never_causes_a_500(server: InProcessServer, world: dict[str, str]) -> None:
    @HTTP_FUZZ
    @given(json_values)
    def put(value: Any) -> None:
        with httpx.Client(base_url=server.url, auth=("x-token", server.admin_token), timeout=30) as http:
            response = http.put(
                f"/v2/{world['project']}/manifests/{uuid.uuid4().hex[:8]}",
                content=json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": value}),
                headers={"Content-Type": OCI_INDEX},
            )
        assert response.status_code < 500, response.text

    put()
