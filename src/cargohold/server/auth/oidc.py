"""Verification of GitHub Actions OIDC ID tokens, before they are exchanged for a Cargohold credential.

The verifier answers one question: "is this a fresh, single-use token that a trusted issuer minted for
us?" Which project it may act on is :mod:`.trust`'s job. Every refusal raises an :class:`OidcError`
subclass whose message tells a CI user precisely what to fix, without echoing secrets.

Why each rule exists:

* **RS256 only.** The algorithm is fixed here, never read from the token, so ``alg: none`` and the
  "HS256 keyed with the RSA public key" confusion attack cannot work.
* **Exact issuer from a configured list**, checked *before* any network request: an attacker must never
  be able to make us fetch keys from a URL they chose.
* **Discovery + JWKS with a TTL cache, one refresh on an unknown** ``kid``, and a minimum interval
  between fetches: issuers rotate keys, but an attacker sending random ``kid`` values must not turn us
  into a request amplifier against the issuer (or a slow path for every request).
* **One exact audience.** A token whose ``aud`` lists several services is valid at each of them, so any
  one of those services could replay it here. A one-element list is the same as a string (RFC 7519) and
  is accepted; more elements are refused.
* **exp/iat required, bounded leeway, no future iat, maximum age:** GitHub tokens live 5 minutes; an
  old or future-dated token means a broken clock or a token kept around for later use.
* **jti required and claimed atomically** (per issuer) as the last step: a token can be exchanged once,
  even if two requests race with it. The claim expires after ``exp + leeway + margin``, i.e. only once
  the token could not pass the ``exp`` check anyway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from cargohold.clock import WallClock, utc_now
from cargohold.isotime import format_epoch

log = logging.getLogger(__name__)

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
ALGORITHM = "RS256"
MIN_RSA_BITS = 2048
MAX_TOKEN_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 512 * 1024
"""Cap on a discovery document or JWKS, so a hostile or broken issuer cannot exhaust memory."""


# ------------------------------------------------------------------------------------------ errors


class OidcError(Exception):
    """Base of every refusal; ``str(exc)`` is a precise, client-safe explanation."""


class MalformedTokenError(OidcError):
    """Not a decodable JWT."""


class AlgorithmNotAllowedError(OidcError):
    """Signed with anything but RS256 (including ``none``)."""


class UntrustedIssuerError(OidcError):
    """``iss`` is not one of the configured issuers."""


class UnknownKeyError(OidcError):
    """The token's ``kid`` is not in the issuer's published key set."""


class SignatureError(OidcError):
    """The signature does not verify with the issuer's key."""


class AudienceError(OidcError):
    """``aud`` is not exactly this server's audience."""


class ExpiredTokenError(OidcError):
    """``exp`` has passed (beyond the leeway)."""


class IssuedInFutureError(OidcError):
    """``iat`` is later than now + leeway."""


class NotYetValidError(OidcError):
    """``nbf`` is later than now + leeway."""


class TokenTooOldError(OidcError):
    """``iat`` is older than the configured maximum age."""


class MissingClaimError(OidcError):
    """A required claim is absent or empty."""


class InvalidClaimError(OidcError):
    """A claim has the wrong type or shape."""


class ReplayedTokenError(OidcError):
    """The token's ``jti`` was already used."""


class JwksUnavailableError(OidcError):
    """The issuer's discovery document or JWKS could not be fetched (a server-side 503, not a 401)."""


