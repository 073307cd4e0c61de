"""Getting a Cargohold token inside a GitHub Actions job: an explicit token, or an exchanged OIDC ID token.

Order (first hit wins), so an explicit choice always beats the ambient one:

1. the action's ``token`` input (how fork pull requests authenticate: they never get an ID token);
2. ``CARGOHOLD_TOKEN`` in the step's environment;
3. GitHub OIDC: ask the runner for a fresh ID token with the registry's audience (from the ``audience``
   input, else the registry's discovery document ``GET <registry>/api/v1/oidc``), then exchange it at
   ``POST <registry>/auth/oidc/github-actions`` for a short-lived ``cho_`` token scoped by the project's
   trust relationships.

Why mint per exchange: GitHub's ID tokens live five minutes and the registry accepts each ``jti`` once, so
a cached token would fail a retried or later step; for the same reason every retry of the exchange (the
registry restarting, say) mints a fresh ID token. Why exchange instead of sending the JWT with every
request: the exchanged token is what docker-style clients and the registry's token service understand.

Retries follow the step's retry policy (:mod:`cargohold.client.retry`, the ``retry-for`` input): connection
failures, 429 and 5xx answers are retried until the budget is spent, anything else fails at once.

The JWT and the exchanged token are masked the moment we hold them, and are never written to outputs or
``$GITHUB_ENV``. The exchange is always sent to the registry the user named, never to a URL a discovery
document suggests, so a compromised or confused discovery response cannot redirect the ID token elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import jwt

from cargohold import __version__
from cargohold.actions.runtime import ActionError, ActionRuntime, markdown_code, markdown_escape, markdown_table
from cargohold.client.errors import RegistryError
from cargohold.client.retry import RetryPolicy, ServerUnavailable

T = TypeVar("T")

TOKEN_ENV = "CARGOHOLD_TOKEN"  # noqa: S105 (a variable name, not a secret)
REQUEST_URL_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN_ENV = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 (a variable name)
DISCOVERY_PATH = "/api/v1/oidc"
EXCHANGE_PATH = "/auth/oidc/github-actions"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)

MISSING_PERMISSION = (
    "add `permissions: id-token: write` to the job, or this is a pull request from a fork (use a token for forks)"
)
"""The fix for a job without OIDC variables; kept verbatim because the docs and tests quote it."""

CLAIMS_SHOWN = (
    "sub",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "job_workflow_ref",
    "ref",
    "environment",
    "event_name",
    "runner_environment",
)
"""Non-secret claims put in the summary when an exchange is refused, to compare with the trust relationship."""


@dataclass(frozen=True, slots=True)
class RegistryToken:
    """A credential for the registry and where it came from (for the log; never the secret itself)."""

    token: str = field(repr=False)
    source: str
    """``input``, ``env`` or ``oidc``."""
    expires_at: str | None = None
    projects: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OidcDiscovery:
    audience: str
    issuers: tuple[str, ...]
    exchange_url: str | None


def registry_base(registry: str) -> str:
    """The registry's base URL, by the same rules as the CLI (``https`` unless the host is loopback)."""
    from cargohold.client.settings import SettingsError, normalize_registry_url

    try:
        return normalize_registry_url(registry)
    except SettingsError:
        raise ActionError(
            f"the registry {registry!r} is not a Cargohold URL; set 'registry' to e.g. https://cargohold.example.com",
            title="Invalid input",
        ) from None


def audience_url(request_url: str, audience: str) -> str:
    """The runner's token URL with ``audience`` set, whether or not it already carries a query string.

    Any ``audience`` already in the URL is replaced, so the token is always minted for the registry.
    """
    parts = urlsplit(request_url)
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "audience"]
    query.append(("audience", audience))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _checked(response: httpx.Response, what: str) -> httpx.Response:
    """The response, or a :class:`RegistryError` for answers worth retrying (429, 5xx)."""
    if response.status_code == 429 or response.status_code >= 500:
        raise RegistryError.from_response(what, response)
    return response


