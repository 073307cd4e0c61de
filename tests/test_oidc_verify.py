"""OIDC ID-token verification against the loopback issuer: every attack case the issue lists."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from cargohold.server.auth.oidc import (
    AlgorithmNotAllowedError,
    AudienceError,
    ExpiredTokenError,
    InMemoryJtiStore,
    InvalidClaimError,
    IssuedInFutureError,
    JwksUnavailableError,
    MalformedTokenError,
    MissingClaimError,
    NotYetValidError,
    OidcSettings,
    OidcVerifier,
    ReplayedTokenError,
    SignatureError,
    TokenTooOldError,
    UnknownKeyError,
    UntrustedIssuerError,
)
from cargohold.server.auth.trust import TrustRelationship, match
from oidc_issuer import DEFAULT_AUDIENCE, PRESETS, LoopbackOidcIssuer, oidc_issuer_fixture  # noqa: F401 - fixtures

JWKS_PATH = "/.well-known/jwks"


class FakeClock:
    """Starts at the real time (tokens are minted with it) and only moves when a test says so."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def verifier(oidc_issuer: LoopbackOidcIssuer, clock: FakeClock) -> AsyncIterator[OidcVerifier]:
    settings = OidcSettings(
        audience=DEFAULT_AUDIENCE,
        issuers=(oidc_issuer.url,),
        leeway=60,
        max_token_age=600,
        min_refresh_interval=30,
        http_timeout=5,
    )
    async with OidcVerifier(settings, InMemoryJtiStore(clock=clock), clock=clock) as v:
        yield v


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, object], claims: dict[str, object], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


# ------------------------------------------------------------------------------------- acceptance


async def test_valid_push_token_yields_typed_claims(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier) -> None:
    claims = await verifier.verify(oidc_issuer.mint("push"))
    assert claims.repository == "octo-org/app" and claims.repository_id == "2002"
    assert claims.repository_owner_id == "1001" and claims.event_name == "push"
    assert claims.job_workflow_ref == "octo-org/app/.github/workflows/ci.yml@refs/heads/main"
    assert claims.runner_environment == "github-hosted" and claims.audience == DEFAULT_AUDIENCE
    assert oidc_issuer.requests["/.well-known/openid-configuration"] == 1
    assert oidc_issuer.requests[JWKS_PATH] == 1


@pytest.mark.parametrize("preset", PRESETS)
async def test_every_preset_verifies(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, preset: str) -> None:
    claims = await verifier.verify(oidc_issuer.mint(preset))
    assert claims.event_name == oidc_issuer.claims(preset)["event_name"]
    if preset == "environment":
        assert claims.environment == "production"


async def test_single_element_audience_list_is_accepted(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier
) -> None:
    claims = await verifier.verify(oidc_issuer.mint(aud=[DEFAULT_AUDIENCE]))
    assert claims.audience == DEFAULT_AUDIENCE


async def test_actions_token_protocol_end_to_end(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier) -> None:
    env = oidc_issuer.actions_env()
    async with httpx.AsyncClient() as client:
        denied = await client.get(
            env["ACTIONS_ID_TOKEN_REQUEST_URL"] + "&audience=x", headers={"Authorization": "bearer wrong"}
        )
        assert denied.status_code == 401
        response = await client.get(
            env["ACTIONS_ID_TOKEN_REQUEST_URL"],
            params={"audience": DEFAULT_AUDIENCE},
            headers={"Authorization": f"bearer {env['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}"},
        )
    assert response.status_code == 200
    claims = await verifier.verify(response.json()["value"])
    result = match(
        [
            TrustRelationship(
                id="r1", project="web", repository_owner="octo-org", repository_name="app", workflow="ci.yml"
            )
        ],
        claims,
    )
    assert result.ok and result.learned[0].repository_id == "2002"