# ------------------------------------------------------------------------------------------ config


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _check_issuer_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.query or parts.fragment or not parts.hostname:
        raise ValueError(f"OIDC issuer {url!r} must be a URL with a host and without query or fragment")
    if parts.scheme != "https" and not _is_loopback_http(url):
        raise ValueError(f"OIDC issuer {url!r} must use https (plain http is allowed only on loopback)")


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """What the verifier accepts. ``audience`` has no default: it must name this server."""

    audience: str
    issuers: tuple[str, ...] = (GITHUB_ISSUER,)
    leeway: int = 60
    max_token_age: int = 600
    """Seconds since ``iat``. GitHub tokens expire after 300 s, so 600 s never refuses a real one."""
    jwks_ttl: float = 600.0
    min_refresh_interval: float = 30.0
    http_timeout: float = 5.0
    replay_margin: int = 5

    def __post_init__(self) -> None:
        if not self.audience:
            raise ValueError("the OIDC audience must be set (e.g. this registry's URL)")
        if not self.issuers:
            raise ValueError("at least one OIDC issuer must be trusted")
        for issuer in self.issuers:
            _check_issuer_url(issuer)
        if not 30 <= self.leeway <= 60:
            raise ValueError(f"OIDC leeway must be between 30 and 60 seconds, got {self.leeway}")
        if self.max_token_age <= 0 or self.jwks_ttl <= 0 or self.http_timeout <= 0:
            raise ValueError("max_token_age, jwks_ttl and http_timeout must be positive")
        if self.min_refresh_interval < 0:
            raise ValueError("min_refresh_interval cannot be negative")


# -------------------------------------------------------------------------------------- jti store


class JtiStore(Protocol):
    """Single-use registry of token ids. ``claim`` must be atomic: of two concurrent calls with the same
    ``(issuer, jti)`` exactly one returns True. Entries may be forgotten after ``expires_at`` (epoch s).
    """

    async def claim(self, issuer: str, jti: str, expires_at: float) -> bool: ...


class InMemoryJtiStore:
    """A process-local :class:`JtiStore` (tests, single-process servers). Expired entries are swept."""

    def __init__(self, clock: WallClock = utc_now, sweep_every: float = 60.0) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._last_sweep = clock().timestamp()

    async def claim(self, issuer: str, jti: str, expires_at: float) -> bool:
        # No await inside: the check-and-set is atomic within the event loop, and the lock makes it
        # atomic across threads too.
        with self._lock:
            now = self._clock().timestamp()
            if now - self._last_sweep >= self._sweep_every:
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                self._last_sweep = now
            key = (issuer, jti)
            previous = self._seen.get(key)
            if previous is not None and previous > now:
                return False
            self._seen[key] = expires_at
            return True

    def __len__(self) -> int:
        return len(self._seen)


# ---------------------------------------------------------------------------------------- claims


@dataclass(frozen=True, slots=True)
class GitHubClaims:
    """The verified claims Cargohold uses. IDs are decimal strings, as GitHub sends them."""

    issuer: str
    subject: str
    audience: str
    jti: str
    issued_at: int
    expires_at: int
    repository: str
    repository_id: str
    repository_owner: str
    repository_owner_id: str
    event_name: str
    ref: str
    sha: str
    job_workflow_ref: str
    workflow_ref: str | None = None
    workflow: str | None = None
    environment: str | None = None
    runner_environment: str | None = None
    ref_type: str | None = None
    actor: str | None = None
    actor_id: str | None = None
    run_id: str | None = None
    run_attempt: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def audit_fields(self) -> dict[str, str | None]:
        """Non-secret claims worth recording with the issued credential (who, what, which run)."""
        return {
            "repository": self.repository,
            "repository_id": self.repository_id,
            "ref": self.ref,
            "sha": self.sha,
            "job_workflow_ref": self.job_workflow_ref,
            "event_name": self.event_name,
            "run_id": self.run_id,
            "run_attempt": self.run_attempt,
            "actor": self.actor,
        }


_REQUIRED_STRINGS = ("sub", "repository", "repository_owner", "event_name", "ref", "sha", "job_workflow_ref")
_OPTIONAL_STRINGS = ("workflow_ref", "workflow", "environment", "runner_environment", "ref_type", "actor")