def _retried(fn: Callable[[], T], *, what: str, url: str, retry: RetryPolicy) -> T:
    """``fn`` under the retry policy; the final failure becomes an ActionError with the fix."""
    try:
        return retry.call(fn, host=urlsplit(url).netloc)
    except ServerUnavailable as exc:
        raise ActionError(f"{what} failed: {exc}", title="Authentication failed") from None
    except RegistryError as exc:
        raise ActionError(
            f"{what} failed with HTTP {exc.status}; check that the service is healthy and re-run the job",
            title="Authentication failed",
        ) from None
    except httpx.TransportError as exc:
        raise ActionError(
            f"{what} could not connect ({type(exc).__name__}: {exc}); check the URL and that the runner can reach it",
            title="Authentication failed",
        ) from None


def _send(
    client: httpx.Client, method: str, url: str, *, what: str, retry: RetryPolicy, **kwargs: Any
) -> httpx.Response:
    """One request with retries on connection errors, 429 and 5xx; the final failure becomes an ActionError."""
    return _retried(lambda: _checked(client.request(method, url, **kwargs), what), what=what, url=url, retry=retry)


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ActionError(
            f"{what} answered HTTP {response.status_code} with something other than a JSON object; "
            "check that the URL points at a Cargohold registry",
            title="Authentication failed",
        )
    return body


def discover(client: httpx.Client, registry: str, *, retry: RetryPolicy) -> OidcDiscovery:
    """The registry's OIDC settings: which audience to request and which issuers it trusts."""
    url = registry_base(registry) + DISCOVERY_PATH
    response = _send(client, "GET", url, what=f"OIDC discovery at {url}", retry=retry)
    if response.status_code == 404:
        raise ActionError(
            f"{url} does not exist, so this registry does not support OIDC; pass a 'token' input instead or "
            "upgrade the registry",
            title="OIDC not supported",
        )
    body = _json_object(response, f"OIDC discovery at {url}")
    audience = body.get("audience")
    if response.status_code != 200 or not isinstance(audience, str) or not audience:
        raise ActionError(
            f"OIDC discovery at {url} returned HTTP {response.status_code} without an audience; set the "
            "'audience' input to the registry's OIDC audience",
            title="OIDC discovery failed",
        )
    issuers = body.get("issuers") or []
    exchange_url = body.get("exchange_url")
    return OidcDiscovery(
        audience=audience,
        issuers=tuple(str(i) for i in issuers) if isinstance(issuers, list) else (),
        exchange_url=exchange_url if isinstance(exchange_url, str) else None,
    )