# ------------------------------------------------------------------------------------ algorithms


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, alg: str) -> None:
    token = unsigned_token({"alg": alg, "typ": "JWT", "kid": oidc_issuer.current_kid}, oidc_issuer.claims())
    with pytest.raises(AlgorithmNotAllowedError, match=r"unsigned \(alg 'none'\)"):
        await verifier.verify(token)


async def test_hs256_signed_with_the_public_key_is_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier
) -> None:
    await verifier.verify(oidc_issuer.mint())  # warm the JWKS cache, as a real attacker would find it
    public_pem = (
        oidc_issuer.private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": oidc_issuer.current_kid}
    body = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(oidc_issuer.claims()).encode())}"
    for secret in (public_pem, json.dumps(oidc_issuer.jwks()["keys"][0]).encode()):
        signature = hmac.new(secret, body.encode(), hashlib.sha256).digest()
        with pytest.raises(AlgorithmNotAllowedError, match="signed with 'HS256'; only RS256 is accepted"):
            await verifier.verify(f"{body}.{b64(signature)}")


@pytest.mark.parametrize("alg", ["RS512", "PS256"])
async def test_other_rsa_algorithms_are_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, alg: str
) -> None:
    token = jwt.encode(
        oidc_issuer.claims(), oidc_issuer.private_key(), algorithm=alg, headers={"kid": oidc_issuer.current_kid}
    )
    with pytest.raises(AlgorithmNotAllowedError, match=f"signed with '{alg}'"):
        await verifier.verify(token)


async def test_tampered_payload_fails_signature(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier) -> None:
    head, _, sig = oidc_issuer.mint().split(".")
    forged = oidc_issuer.claims(repository="octo-org/app", repository_id="1")
    with pytest.raises(SignatureError, match="does not verify"):
        await verifier.verify(f"{head}.{b64(json.dumps(forged).encode())}.{sig}")


@pytest.mark.parametrize("value", ["", "not-a-jwt", "a.b", "a.b.c"])
async def test_garbage_is_malformed(verifier: OidcVerifier, value: str) -> None:
    with pytest.raises(MalformedTokenError):
        await verifier.verify(value)


async def test_missing_kid_is_refused(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier) -> None:
    token = jwt.encode(oidc_issuer.claims(), oidc_issuer.private_key(), algorithm="RS256")
    with pytest.raises(MalformedTokenError, match="no 'kid'"):
        await verifier.verify(token)


# ---------------------------------------------------------------------------------- issuer, aud


async def test_wrong_issuer_is_refused_without_any_fetch(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier
) -> None:
    for iss in ("https://evil.example", oidc_issuer.url + "/", oidc_issuer.url.upper()):
        with pytest.raises(UntrustedIssuerError, match="which this server does not trust"):
            await verifier.verify(oidc_issuer.mint(iss=iss))
    assert sum(oidc_issuer.requests.values()) == 0


async def test_discovery_naming_another_issuer_is_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier
) -> None:
    oidc_issuer.advertised_issuer = "https://token.actions.githubusercontent.com"
    expected = r"names issuer 'https://token\.actions\.githubusercontent\.com', expected exactly"
    with pytest.raises(JwksUnavailableError, match=expected):
        await verifier.verify(oidc_issuer.mint())


async def test_wrong_audience_is_refused(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier) -> None:
    with pytest.raises(
        AudienceError, match=f"audience is 'https://github.com/octo-org', this server expects '{DEFAULT_AUDIENCE}'"
    ):
        await verifier.verify(oidc_issuer.mint(aud="https://github.com/octo-org"))


async def test_audience_list_with_several_entries_is_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier
) -> None:
    with pytest.raises(AudienceError, match="names 2 audiences"):
        await verifier.verify(oidc_issuer.mint(aud=[DEFAULT_AUDIENCE, "https://other.example"]))


async def test_missing_audience_is_refused(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier) -> None:
    with pytest.raises(MissingClaimError, match="no audience"):
        await verifier.verify(oidc_issuer.mint(aud=None))


# ------------------------------------------------------------------------------------------ time


