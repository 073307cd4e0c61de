"""Property-based tests (hypothesis) of every parser that sees untrusted input, in process.

The property is the same everywhere: a parser either returns a value of its result type or raises its own
error type with a message: never ``RecursionError``, ``OverflowError``, ``TypeError``, ``KeyError`` or a
bare ``ValueError`` that the server would turn into a 500. Runs are bounded and derandomized, so CI sees
the same examples every time (``FUZZ`` below).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.oci import strictjson
from cargohold.oci.digest import Digest, DigestError
from cargohold.oci.manifest import ManifestInvalid, ParsedManifest, parse_manifest
from cargohold.oci.reference import ReferenceError_, check_name, check_tag, is_valid_name, is_valid_tag
from cargohold.server.auth.oidc import InMemoryJtiStore, OidcError, OidcSettings, OidcVerifier
from cargohold.server.control import blob_copies as blob_copy
from cargohold.server.control import builds, common, projects
from cargohold.server.distribution import uploads
from cargohold.server.distribution.blobs import _usable_range
from cargohold.server.http.errors import RegistryError
from oidc_issuer import DEFAULT_AUDIENCE, LoopbackOidcIssuer

FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

MEDIA_TYPES = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "text/plain",
]
GOOD_DIGEST = "sha256:" + "a" * 64

# Any JSON value, including the awkward ones: huge integers, floats, non-ASCII and control characters.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from([*MEDIA_TYPES, GOOD_DIGEST, "sha256:xyz", "md5:" + "0" * 32])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


def _descriptor() -> st.SearchStrategy[Any]:
    fields = {
        "mediaType": st.sampled_from(MEDIA_TYPES) | json_values,
        "digest": st.just(GOOD_DIGEST) | json_values,
        "size": st.integers(min_value=-5, max_value=2**70) | json_values,
        "annotations": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3) | json_values,
        "urls": st.lists(st.text(max_size=10), max_size=2) | json_values,
        "platform": st.fixed_dictionaries({"os": st.just("linux"), "architecture": st.just("amd64")}) | json_values,
        "artifactType": st.text(max_size=10) | json_values,
    }
    return st.fixed_dictionaries({}, optional=fields) | json_values


manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([1, 2, "2", 2.0, None]) | json_values,
        "mediaType": st.sampled_from(MEDIA_TYPES) | json_values,
        "config": _descriptor(),
        "layers": st.lists(_descriptor(), max_size=3) | json_values,
        "manifests": st.lists(_descriptor(), max_size=3) | json_values,
        "subject": _descriptor(),
        "annotations": json_values,
        "artifactType": json_values,
    },
)


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# --- JSON ------------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200) | st.builds(_nested, st.integers(min_value=1, max_value=3000)))
def test_strict_json_returns_a_value_or_json_invalid(data: bytes) -> None:
    try:
        strictjson.loads(data)
    except strictjson.JsonInvalid as exc:
        assert str(exc)


def test_strict_json_refuses_what_json_loads_would_let_through() -> None:
    for text in ("[" * 100_000, "NaN", '{"by": Infinity}', "-Infinity", "1" * 5000, _nested(65).decode()):
        with pytest.raises(strictjson.JsonInvalid):
            strictjson.loads(text)
    assert strictjson.loads(_nested(63)) is not None


# --- manifests -------------------------------------------------------------------------------------------


@FUZZ
@given(manifest_like, st.sampled_from([*MEDIA_TYPES, None, "", "application/json; charset=utf-8"]))
def test_the_manifest_parser_accepts_or_refuses_with_manifest_invalid(
    body: dict[str, Any], content_type: str | None
) -> None:
    payload = json.dumps(body).encode()
    try:
        parsed = parse_manifest(payload, content_type)
    except ManifestInvalid as exc:
        assert str(exc)
        return
    assert isinstance(parsed, ParsedManifest)
    for descriptor in [*parsed.blobs, *parsed.children]:
        assert isinstance(descriptor.digest, Digest) and 0 <= descriptor.size < 2**63
        assert descriptor.platform is None or isinstance(descriptor.platform, dict)


@FUZZ
@given(st.binary(max_size=300) | st.builds(_nested, st.integers(min_value=60, max_value=5000)))
def test_the_manifest_parser_survives_arbitrary_bytes(payload: bytes) -> None:
    with pytest.raises(ManifestInvalid):
        parse_manifest(b'{"schemaVersion": 2, "x": ' + payload + b"}", None)


def test_an_index_with_a_string_platform_is_invalid() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MEDIA_TYPES[0], "digest": GOOD_DIGEST, "size": 10, "platform": "x"}],
    }
    with pytest.raises(ManifestInvalid, match="platform"):
        parse_manifest(json.dumps(index).encode(), None)


# --- references and digests ------------------------------------------------------------------------------


@FUZZ
@given(json_values | st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_digest_parsing_returns_a_digest_or_digest_error(value: Any) -> None:
    try:
        digest = Digest.parse(value)
    except DigestError as exc:
        assert str(exc)
        return
    assert Digest.parse(str(digest)) == digest


@FUZZ
@given(st.text(max_size=300) | st.text(alphabet="abc./_-:@AZ09", max_size=300))
def test_names_and_tags_are_validated_without_surprises(text: str) -> None:
    assert isinstance(is_valid_name(text), bool) and isinstance(is_valid_tag(text), bool)
    for check in (check_name, check_tag):
        try:
            check(text)
        except ReferenceError_ as exc:
            assert str(exc)


# --- Range and Content-Range -----------------------------------------------------------------------------

range_headers = st.text(max_size=60) | st.builds(
    lambda a, b: f"bytes={a}-{b}",
    st.one_of(st.just(""), st.integers(min_value=-5, max_value=10**30).map(str), st.text("0123456789", max_size=6000)),
    st.one_of(st.just(""), st.integers(min_value=-5, max_value=10**30).map(str), st.text("0123456789", max_size=6000)),
)


@FUZZ
@given(range_headers, st.integers(min_value=0, max_value=2**40))
def test_range_headers_are_honoured_ignored_or_416(header: str, size: int) -> None:
    try:
        assert isinstance(_usable_range(header, size), bool)
    except RegistryError as exc:
        assert exc.status == 416


@FUZZ
@given(range_headers, st.integers(min_value=0, max_value=2**40), st.none() | st.integers(min_value=0, max_value=2**40))
def test_content_range_is_accepted_or_refused_with_an_oci_error(header: str, offset: int, length: int | None) -> None:
    headers = {"Content-Range": header.removeprefix("bytes=")}
    if length is not None:
        headers["Content-Length"] = str(length)
    request = make_mocked_request("PATCH", "/v2/x/blobs/uploads/" + "0" * 32, headers=headers)
    try:
        announced = uploads._check_content_range(request, "x", "0" * 32, offset)
    except RegistryError as exc:
        assert exc.status in (400, 416) and exc.code == "BLOB_UPLOAD_INVALID"
        return
    assert announced is None or announced > 0


# --- control API bodies ----------------------------------------------------------------------------------


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "retention_seconds", "max_builds", "x"]), json_values, max_size=4))
def test_project_settings_are_validated_field_by_field(body: dict[str, Any]) -> None:
    try:
        projects._project_settings(body)
    except RegistryError as exc:
        assert exc.status == 400 and exc.code == "INVALID"


@FUZZ
@given(json_values, st.booleans())
def test_durations_are_bounded_positive_integers(value: Any, allow_none: bool) -> None:
    try:
        duration = common.duration(value, "expires_in", allow_none=allow_none)
    except RegistryError as exc:
        assert exc.status == 400
        return
    assert duration is None or 0 < duration.total_seconds() <= common.MAX_DURATION_SECONDS


@FUZZ
@given(json_values)
def test_tag_lists_are_validated(value: Any) -> None:
    try:
        tags = builds._tags(value, "save_tags")
    except RegistryError as exc:
        assert exc.status == 400
        return
    assert all(is_valid_tag(tag) for tag in tags)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "repository": st.just("proj/app") | json_values,
            "digest": st.just(GOOD_DIGEST) | json_values,
            "destination": st.fixed_dictionaries(
                {},
                optional={
                    "url": st.sampled_from(
                        ["https://ghcr.io", "http://[::1", "http://xn--/", "ftp://x", "https://a/b?c"]
                    )
                    | st.text(max_size=40)
                    | json_values,
                    "repository": st.just("org/app") | json_values,
                    "authorization": st.just("Bearer x") | st.text(max_size=20) | json_values,
                },
            )
            | json_values,
        },
    )
)
def test_blob_copy_requests_are_validated(body: dict[str, Any]) -> None:
    try:
        parsed = blob_copy.parse_request(body)
    except RegistryError as exc:
        assert exc.status == 400 and exc.code == "INVALID"
        return
    assert parsed.url.scheme in ("http", "https")


# --- the OIDC exchange -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[LoopbackOidcIssuer]:
    with LoopbackOidcIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def verify(issuer: LoopbackOidcIssuer) -> Iterator[Any]:
    """``verify(token)`` on one verifier and one event loop for the whole module."""
    loop = asyncio.new_event_loop()
    verifier = OidcVerifier(OidcSettings(audience=DEFAULT_AUDIENCE, issuers=(issuer.url,)), InMemoryJtiStore())
    try:
        yield lambda token: loop.run_until_complete(verifier.verify(token))
    finally:
        loop.run_until_complete(verifier.aclose())
        loop.close()


CLAIMS = ["iss", "aud", "jti", "iat", "nbf", "exp", "sub", "repository", "repository_id", "repository_owner",
          "repository_owner_id", "event_name", "ref", "sha", "job_workflow_ref", "run_id", "run_attempt", "actor_id",
          "runner_environment", "environment"]  # fmt: skip


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(CLAIMS),
        json_values | st.sampled_from([math.inf, -math.inf, math.nan, 10**30, -(10**30), 1e300]),
        max_size=4,
    )
)
def test_signed_tokens_with_any_claim_values_verify_or_fail_with_an_oidc_error(
    issuer: LoopbackOidcIssuer, verify: Any, overrides: dict[str, Any]
) -> None:
    # Signed over raw JSON bytes: PyJWT's encoder would refuse some of these claim types before signing.
    base = {**issuer.claims(), **overrides}  # an override of None removes the claim
    claims = json.dumps({key: value for key, value in base.items() if value is not None})
    token = jwt.PyJWS().encode(
        claims.encode(), issuer.private_key(), algorithm="RS256", headers={"kid": issuer.current_kid, "typ": "JWT"}
    )
    try:
        claims = verify(token)
    except OidcError as exc:
        assert str(exc)
        return
    assert claims.repository and claims.jti


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "x"]), json_values, max_size=4),
    st.binary(max_size=80) | st.builds(_nested, st.integers(min_value=1, max_value=3000)),
)
def test_malformed_tokens_fail_with_an_oidc_error(verify: Any, header: dict[str, Any], payload: bytes) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    for token in (f"{b64(json.dumps(header).encode())}.{b64(payload)}.c2ln", f"{b64(payload)}.e30.", payload.hex()):
        with pytest.raises(OidcError):
            verify(token)
