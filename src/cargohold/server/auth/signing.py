"""Server signing keys, Docker token-auth registry JWTs, and scope parsing/intersection.

Keys are Ed25519 (small, fast, no parameter choices to get wrong). ``kid`` is the RFC 7638 JWK thumbprint of
the public key, so it is derived from the key itself and can never point at the wrong one.

The keys live in the metadata database (table ``signing_keys``, :mod:`cargohold.metadata.signing_keys`), so
every replica sharing that database signs and verifies with the same keys, without a shared disk. The newest
key signs; older keys keep verifying tokens they signed until they are retired, which is what lets a rotation
happen without failing in-flight pulls. A replica re-reads the keys every :data:`KEY_RELOAD_SECONDS` (to sign
with a key rotated elsewhere and to stop trusting a retired one) and at once when a token names a key it has
not loaded (a token signed by a replica that rotated a moment ago), at most once per
:data:`UNKNOWN_KID_RELOAD_SECONDS` so a flood of forged ``kid``s cannot hammer the database.

Before keys moved into the database they lived in ``<data_dir>/keys/`` as ``<kid>.pem`` files plus a
``current`` file; a database without keys imports them on first start, so tokens issued before the upgrade
keep verifying.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cargohold.clock import MonotonicClock, WallClock, monotonic, utc_now
from cargohold.isotime import format_epoch
from cargohold.metadata.signing_keys import SigningKeyStore, StoredSigningKey
from cargohold.oci.reference import is_valid_name
from cargohold.server.auth.credentials import ACTIONS_PULL, REPOSITORY_ACTIONS, Principal

SERVICE = "cargohold"
"""Default ``service``/``aud`` of registry tokens (the Docker ``service`` parameter)."""
DEFAULT_ISSUER = "cargohold-token-service"
DEFAULT_REGISTRY_TOKEN_TTL = 300
"""Seconds. Clients re-fetch on 401, so a short life costs little and limits a leaked JWT's use."""
ALGORITHM = "EdDSA"
KEYS_DIRNAME = "keys"
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
KEY_RELOAD_SECONDS = 10.0
"""How stale a replica's view of the keys may get: a rotation or retirement elsewhere reaches it within this."""
UNKNOWN_KID_RELOAD_SECONDS = 1.0
VERIFIED_TOKENS_CACHED = 10_000
"""Registry tokens whose signature check is remembered (an LRU keyed by the token's SHA-256). Docker sends the
same token with every request of a pull, and an Ed25519 check costs more than the rest of a manifest GET's
authorisation; 10,000 entries of a few hundred bytes each are a few MiB at most."""

log = logging.getLogger(__name__)


class KeyError_(Exception):
    """The key directory is unusable (bad permissions, corrupt file, missing current key)."""


class ScopeError(ValueError):
    """A ``scope`` parameter is malformed; the message says which one and why."""


class RegistryTokenError(Exception):
    """A registry JWT presented to the registry is invalid; the message is safe to return."""


class UnknownSigningKey(RegistryTokenError):
    """The token names a key this process has not loaded: retired, forged, or rotated in by another replica."""


# --------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class ServerKey:
    """One Ed25519 signing key and its ``kid``."""

    kid: str
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @classmethod
    def generate(cls) -> ServerKey:
        key = Ed25519PrivateKey.generate()
        return cls(thumbprint(key.public_key()), key)

    def public_jwk(self) -> dict[str, str]:
        """The public half as a JWK (for a JWKS endpoint, if one is ever exposed)."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64(_raw_public(self.public_key)),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): a stable ``kid`` derived from the key."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64(_raw_public(key))}, separators=(",", ":"), sort_keys=True
    )
    return _b64(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The current signing key plus older keys that still verify."""

    current: ServerKey
    previous: tuple[ServerKey, ...] = ()

    def find(self, kid: str) -> ServerKey | None:
        """The key with ``kid`` (current or previous), if loaded."""
        return next((k for k in (self.current, *self.previous) if k.kid == kid), None)

    @property
    def kids(self) -> tuple[str, ...]:
        return (self.current.kid, *(k.kid for k in self.previous))