def _string_claim(payload: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        if required:
            raise MissingClaimError(f"the token has no {name!r} claim, which Cargohold requires")
        return None
    if not isinstance(value, str):
        raise InvalidClaimError(f"the token's {name!r} claim must be a string, got {type(value).__name__}")
    return value


def _id_claim(payload: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        if required:
            raise MissingClaimError(f"the token has no {name!r} claim, which Cargohold requires")
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return value
    raise InvalidClaimError(f"the token's {name!r} claim must be a decimal number, got {value!r}")


MAX_TIMESTAMP = 253402300800
"""Seconds from 1970 to the year 10000: larger times (and infinity, NaN) are no time a datetime can show."""


def _numeric(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if value is None:
        raise MissingClaimError(f"the token has no {name!r} claim, which Cargohold requires")
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) < MAX_TIMESTAMP:
        raise InvalidClaimError(f"the token's {name!r} claim must be a number of seconds, got {value!r}")
    return int(value)


def _parse_claims(payload: Mapping[str, Any], audience: str) -> GitHubClaims:
    strings = {name: _string_claim(payload, name, True) for name in _REQUIRED_STRINGS}
    optional = {name: _string_claim(payload, name, False) for name in _OPTIONAL_STRINGS}
    jti = _string_claim(payload, "jti", True)
    assert jti is not None
    if len(jti) > 256:
        raise InvalidClaimError("the token's 'jti' claim is longer than 256 characters")
    repository, owner = strings["repository"], strings["repository_owner"]
    assert repository is not None and owner is not None
    repo_owner, _, repo_name = repository.partition("/")
    if not repo_name or "/" in repo_name or repo_owner.casefold() != owner.casefold():
        raise InvalidClaimError(
            f"the token's repository {repository!r} is not of the form "
            f"'{owner}/<name>' that its repository_owner claim implies"
        )
    return GitHubClaims(
        issuer=str(payload["iss"]),
        subject=strings["sub"] or "",
        audience=audience,
        jti=jti,
        issued_at=_numeric(payload, "iat"),
        expires_at=_numeric(payload, "exp"),
        repository=repository,
        repository_id=_id_claim(payload, "repository_id", True) or "",
        repository_owner=owner,
        repository_owner_id=_id_claim(payload, "repository_owner_id", True) or "",
        event_name=strings["event_name"] or "",
        ref=strings["ref"] or "",
        sha=strings["sha"] or "",
        job_workflow_ref=strings["job_workflow_ref"] or "",
        actor_id=_id_claim(payload, "actor_id", False),
        run_id=_id_claim(payload, "run_id", False),
        run_attempt=_id_claim(payload, "run_attempt", False),
        raw=dict(payload),
        **optional,
    )


# ------------------------------------------------------------------------------------------ JWKS


@dataclass(slots=True)
class _KeySet:
    keys: dict[str, RSAPublicKey]
    fetched_at: float


class JwksCache:
    """Per-issuer JWKS, fetched via OIDC discovery, cached for ``ttl`` seconds.

    Fetch attempts for an issuer (successful or not) are at least ``min_refresh_interval`` apart, and a
    per-issuer lock makes concurrent cache misses share one fetch. If a scheduled refresh fails, the
    previous key set keeps being used (an issuer outage must not lock every CI job out at once).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        ttl: float,
        min_refresh_interval: float,
        timeout: float,
        clock: WallClock = utc_now,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._last_attempt: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0
        """Number of JWKS fetch attempts, for metrics and tests."""

    def _may_fetch(self, issuer: str, now: float) -> bool:
        last = self._last_attempt.get(issuer)
        return last is None or now - last >= self._min_interval

    async def get_key(self, issuer: str, kid: str) -> RSAPublicKey:
        """The RSA key ``kid`` of ``issuer``, refreshing at most once per call and per interval."""
        lock = self._locks.setdefault(issuer, asyncio.Lock())
        async with lock:
            now = self._clock().timestamp()
            keyset = self._sets.get(issuer)
            refreshed = False
            if (keyset is None or now - keyset.fetched_at >= self._ttl) and self._may_fetch(issuer, now):
                keyset = await self._refresh(issuer, keyset)
                refreshed = True
            if keyset is None:
                raise JwksUnavailableError(
                    f"the signing keys of {issuer} could not be fetched: {self._last_error.get(issuer)}; "
                    "try again shortly"
                )
            if kid in keyset.keys:
                return keyset.keys[kid]
            if not refreshed and self._may_fetch(issuer, now):
                keyset = await self._refresh(issuer, keyset)
                assert keyset is not None
                if kid in keyset.keys:
                    return keyset.keys[kid]
                refreshed = True
            if refreshed:
                raise UnknownKeyError(f"the token's signing key {kid!r} is not published by {issuer}")
            raise UnknownKeyError(
                f"the token's signing key {kid!r} is not published by {issuer} (its key set was "
                f"re-read less than {self._min_interval:g} s ago; not re-reading it again yet)"
            )

    async def _refresh(self, issuer: str, stale: _KeySet | None) -> _KeySet | None:
        self._last_attempt[issuer] = self._clock().timestamp()
        self.fetches += 1
        try:
            async with asyncio.timeout(self._timeout * 2):
                keys = await self._fetch(issuer)
        except (JwksUnavailableError, TimeoutError) as exc:
            message = str(exc) or f"timed out after {self._timeout * 2:g} s"
            self._last_error[issuer] = message
            if stale is None:
                raise JwksUnavailableError(
                    f"the signing keys of {issuer} could not be fetched: {message}; try again shortly"
                ) from exc
            log.warning("JWKS refresh for %s failed (%s); keeping the previous key set", issuer, message)
            return stale
        keyset = _KeySet(keys, self._clock().timestamp())
        self._sets[issuer] = keyset
        return keyset

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._client.stream(
                "GET", url, timeout=self._timeout, follow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise JwksUnavailableError(f"GET {url} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise JwksUnavailableError(f"GET {url} returned more than {MAX_DOCUMENT_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise JwksUnavailableError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise JwksUnavailableError(f"GET {url} did not return JSON") from exc
        if not isinstance(document, dict):
            raise JwksUnavailableError(f"GET {url} did not return a JSON object")
        return document

    async def _fetch(self, issuer: str) -> dict[str, RSAPublicKey]:
        discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        config = await self._get_json(discovery_url)
        if config.get("issuer") != issuer:
            raise JwksUnavailableError(
                f"{discovery_url} names issuer {config.get('issuer')!r}, expected exactly {issuer!r}"
            )
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise JwksUnavailableError(f"{discovery_url} has no jwks_uri")
        scheme = urlsplit(jwks_uri).scheme
        if scheme != "https" and not (_is_loopback_http(jwks_uri) and _is_loopback_http(issuer)):
            raise JwksUnavailableError(f"{discovery_url} points at a non-https jwks_uri {jwks_uri!r}")
        jwks = await self._get_json(jwks_uri)
        entries = jwks.get("keys")
        if not isinstance(entries, list):
            raise JwksUnavailableError(f"{jwks_uri} has no 'keys' list")
        keys: dict[str, RSAPublicKey] = {}
        for entry in entries:
            key = _usable_key(entry)
            if key is not None:
                keys[entry["kid"]] = key
        return keys


def _usable_key(entry: object) -> RSAPublicKey | None:
    """An RS256 signing key from a JWK, or None for anything else (other types are simply not ours)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("kty") != "RSA":
        return None
    if entry.get("use", "sig") != "sig" or entry.get("alg", ALGORITHM) != ALGORITHM:
        return None
    try:
        key = jwt.PyJWK(entry, algorithm=ALGORITHM).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        log.warning("ignoring unparseable JWK %r", entry.get("kid"))
        return None
    if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        return None
    return key


# -------------------------------------------------------------------------------------- verifier


class OidcVerifier:
    """Verifies GitHub Actions ID tokens. Async; create one per server and ``aclose()`` it on shutdown."""

    def __init__(
        self,
        settings: OidcSettings,
        jti_store: JtiStore,
        *,
        client: httpx.AsyncClient | None = None,
        clock: WallClock = utc_now,
    ) -> None:
        self.settings = settings
        self._jti_store = jti_store
        self._clock = clock
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=settings.http_timeout, follow_redirects=False)
        self.jwks = JwksCache(
            self._client,
            ttl=settings.jwks_ttl,
            min_refresh_interval=settings.min_refresh_interval,
            timeout=settings.http_timeout,
            clock=clock,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> OidcVerifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def verify(self, token: str) -> GitHubClaims:
        """Verify ``token`` completely and burn its ``jti``; raises an :class:`OidcError` subclass."""
        header, unverified = self._decode_unverified(token)
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise MissingClaimError("the token has no 'iss' claim, so its issuer cannot be checked")
        if issuer not in self.settings.issuers:
            raise UntrustedIssuerError(
                f"the token was issued by {issuer!r}, which this server does not trust "
                f"(trusted issuers: {', '.join(self.settings.issuers)})"
            )
        kid = header["kid"]
        key = await self.jwks.get_key(issuer, kid)
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise SignatureError(
                f"the token's signature does not verify with {issuer}'s key {kid!r}: it was altered or "
                "not signed by that issuer"
            ) from exc
        except jwt.PyJWTError as exc:
            raise MalformedTokenError(f"the token cannot be decoded: {exc}") from exc
        audience = self._check_audience(payload)
        self._check_times(payload)
        claims = _parse_claims(payload, audience)
        expires_at = claims.expires_at + self.settings.leeway + self.settings.replay_margin
        if not await self._jti_store.claim(issuer, claims.jti, expires_at):
            raise ReplayedTokenError(
                f"this token (jti {claims.jti!r}) has already been exchanged; request a fresh ID token "
                "for every exchange"
            )
        return claims

    @staticmethod
    def _decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(token, str) or token.count(".") != 2:
            raise MalformedTokenError("the token is not a JWT (expected three dot-separated parts)")
        if len(token) > MAX_TOKEN_BYTES:
            raise MalformedTokenError(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise MalformedTokenError(f"the token cannot be decoded: {exc}") from exc
        alg = header.get("alg")
        if alg != ALGORITHM:
            if not alg or str(alg).lower() == "none":
                raise AlgorithmNotAllowedError(
                    "the token is unsigned (alg 'none'); only RS256-signed tokens are accepted"
                )
            raise AlgorithmNotAllowedError(f"the token is signed with {alg!r}; only RS256 is accepted")
        if "crit" in header:
            raise MalformedTokenError("the token uses critical header extensions, which are not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise MalformedTokenError("the token's header has no 'kid', so its signing key cannot be found")
        return header, payload

    def _check_audience(self, payload: Mapping[str, Any]) -> str:
        expected = self.settings.audience
        aud = payload.get("aud")
        if aud is None or aud in ("", []):
            raise MissingClaimError(f"the token has no audience; request it with audience={expected!r}")
        if isinstance(aud, list):
            if len(aud) > 1:
                raise AudienceError(
                    f"the token names {len(aud)} audiences ({', '.join(map(repr, aud))}); this server "
                    f"accepts only a token minted for exactly {expected!r}"
                )
            aud = aud[0]
        if aud != expected:
            raise AudienceError(f"the token's audience is {aud!r}, this server expects {expected!r}")
        return expected

    def _check_times(self, payload: Mapping[str, Any]) -> None:
        now = self._clock().timestamp()
        leeway = self.settings.leeway
        exp = _numeric(payload, "exp")
        iat = _numeric(payload, "iat")
        if exp <= iat:
            raise InvalidClaimError("the token's 'exp' is not after its 'iat'")
        if now > exp + leeway:
            raise ExpiredTokenError(
                f"the token expired at {format_epoch(exp)} ({int(now - exp)} s ago); request a fresh ID token "
                "right before the exchange"
            )
        if iat > now + leeway:
            raise IssuedInFutureError(
                f"the token's 'iat' is {int(iat - now)} s in the future (at most {leeway} s of clock "
                "skew is tolerated); check the clocks"
            )
        if now - iat > self.settings.max_token_age:
            raise TokenTooOldError(
                f"the token was issued {int(now - iat)} s ago; tokens older than "
                f"{self.settings.max_token_age} s are refused"
            )
        if "nbf" in payload:
            nbf = _numeric(payload, "nbf")
            if nbf > now + leeway:
                raise NotYetValidError(f"the token is not valid before {format_epoch(nbf)}; check the clocks")