def _fork_hint(environ: Mapping[str, str]) -> str | None:
    """Name the fork when the event payload shows one, so the message is specific rather than a guess."""
    if not environ.get("GITHUB_EVENT_NAME", "").startswith("pull_request"):
        return None
    event_path = environ.get("GITHUB_EVENT_PATH")
    if not event_path:
        return None
    try:
        event = json.loads(Path(event_path).read_text(encoding="utf-8"))
        head = event["pull_request"]["head"]["repo"]["full_name"]
        base = event["pull_request"]["base"]["repo"]["full_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return head if isinstance(head, str) and head != base else None


def request_id_token(rt: ActionRuntime, client: httpx.Client, audience: str, *, retry: RetryPolicy) -> str:
    """A fresh GitHub ID token for ``audience``, masked before it is returned."""
    url = rt.environ.get(REQUEST_URL_ENV, "")
    request_token = rt.environ.get(REQUEST_TOKEN_ENV, "")
    if not url or not request_token:
        fork = _fork_hint(rt.environ)
        detail = f" (this run is for a pull request from the fork {fork})" if fork else ""
        raise ActionError(
            f"GitHub did not offer this job an OIDC token{detail}: {MISSING_PERMISSION}",
            title="No OIDC token available",
        )
    rt.add_mask(request_token)
    response = _send(
        client,
        "GET",
        audience_url(url, audience),
        what="requesting the job's OIDC token from GitHub",
        retry=retry,
        headers={"Authorization": f"bearer {request_token}", "Accept": "application/json"},
    )
    body = _json_object(response, "GitHub's OIDC token service")
    value = body.get("value")
    if response.status_code != 200 or not isinstance(value, str) or not value:
        message = body.get("message") or body.get("error") or f"HTTP {response.status_code}"
        raise ActionError(
            f"GitHub refused to issue an OIDC token ({message}); check the job's `permissions: id-token: write` "
            "and re-run the job",
            title="OIDC token request failed",
        )
    rt.add_mask(value)
    return value


def unverified_claims(id_token: str) -> dict[str, Any]:
    """The token's claims without verification: only for explaining a refusal, never for a decision."""
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def exchange(
    rt: ActionRuntime,
    client: httpx.Client,
    registry: str,
    id_token: str | Callable[[], str],
    *,
    retry: RetryPolicy,
) -> RegistryToken:
    """Trade an ID token for a Cargohold token; a refusal says which claims to compare with the trust setup.

    ``id_token`` may be a function minting ID tokens: each try then sends a fresh one (the registry accepts
    an ID token once, and a try whose answer was lost may have spent it).
    """
    url = registry_base(registry) + EXCHANGE_PATH
    what = f"the OIDC exchange at {url}"
    sent: list[str] = []

    def attempt() -> httpx.Response:
        token = id_token() if callable(id_token) else id_token
        sent.append(token)
        return _checked(client.post(url, json={"token": token}), what)

    response = _retried(attempt, what=what, url=url, retry=retry)
    id_token = sent[-1]
    body = _json_object(response, f"the OIDC exchange at {url}")
    token = body.get("token")
    if response.status_code == 200 and body.get("ok") is True and isinstance(token, str) and token:
        rt.add_mask(token)
        projects = body.get("projects") or []
        return RegistryToken(
            token=token,
            source="oidc",
            expires_at=body.get("expires_at") if isinstance(body.get("expires_at"), str) else None,
            projects=tuple(str(p) for p in projects) if isinstance(projects, list) else (),
        )
    reason = str(body.get("error") or f"HTTP {response.status_code}").rstrip(".")
    claims = unverified_claims(id_token)
    rows = [(markdown_code(key), markdown_code(str(claims[key]))) for key in CLAIMS_SHOWN if key in claims]
    if rows:
        rt.append_summary(
            "### Cargohold refused this job's OIDC token\n\n"
            f"{markdown_escape(reason)}\n\n"
            "Claims of the token (compare them with the project's trust relationship):\n\n"
            + markdown_table(["claim", "value"], rows)
        )
    raise ActionError(
        f"the registry refused the OIDC token ({reason}); add or fix a trust relationship for this repository "
        "on the project (see docs/github-actions.md, 'Trust relationships'), or pass a 'token' input",
        title="OIDC exchange refused",
    )


def resolve_token(
    rt: ActionRuntime,
    registry: str,
    *,
    client: httpx.Client | None = None,
    retry: RetryPolicy | None = None,
) -> RegistryToken:
    """The registry token for this step: ``token`` input, else ``CARGOHOLD_TOKEN``, else OIDC (see module doc)."""
    explicit = rt.get_input("token")
    if explicit:
        rt.add_mask(explicit)
        return RegistryToken(token=explicit, source="input")
    ambient = rt.environ.get(TOKEN_ENV, "").strip()
    if ambient:
        rt.add_mask(ambient)
        return RegistryToken(token=ambient, source="env")
    policy = retry or RetryPolicy()
    own_client = client is None
    http = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False, headers={"User-Agent": _user_agent()})
    try:
        audience = rt.get_input("audience") or discover(http, registry, retry=policy).audience
        return exchange(rt, http, registry, lambda: request_id_token(rt, http, audience, retry=policy), retry=policy)
    finally:
        if own_client:
            http.close()


def _user_agent() -> str:
    return f"cargohold-actions/{__version__}"
