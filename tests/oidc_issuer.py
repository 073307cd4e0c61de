"""A loopback stand-in for GitHub's OIDC issuer, for tests.

It runs ``http.server`` in a thread (so it serves sync tests, async tests and subprocesses alike) on a
free 127.0.0.1 port and exposes:

* ``/.well-known/openid-configuration`` and ``/.well-known/jwks`` (RSA keys; rotation via
  :meth:`LoopbackOidcIssuer.add_key` / :meth:`remove_key`, unpublished keys for "unknown kid" tests);
* ``/actions-token?audience=...`` with ``Authorization: bearer <request token>``, answering
  ``{"value": "<jwt>"}`` like ``ACTIONS_ID_TOKEN_REQUEST_URL`` does (see :meth:`actions_env`);
* :meth:`mint` for GitHub-shaped tokens with presets (push, tag, pull_request, pull_request_target,
  environment, reusable).

Use the ``oidc_issuer`` fixture (import :func:`oidc_issuer_fixture` into the test module), or
``with LoopbackOidcIssuer() as i:``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_AUDIENCE = "http://cargohold.test"
TOKEN_LIFETIME = 300
"""GitHub's ID tokens expire 300 s after ``iat``."""

OWNER, OWNER_ID = "octo-org", "1001"
REPO, REPO_ID = "octo-org/app", "2002"


def _preset_claims(preset: str, owner: str, repo: str) -> dict[str, Any]:
    """Claims that differ between trigger kinds, shaped like GitHub's."""
    workflow_file = f"{repo}/.github/workflows/ci.yml"
    base: dict[str, Any] = {
        "sub": f"repo:{repo}:ref:refs/heads/main",
        "ref": "refs/heads/main",
        "ref_type": "branch",
        "event_name": "push",
        "workflow": "CI",
        "workflow_ref": f"{workflow_file}@refs/heads/main",
        "job_workflow_ref": f"{workflow_file}@refs/heads/main",
    }
    if preset == "push":
        return base
    if preset == "tag":
        ref = "refs/tags/v1.2.3"
        return {
            **base,
            "sub": f"repo:{repo}:ref:{ref}",
            "ref": ref,
            "ref_type": "tag",
            "workflow_ref": f"{workflow_file}@{ref}",
            "job_workflow_ref": f"{workflow_file}@{ref}",
        }
    if preset in ("pull_request", "pull_request_target"):
        ref = "refs/pull/7/merge" if preset == "pull_request" else "refs/heads/main"
        return {
            **base,
            "sub": f"repo:{repo}:pull_request",
            "ref": ref,
            "event_name": preset,
            "head_ref": "contributor-patch",
            "base_ref": "main",
            "workflow_ref": f"{workflow_file}@{ref}",
            "job_workflow_ref": f"{workflow_file}@{ref}",
        }
    if preset == "environment":
        return {**base, "sub": f"repo:{repo}:environment:production", "environment": "production"}
    if preset == "reusable":
        shared = f"{owner}/shared-workflows/.github/workflows/build.yml@refs/tags/v1"
        return {**base, "job_workflow_ref": shared, "job_workflow_sha": "b" * 40}
    raise ValueError(f"unknown preset {preset!r}")


PRESETS = ("push", "tag", "pull_request", "pull_request_target", "environment", "reusable")


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey
    published: bool

    def jwk(self) -> dict[str, Any]:
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "alg": "RS256", "use": "sig"}