async def test_expired_token_is_refused_beyond_leeway(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    now = int(clock.now)
    await verifier.verify(oidc_issuer.mint(iat=now - 300, exp=now - 59))  # inside the 60 s leeway
    with pytest.raises(ExpiredTokenError, match=r"expired at .* \(61 s ago\)"):
        await verifier.verify(oidc_issuer.mint(iat=now - 300, exp=now - 61))


async def test_future_iat_is_refused(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock) -> None:
    now = int(clock.now)
    await verifier.verify(oidc_issuer.mint(iat=now + 50))
    with pytest.raises(IssuedInFutureError, match="120 s in the future"):
        await verifier.verify(oidc_issuer.mint(iat=now + 120))


async def test_future_nbf_is_refused(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock) -> None:
    with pytest.raises(NotYetValidError, match="not valid before"):
        await verifier.verify(oidc_issuer.mint(nbf=int(clock.now) + 300))


async def test_too_old_token_is_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    now = int(clock.now)
    with pytest.raises(TokenTooOldError, match="issued 700 s ago; tokens older than 600 s are refused"):
        await verifier.verify(oidc_issuer.mint(iat=now - 700, exp=now + 300))


@pytest.mark.parametrize("claim", ["exp", "iat"])
async def test_missing_time_claims_are_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, claim: str
) -> None:
    with pytest.raises(MissingClaimError, match=f"no '{claim}' claim"):
        await verifier.verify(oidc_issuer.mint(**{claim: None}))


# ---------------------------------------------------------------------------------------- claims


@pytest.mark.parametrize("claim", ["jti", "repository_id", "repository_owner_id", "job_workflow_ref", "sub"])
async def test_missing_required_claims_are_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, claim: str
) -> None:
    with pytest.raises(MissingClaimError, match=f"no '{claim}' claim"):
        await verifier.verify(oidc_issuer.mint(**{claim: None}))


async def test_inconsistent_repository_claims_are_refused(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier
) -> None:
    with pytest.raises(InvalidClaimError, match="not of the form 'octo-org/<name>'"):
        await verifier.verify(oidc_issuer.mint(repository="someone-else/app"))
    with pytest.raises(InvalidClaimError, match="decimal number"):
        await verifier.verify(oidc_issuer.mint(repository_id="12; drop"))


# ---------------------------------------------------------------------------------------- replay


async def test_replayed_jti_is_refused(oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier) -> None:
    token = oidc_issuer.mint()
    await verifier.verify(token)
    with pytest.raises(ReplayedTokenError, match="has already been exchanged"):
        await verifier.verify(token)
    # A different token that reuses the jti is a replay too.
    with pytest.raises(ReplayedTokenError):
        await verifier.verify(oidc_issuer.mint(jti=jwt.decode(token, options={"verify_signature": False})["jti"]))


async def test_concurrent_verifications_of_one_token_exactly_one_wins(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier
) -> None:
    token = oidc_issuer.mint()
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(8)), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 7 and all(isinstance(r, ReplayedTokenError) for r in losers)
    assert oidc_issuer.requests[JWKS_PATH] == 1  # the cold cache was filled by one shared fetch


async def test_jti_store_is_atomic_and_forgets_after_expiry() -> None:
    clock = FakeClock()
    store = InMemoryJtiStore(clock=clock, sweep_every=10)
    outcomes = await asyncio.gather(*(store.claim("iss", "j", clock.now + 100) for _ in range(20)))
    assert outcomes.count(True) == 1
    assert await store.claim("other-iss", "j", clock.now + 100)  # scoped by issuer
    clock.now += 101
    assert await store.claim("iss-2", "k", clock.now + 5)  # triggers a sweep
    assert len(store) == 1
    assert await store.claim("iss", "j", clock.now + 100)


# ------------------------------------------------------------------------------- keys & rotation