def _keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / KEYS_DIRNAME


def _check_private(path: Path) -> None:
    mode = path.lstat().st_mode
    if not stat.S_ISREG(mode):
        raise KeyError_(f"{path} is not a regular file")
    if mode & 0o077:
        raise KeyError_(
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run 'chmod 600 {path}' (and consider rotating the key)"
        )


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ServerKey:
    _check_private(path)
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise KeyError_(f"{path} is not a readable PEM private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyError_(f"{path} holds a {type(private).__name__}, Cargohold signs with Ed25519 keys")
    kid = thumbprint(private.public_key())
    if path.stem != kid:
        raise KeyError_(f"{path} holds the key with kid {kid}, but its file name says {path.stem}")
    return ServerKey(kid, private)


@contextlib.contextmanager
def _locked(directory: Path, exclusive: bool) -> Iterator[None]:
    """Serialise key-directory changes between processes (several servers may share a data dir)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def load_keyring(data_dir: Path) -> KeyRing:
    """Load the key files an older Cargohold kept in ``<data_dir>/keys/`` (imported into the database once)."""
    directory = _keys_dir(data_dir)
    if not directory.is_dir():
        raise KeyError_(f"{directory} does not exist: no signing keys")
    with _locked(directory, exclusive=False):
        return _load_unlocked(directory)


def _load_unlocked(directory: Path) -> KeyRing:
    pointer = directory / "current"
    try:
        _check_private(pointer)
        current_kid = pointer.read_text("ascii").strip()
    except FileNotFoundError as exc:
        raise KeyError_(f"{pointer} is missing: no current signing key") from exc
    if not _KID_RE.match(current_kid):
        raise KeyError_(f"{pointer} does not contain a key id")
    keys = {path.stem: _load_key(path) for path in sorted(directory.glob("*.pem"))}
    if current_kid not in keys:
        raise KeyError_(f"{pointer} names key {current_kid}, but {directory}/{current_kid}.pem is missing")
    current = keys.pop(current_kid)
    return KeyRing(current, tuple(keys.values()))


def _from_row(row: StoredSigningKey) -> ServerKey:
    try:
        private = serialization.load_pem_private_key(row.private_pem.encode("ascii"), password=None)
    except ValueError as exc:
        raise KeyError_(f"signing key {row.kid} in the database is not a readable PEM private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyError_(f"signing key {row.kid} in the database is a {type(private).__name__}, not Ed25519")
    kid = thumbprint(private.public_key())
    if kid != row.kid:
        raise KeyError_(f"signing key {row.kid} in the database holds the key with kid {kid}")
    return ServerKey(kid, private)


def database_keyring(store: SigningKeyStore) -> KeyRing:
    """Every key in the database; the newest signs (blocking: run it on the I/O pool from the event loop)."""
    rows = store.list_keys()
    if not rows:
        raise KeyError_("the database holds no signing keys; start a server once to create the first one")
    keys = [_from_row(row) for row in rows]
    return KeyRing(keys[-1], tuple(reversed(keys[:-1])))


def load_or_create_keyring(store: SigningKeyStore, data_dir: Path | None = None) -> KeyRing:
    """The keys every replica shares, creating them on the first start against a database.

    A database without keys first imports the key files of an older Cargohold from ``<data_dir>/keys/`` (the
    current one last, so it stays current); otherwise it gets one new key. The first key is stored only if the
    table is still empty in the same transaction, so replicas starting at once on SQLite agree on one key.
    """
    if not store.list_keys():
        legacy = data_dir is not None and (_keys_dir(data_dir) / "current").exists()
        if legacy:
            assert data_dir is not None
            ring = load_keyring(data_dir)
            first, *rest = (*reversed(ring.previous), ring.current)
            if store.add(first.kid, _pem(first.private_key).decode("ascii"), only_if_empty=True):
                for key in rest:
                    store.add(key.kid, _pem(key.private_key).decode("ascii"))
        else:
            key = ServerKey.generate()
            store.add(key.kid, _pem(key.private_key).decode("ascii"), only_if_empty=True)
    return database_keyring(store)


def rotate_key(store: SigningKeyStore) -> KeyRing:
    """Add a new signing key; every replica signs with it within :data:`KEY_RELOAD_SECONDS`, and the old one
    keeps verifying until retired."""
    database_keyring(store)  # refuse to rotate unreadable keys
    key = ServerKey.generate()
    store.add(key.kid, _pem(key.private_key).decode("ascii"))
    return database_keyring(store)


def retire_key(store: SigningKeyStore, kid: str) -> KeyRing:
    """Delete a previous key, so tokens it signed stop verifying (on every replica within
    :data:`KEY_RELOAD_SECONDS`). The current key cannot be retired."""
    ring = database_keyring(store)
    if kid == ring.current.kid:
        raise KeyError_(f"key {kid} is the current signing key; rotate first, then retire it")
    if ring.find(kid) is None or not store.delete(kid):
        raise KeyError_(f"no signing key {kid} in the database (keys: {', '.join(ring.kids)})")
    return database_keyring(store)


# ------------------------------------------------------------------------------------------- scopes


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One requested or granted resource: ``type:name:actions``.

    ``build_id`` is a Cargohold extension on *granted* entries: pull access narrowed to one build.
    """

    type: str
    name: str
    actions: tuple[str, ...]
    build_id: str | None = None

    def to_claim(self) -> dict[str, object]:
        entry: dict[str, object] = {"type": self.type, "name": self.name, "actions": list(self.actions)}
        if self.build_id is not None:
            entry["build"] = self.build_id
        return entry

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


_TYPE_RE = re.compile(r"^([a-z0-9]+)(?:\([a-z0-9]+\))?$")
_ACTION_RE = re.compile(r"^(?:[a-z]+|\*)$")


def parse_scope(scope: str) -> ResourceScope:
    """Parse one ``type[(class)]:name:action[,action...]`` scope.

    The name may itself contain ``:`` (a ``host:port/`` prefix), so the type is split at the first colon
    and the actions at the last. Actions are de-duplicated and sorted so equal requests compare equal.
    """
    head, sep, rest = scope.partition(":")
    name, sep2, actions_part = rest.rpartition(":")
    if not sep or not sep2 or not head or not name:
        raise ScopeError(
            f"scope {scope!r} is not of the form type:name:actions (e.g. repository:myproject/app:pull,push)"
        )
    type_match = _TYPE_RE.match(head)
    if not type_match:
        raise ScopeError(f"scope {scope!r} has an invalid resource type {head!r}")
    actions = [a for a in actions_part.split(",") if a]
    if not actions or not all(_ACTION_RE.match(a) for a in actions):
        raise ScopeError(f"scope {scope!r} has invalid actions {actions_part!r}")
    return ResourceScope(type_match.group(1), name, tuple(sorted(set(actions))))


def parse_scopes(params: Iterable[str]) -> list[ResourceScope]:
    """Parse every ``scope`` query parameter (each may hold several space-separated scopes).

    Requests for the same resource are merged (union of actions), in first-seen order.
    """
    merged: dict[tuple[str, str], set[str]] = {}
    for param in params:
        for item in param.split():
            parsed = parse_scope(item)
            merged.setdefault((parsed.type, parsed.name), set()).update(parsed.actions)
    return [ResourceScope(t, n, tuple(sorted(a))) for (t, n), a in merged.items()]


def granted_access(principal: Principal, requested: Iterable[ResourceScope]) -> list[ResourceScope]:
    """Intersect requested scopes with what ``principal`` may do; entries granting nothing are dropped.

    Per the Docker token spec a partial grant is not an error: the client gets a token with less access
    and the registry answers 401/403 when it tries more. Rules:

    * admin: every repository action (``pull``, ``push``, ``delete``; ``*`` means all three) and
      ``registry:catalog:*``;
    * everyone else: the actions (``pull``, ``push``, ``delete``) their permissions hold on the repositories
      those cover, so ``delete`` (and ``*``, which means all three) is granted only to a credential that
      holds delete there; a build-scoped pull grant carries ``build_id``; never the catalog;
    * unknown resource types, unknown actions and invalid repository names grant nothing.
    """
    granted: list[ResourceScope] = []
    for scope in requested:
        if scope.type == "registry":
            if principal.is_admin and scope.name == "catalog" and "*" in scope.actions:
                granted.append(ResourceScope("registry", "catalog", ("*",)))
            continue
        if scope.type != "repository" or not is_valid_name(scope.name):
            continue
        wanted = set(scope.actions)
        if "*" in wanted:
            wanted = set(REPOSITORY_ACTIONS)
        if principal.is_admin:
            actions = wanted & REPOSITORY_ACTIONS
            if actions:
                granted.append(ResourceScope("repository", scope.name, tuple(sorted(actions))))
            continue
        allowed: set[str] = set()
        build_ids: set[str | None] = set()
        for permission in principal.permissions:
            if permission.covers(scope.name):
                got = wanted & permission.actions & REPOSITORY_ACTIONS
                allowed |= got
                if ACTIONS_PULL in got:
                    build_ids.add(permission.build_id)
        if not allowed:
            continue
        # An unrestricted pull grant (build None) beats any build-narrowed one; two different builds
        # cannot be expressed in one entry, so that case narrows to nothing rather than to "any build".
        build_id: str | None = None
        if ACTIONS_PULL in allowed and None not in build_ids:
            if len(build_ids) != 1:
                allowed.discard(ACTIONS_PULL)
            else:
                build_id = next(iter(build_ids))
        if allowed:
            granted.append(ResourceScope("repository", scope.name, tuple(sorted(allowed)), build_id))
    return granted


# ----------------------------------------------------------------------------------- registry JWTs


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A signed registry token and the fields of the Docker token response."""

    token: str
    expires_in: int
    issued_at: float
    access: tuple[ResourceScope, ...]

    def response_body(self) -> dict[str, object]:
        """The JSON body for ``GET /token`` (both ``token`` and ``access_token``, as clients differ)."""
        issued = format_epoch(self.issued_at)
        return {"token": self.token, "access_token": self.token, "expires_in": self.expires_in, "issued_at": issued}


@dataclass(frozen=True, slots=True)
class RegistryClaims:
    """A verified registry token's claims."""

    subject: str
    access: tuple[ResourceScope, ...]
    expires_at: int
    jti: str
    raw: dict[str, object] = field(repr=False)

    def allows(self, repository: str, action: str) -> bool:
        """Whether this token grants ``action`` on ``repository``."""
        return any(
            entry.type == "repository" and entry.name == repository and action in entry.actions for entry in self.access
        )

    def build_restriction(self, repository: str) -> str | None:
        """The build id a pull on ``repository`` is narrowed to, if any."""
        for entry in self.access:
            if entry.type == "repository" and entry.name == repository:
                return entry.build_id
        return None


@dataclass
class RegistryTokenSigner:
    """Issues and verifies the short-lived JWTs the registry's bearer challenge asks for."""

    keyring: KeyRing
    issuer: str = DEFAULT_ISSUER
    service: str = SERVICE
    ttl: int = DEFAULT_REGISTRY_TOKEN_TTL
    leeway: int = 30
    clock: WallClock = utc_now
    reload: Callable[[], KeyRing] | None = None
    """Reads the shared keys again (blocking); None for a fixed ring."""
    monotonic: MonotonicClock = monotonic
    _unknown_kid_reload_at: float | None = field(default=None, repr=False)

    def refresh(self) -> KeyRing:
        """Re-read the keys (blocking: from the event loop, run it on the I/O pool)."""
        if self.reload is not None:
            self.keyring = self.reload()
        return self.keyring

    def refresh_for_unknown_kid(self) -> bool:
        """Re-read the keys because a token named one not loaded; False (nothing read) if that happened less than
        :data:`UNKNOWN_KID_RELOAD_SECONDS` ago, so forged ``kid``s cost at most one query a second (blocking)."""
        now = self.monotonic()
        last = self._unknown_kid_reload_at
        if self.reload is None or (last is not None and now - last < UNKNOWN_KID_RELOAD_SECONDS):
            return False
        self._unknown_kid_reload_at = now
        try:
            self.refresh()
        except KeyError_ as exc:  # unreadable keys in the database: keep the ring we have, refuse this token
            log.error("re-reading the signing keys failed: %s", exc)
            return False
        return True

    _verified: OrderedDict[bytes, tuple[RegistryClaims, str]] = field(
        default_factory=OrderedDict, init=False, repr=False
    )
    """``sha256(token) -> (claims, kid)`` of tokens whose signature was checked (see VERIFIED_TOKENS_CACHED)."""

    def issue(self, subject: str, access: Iterable[ResourceScope]) -> IssuedToken:
        """Sign a token for ``subject`` carrying ``access`` (already intersected by the caller)."""
        now = int(self.clock().timestamp())
        granted = tuple(access)
        payload = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
            "access": [entry.to_claim() for entry in granted],
        }
        token = jwt.encode(
            payload,
            self.keyring.current.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self.keyring.current.kid, "typ": "JWT"},
        )
        return IssuedToken(token, self.ttl, now, granted)

    def verify(self, token: str) -> RegistryClaims:
        """Verify a bearer token from a registry request; any key in the ring may have signed it.

        A token verified before is looked up by its hash instead of checking the signature again; what can
        change since, its expiry and whether its key is still in the ring, is checked on every use. (Whether
        the credential behind it is still live is the caller's check, on every request.)
        """
        cache_key = hashlib.sha256(token.encode()).digest()
        claims = self._cached(cache_key)
        if claims is not None:
            return claims
        claims, kid = self._verify_signed(token)
        self._verified[cache_key] = (claims, kid)
        if len(self._verified) > VERIFIED_TOKENS_CACHED:
            self._verified.popitem(last=False)
        return claims

    def verified_before(self, token: str) -> RegistryClaims | None:
        """The claims of a token :meth:`verify` accepted before and would accept now, else None (without
        parsing anything: the caller need not know whether ``token`` is a registry JWT at all)."""
        return self._cached(hashlib.sha256(token.encode()).digest())

    def _cached(self, cache_key: bytes) -> RegistryClaims | None:
        hit = self._verified.get(cache_key)
        if hit is None:
            return None
        claims, kid = hit
        if self.clock().timestamp() <= claims.expires_at + self.leeway and self.keyring.find(kid) is not None:
            self._verified.move_to_end(cache_key)
            return claims
        del self._verified[cache_key]  # and verify's full check explains the refusal
        return None

    def _verify_signed(self, token: str) -> tuple[RegistryClaims, str]:
        """The full check: header, key, signature, audience, issuer and times; the claims and the key's id."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise RegistryTokenError("the bearer token is not a JWT") from exc
        if header.get("alg") != ALGORITHM:
            raise RegistryTokenError(
                f"the bearer token uses algorithm {header.get('alg')!r}, this registry only accepts {ALGORITHM}"
            )
        kid = header.get("kid")
        key = self.keyring.find(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnknownSigningKey(
                "the bearer token was signed by a key this registry no longer trusts; request a new token"
            )
        now = self.clock().timestamp()
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise RegistryTokenError("the bearer token's signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise RegistryTokenError(f"the bearer token is invalid: {exc}") from exc
        # Time checks use the injectable clock (PyJWT only knows the wall clock).
        if now > claims["exp"] + self.leeway:
            raise RegistryTokenError("the bearer token has expired; request a new token")
        if now + self.leeway < claims["nbf"]:
            raise RegistryTokenError("the bearer token is not valid yet (check the server clock)")
        verified = RegistryClaims(
            str(claims["sub"]), _parse_access(claims.get("access")), int(claims["exp"]), str(claims["jti"]), claims
        )
        return verified, key.kid


def _parse_access(value: object) -> tuple[ResourceScope, ...]:
    if not isinstance(value, list):
        raise RegistryTokenError("the bearer token has no access list")
    entries = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("actions"), list):
            raise RegistryTokenError("the bearer token's access list is malformed")
        build = item.get("build")
        entries.append(
            ResourceScope(
                str(item.get("type")),
                str(item.get("name")),
                tuple(str(a) for a in item["actions"]),
                None if build is None else str(build),
            )
        )
    return tuple(entries)