class LoopbackOidcIssuer:
    """GitHub-like OIDC issuer on 127.0.0.1; thread-based, start()/stop() or use as a context manager."""

    def __init__(self, *, audience: str = DEFAULT_AUDIENCE) -> None:
        self.audience = audience
        self.request_token = secrets.token_urlsafe(24)
        self.requests: Counter[str] = Counter()
        """Requests served, by path: lets tests count discovery/JWKS fetches."""
        self.advertised_issuer: str | None = None
        """If set, the discovery document names this issuer instead of the real URL (misconfig tests)."""
        self.actions_preset = "push"
        self.actions_claims: dict[str, Any] = {}
        """Overrides for tokens served by ``/actions-token``."""
        self.actions_unavailable = 0
        """How many ``/actions-token`` requests to answer 503 first (GitHub's token service having a bad minute)."""
        self._keys: dict[str, _Key] = {}
        self._current: str | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self.add_key()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LoopbackOidcIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="oidc-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> LoopbackOidcIssuer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The issuer URL (also the ``iss`` of minted tokens); still known after :meth:`stop`."""
        if self._url is None:
            raise RuntimeError("the issuer has never been started")
        return self._url

    # -- keys ----------------------------------------------------------------------------------------

    def add_key(self, *, publish: bool = True, make_current: bool = True) -> str:
        """Generate an RSA-2048 key; returns its kid. Unpublished keys sign but are not in the JWKS."""
        kid = uuid.uuid4().hex[:16]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            self._keys[kid] = _Key(kid, key, publish)
            if make_current:
                self._current = kid
        return kid

    def publish_key(self, kid: str) -> None:
        with self._lock:
            self._keys[kid].published = True

    def remove_key(self, kid: str) -> None:
        """Take a key out of the JWKS, as an issuer does after rotation.

        The private key is kept so tests can still sign with it (a leaked or retired key must stop
        verifying). The current key cannot be removed: add another first.
        """
        with self._lock:
            if kid == self._current:
                raise ValueError("cannot remove the current key; add another first")
            self._keys[kid].published = False

    @property
    def current_kid(self) -> str:
        assert self._current is not None
        return self._current

    def private_key(self, kid: str | None = None) -> rsa.RSAPrivateKey:
        return self._keys[kid or self.current_kid].private

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in self._keys.values() if k.published]}

    # -- tokens --------------------------------------------------------------------------------------

    def claims(self, preset: str = "push", **overrides: Any) -> dict[str, Any]:
        """The claim set :meth:`mint` would sign; an override of None removes that claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now - 600,  # GitHub backdates nbf
            "exp": now + TOKEN_LIFETIME,
            "repository": REPO,
            "repository_id": REPO_ID,
            "repository_owner": OWNER,
            "repository_owner_id": OWNER_ID,
            "repository_visibility": "private",
            "sha": "a" * 40,
            "run_id": "987654321",
            "run_number": "42",
            "run_attempt": "1",
            "actor": "octocat",
            "actor_id": "583231",
            "runner_environment": "github-hosted",
            **_preset_claims(preset, OWNER, REPO),
        }
        if "iat" in overrides and "exp" not in overrides and overrides["iat"] is not None:
            claims["exp"] = overrides["iat"] + TOKEN_LIFETIME
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self, preset: str = "push", *, kid: str | None = None, headers: dict[str, Any] | None = None, **overrides: Any
    ) -> str:
        """A signed, GitHub-shaped ID token. ``kid`` picks the signing key (default: current)."""
        kid = kid or self.current_kid
        return jwt.encode(
            self.claims(preset, **overrides),
            self._keys[kid].private,
            algorithm="RS256",
            headers={"kid": kid, "typ": "JWT", **(headers or {})},
        )

    def actions_env(self) -> dict[str, str]:
        """``ACTIONS_ID_TOKEN_REQUEST_*`` pointing here (the URL already has a query, as GitHub's does)."""
        return {
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{self.url}/actions-token?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": self.request_token,
        }

    # -- HTTP ----------------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        with self._lock:
            self.requests[parts.path] += 1
        if parts.path == "/.well-known/openid-configuration":
            self._send(
                request,
                200,
                {
                    "issuer": self.advertised_issuer or self.url,
                    "jwks_uri": f"{self.url}/.well-known/jwks",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public", "pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "claims_supported": [
                        "sub",
                        "aud",
                        "exp",
                        "iat",
                        "iss",
                        "jti",
                        "nbf",
                        "ref",
                        "repository",
                        "repository_id",
                        "repository_owner",
                        "repository_owner_id",
                        "job_workflow_ref",
                        "event_name",
                        "runner_environment",
                    ],
                },
            )
        elif parts.path == "/.well-known/jwks":
            self._send(request, 200, self.jwks())
        elif parts.path == "/actions-token":
            with self._lock:
                unavailable, self.actions_unavailable = (
                    self.actions_unavailable > 0,
                    max(0, self.actions_unavailable - 1),
                )
            if unavailable:
                self._send(request, 503, {"message": "service unavailable"})
                return
            auth = request.headers.get("Authorization", "")
            scheme, _, presented = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(presented, self.request_token):
                self._send(request, 401, {"message": "bad or missing request token"})
                return
            audience = parse_qs(parts.query).get("audience", [f"https://github.com/{OWNER}"])[-1]
            token = self.mint(self.actions_preset, **{"aud": audience, **self.actions_claims})
            self._send(request, 200, {"count": 1, "value": token})
        else:
            self._send(request, 404, {"message": "not found"})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


@pytest.fixture(name="oidc_issuer")
def oidc_issuer_fixture() -> Iterator[LoopbackOidcIssuer]:
    """A running loopback issuer, stopped after the test."""
    issuer = LoopbackOidcIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()