async def test_rotated_key_is_accepted_after_one_refresh(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    await verifier.verify(oidc_issuer.mint())
    assert oidc_issuer.requests[JWKS_PATH] == 1
    clock.now += 31
    old_kid = oidc_issuer.current_kid
    oidc_issuer.add_key()  # published and current: what an issuer does when it rotates
    claims = await verifier.verify(oidc_issuer.mint())
    assert claims.repository == "octo-org/app"
    assert oidc_issuer.requests[JWKS_PATH] == 2
    await verifier.verify(oidc_issuer.mint(kid=old_kid))  # the old key is still published
    assert oidc_issuer.requests[JWKS_PATH] == 2


async def test_unpublished_kid_is_refused_with_one_refetch_per_interval(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    await verifier.verify(oidc_issuer.mint())
    clock.now += 31
    secret_kid = oidc_issuer.add_key(publish=False, make_current=False)

    with pytest.raises(UnknownKeyError, match=f"signing key '{secret_kid}' is not published by"):
        await verifier.verify(oidc_issuer.mint(kid=secret_kid))
    assert oidc_issuer.requests[JWKS_PATH] == 2  # exactly one refresh for the unknown kid

    for _ in range(5):  # an attacker hammering with unknown kids causes no further fetches
        with pytest.raises(UnknownKeyError, match="re-read less than 30 s ago"):
            await verifier.verify(oidc_issuer.mint(kid=secret_kid))
    assert oidc_issuer.requests[JWKS_PATH] == 2

    # Now the issuer publishes it: still refused until the interval allows a refresh that shows it.
    oidc_issuer.publish_key(secret_kid)
    with pytest.raises(UnknownKeyError):
        await verifier.verify(oidc_issuer.mint(kid=secret_kid))
    clock.now += 30
    claims = await verifier.verify(oidc_issuer.mint(kid=secret_kid))
    assert claims.jti and oidc_issuer.requests[JWKS_PATH] == 3


async def test_removed_key_stops_verifying_after_ttl(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    old_kid = oidc_issuer.current_kid
    await verifier.verify(oidc_issuer.mint())
    oidc_issuer.add_key()
    oidc_issuer.remove_key(old_kid)
    await verifier.verify(oidc_issuer.mint(kid=old_kid))  # cached until the TTL runs out
    clock.now += 601
    with pytest.raises(UnknownKeyError):
        await verifier.verify(oidc_issuer.mint(kid=old_kid, iat=int(clock.now)))


async def test_unreachable_issuer_is_a_clear_server_side_error(clock: FakeClock) -> None:
    dead = LoopbackOidcIssuer().start()
    url, token = dead.url, dead.mint()
    dead.stop()
    settings = OidcSettings(audience=DEFAULT_AUDIENCE, issuers=(url,), http_timeout=2)
    async with OidcVerifier(settings, InMemoryJtiStore(), clock=clock) as verifier:
        with pytest.raises(JwksUnavailableError, match=f"signing keys of {url} could not be fetched: GET "):
            await verifier.verify(token)


async def test_outage_after_warm_cache_keeps_the_old_keys(
    oidc_issuer: LoopbackOidcIssuer, verifier: OidcVerifier, clock: FakeClock
) -> None:
    await verifier.verify(oidc_issuer.mint())
    url = oidc_issuer.url
    oidc_issuer.stop()
    clock.now += 601  # the cache TTL has run out and the refresh will fail
    claims = await verifier.verify(oidc_issuer.mint(iss=url, iat=int(clock.now)))
    assert claims.issuer == url
    assert verifier.jwks.fetches == 2


# -------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"audience": ""}, "audience must be set"),
        ({"leeway": 10}, "between 30 and 60"),
        ({"leeway": 120}, "between 30 and 60"),
        ({"issuers": ("http://token.example",)}, "must use https"),
        ({"issuers": ()}, "at least one"),
    ],
)
def test_unsafe_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"audience": "https://registry.test", **kwargs}
    with pytest.raises(ValueError, match=message):
        OidcSettings(**values)  # type: ignore[arg-type]
