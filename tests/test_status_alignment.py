"""Invalid references get the status codes the reference registry (CNCF distribution) gives, case by case.

The same requests go to a Cargohold server and to ``docker-registry``, each holding the same image under
``align/app:v1``. Every row of the table says what each one answers; where they differ on purpose the
row says why (distribution answers 500 to some of these, or a router's plain-text 404 with no OCI error
body at all), and those rows pin distribution's answer too, so an upgrade that changes it shows up here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from http.client import HTTPConnection

import httpx

from protocol_helpers import OCI_MANIFEST, push_image
from refregistry import RefRegistry, refregistry_fixture
from servers import Server, shared_server_fixture

__all__ = ["refregistry_fixture"]

server = shared_server_fixture()

REPO = "align/app"
ZERO = "sha256:" + "0" * 64
PLAIN_404 = "plain-text 404"
"""distribution's router found no route: a 404 without an OCI error body."""


@dataclass(frozen=True)
class Case:
    what: str
    method: str
    path: str
    ours: tuple[int, str | None]
    distribution: tuple[int, str | None]
    why: str = ""
    """Empty when both agree on the status; else why Cargohold answers differently."""


MANIFEST_REFS = {
    "invalid tag .INVALID_MANIFEST_NAME": ".INVALID_MANIFEST_NAME",
    "tag starting with -": "-bad",
    "129-character tag": "a" * 129,
    "tag with !": "bad!",
}

CASES: list[Case] = []
for what, ref in MANIFEST_REFS.items():
    for method in ("GET", "HEAD", "DELETE", "PUT"):
        code = None if method == "HEAD" else "MANIFEST_UNKNOWN"
        theirs = None if method == "HEAD" else PLAIN_404
        CASES.append(Case(f"{method} manifest, {what}", method, f"/manifests/{ref}", (404, code), (404, theirs)))
for what, ref in {
    "digest with non-hex characters": "sha256:xyz",
    "digest with upper-case hex": "sha256:" + "A" * 64,
    "digest one character short": "sha256:" + "a" * 63,
    "unknown algorithm md5": "md5:" + "a" * 32,
    "unknown algorithm foo": "foo:" + "a" * 64,
}.items():
    for method in ("GET", "HEAD"):
        code = None if method == "HEAD" else "MANIFEST_UNKNOWN"
        CASES.append(
            Case(
                f"{method} manifest, {what}",
                method,
                f"/manifests/{ref}",
                (404, code),
                (500, None if method == "HEAD" else "UNKNOWN"),
                "distribution fails with a 500; no manifest can have a malformed digest, so 404",
            )
        )
    CASES.append(
        Case(
            f"DELETE manifest, {what}", "DELETE", f"/manifests/{ref}", (400, "DIGEST_INVALID"), (400, "DIGEST_INVALID")
        )
    )
CASES += [
    Case(
        "GET manifest, unknown tag", "GET", "/manifests/nosuchtag", (404, "MANIFEST_UNKNOWN"), (404, "MANIFEST_UNKNOWN")
    ),
    Case(
        "GET manifest, unknown digest",
        "GET",
        f"/manifests/{ZERO}",
        (404, "MANIFEST_UNKNOWN"),
        (404, "MANIFEST_UNKNOWN"),
    ),
    Case(
        "DELETE manifest, unknown digest",
        "DELETE",
        f"/manifests/{ZERO}",
        (404, "MANIFEST_UNKNOWN"),
        (404, "MANIFEST_UNKNOWN"),
    ),
    Case(
        "DELETE manifest, unknown tag",
        "DELETE",
        "/manifests/nosuchtag",
        (404, "MANIFEST_UNKNOWN"),
        (400, "DIGEST_INVALID"),
        "Cargohold deletes tags by name (OCI distribution spec 1.1); distribution only deletes by digest",
    ),
    Case(
        "GET manifest, sha512 digest",
        "GET",
        "/manifests/sha512:" + "0" * 128,
        (404, "MANIFEST_UNKNOWN"),
        (404, "MANIFEST_UNKNOWN"),
    ),
]
for what, ref in {
    "digest with non-hex characters": "sha256:xyz",
    "digest with upper-case hex": "sha256:" + "A" * 64,
    "unknown algorithm md5": "md5:" + "a" * 32,
    "unknown algorithm foo": "foo:" + "a" * 64,
}.items():
    for method in ("GET", "HEAD", "DELETE"):
        code = None if method == "HEAD" else "DIGEST_INVALID"
        CASES.append(Case(f"{method} blob, {what}", method, f"/blobs/{ref}", (400, code), (400, code)))
for method in ("GET", "HEAD", "DELETE"):
    CASES.append(
        Case(
            f"{method} blob, not a digest",
            method,
            "/blobs/latest",
            (404, None if method == "HEAD" else "BLOB_UNKNOWN"),
            (404, PLAIN_404 if method != "HEAD" else None),
        )
    )
    CASES.append(
        Case(
            f"{method} blob, unknown digest",
            method,
            f"/blobs/{ZERO}",
            (404, None if method == "HEAD" else "BLOB_UNKNOWN"),
            (404, None if method == "HEAD" else "BLOB_UNKNOWN"),
        )
    )
for method in ("GET", "PATCH", "PUT", "DELETE"):
    suffix = f"?digest={ZERO}" if method == "PUT" else ""
    for what, upload in {"unknown session": "0" * 32, "malformed session id": "not-a-session"}.items():
        CASES.append(
            Case(
                f"{method} upload, {what}",
                method,
                f"/blobs/uploads/{upload}{suffix}",
                (404, "BLOB_UPLOAD_UNKNOWN"),
                (404, "BLOB_UPLOAD_INVALID"),
                "same status; the spec's code for an unknown session is BLOB_UPLOAD_UNKNOWN",
            )
        )
NAME_CASES = {
    "256-character name": ("a" * 256, (500, "UNKNOWN"), "distribution fails with a 500"),
    "name over 255 characters in components": ("a" + "/b" * 130, (500, "UNKNOWN"), "distribution fails with a 500"),
    "name with ..": ("a..b/c", (404, PLAIN_404), "the spec's code for a bad name is NAME_INVALID"),
    "name starting with -": ("-a/b", (404, PLAIN_404), "the spec's code for a bad name is NAME_INVALID"),
}
for what, (name, theirs, why) in NAME_CASES.items():
    for method, suffix in (("GET", "/tags/list"), ("POST", "/blobs/uploads/"), ("GET", "/manifests/v1")):
        CASES.append(
            Case(f"{method} {suffix}, {what}", method, f"//{name}{suffix}", (400, "NAME_INVALID"), theirs, why)
        )
CASES += [
    Case(
        "GET tags/list, unknown repository",
        "GET",
        "//align/none/tags/list",
        (404, "NAME_UNKNOWN"),
        (404, "NAME_UNKNOWN"),
    ),
    Case("GET tags/list, n=-1", "GET", "/tags/list?n=-1", (400, "UNSUPPORTED"), (200, None), "n must be a number"),
    Case("GET tags/list, n of 30 digits", "GET", "/tags/list?n=" + "9" * 30, (200, None), (200, None)),
    Case("GET tags/list, n of 5000 digits", "GET", "/tags/list?n=" + "9" * 5000, (200, None), (200, None)),
]


def _request(base: HTTPConnection, method: str, path: str, auth: dict[str, str], body: bytes) -> tuple[int, str | None]:
    base.putrequest(method, path, skip_accept_encoding=True)
    headers = {"Content-Length": str(len(body)), "Accept": OCI_MANIFEST, **auth}
    if body:
        headers["Content-Type"] = OCI_MANIFEST
    for key, value in headers.items():
        base.putheader(key, value)
    base.endheaders(body or None)
    response = base.getresponse()
    data = response.read()
    if method == "HEAD" or response.status < 400:
        return response.status, None
    try:
        return response.status, str(json.loads(data)["errors"][0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        return response.status, PLAIN_404 if response.status == 404 else data[:60].decode(errors="replace")


def _ask(port: int, case: Case, auth: dict[str, str], manifest: bytes) -> tuple[int, str | None]:
    path = case.path[1:] if case.path.startswith("//") else f"/{REPO}{case.path}"
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return _request(connection, case.method, f"/v2{path}", auth, manifest if case.method == "PUT" else b"")
    finally:
        connection.close()


def test_invalid_references_get_the_reference_registry_s_status(server: Server, refregistry: RefRegistry) -> None:
    with server.client() as http:
        ours_manifest = push_image(http, REPO, "v1").body
    with httpx.Client(base_url=refregistry.url, timeout=30) as http:
        theirs_manifest = push_image(http, REPO, "v1").body
    auth = {"Authorization": "Basic " + base64.b64encode(f"x-token:{server.admin_token}".encode()).decode()}
    mismatches = []
    for case in CASES:
        ours = _ask(server.port, case, auth, ours_manifest)
        theirs = _ask(refregistry.port, case, {}, theirs_manifest)
        if ours != case.ours or theirs != case.distribution:
            mismatches.append(
                f"{case.what}: Cargohold {ours} (table {case.ours}), distribution {theirs} (table {case.distribution})"
            )
        elif not case.why and ours[0] != theirs[0]:
            mismatches.append(
                f"{case.what}: Cargohold {ours[0]} but distribution {theirs[0]}, and the table gives no reason"
            )
    assert not mismatches, "\n".join(mismatches)
