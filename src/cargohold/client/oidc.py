"""The OIDC exchange: a CI job's OIDC ID token traded for a short-lived Cargohold token. One implementation,
used by the CLI (a command inside GitHub Actions without a token, :func:`cargohold.client.settings.resolve`) and
by the GitHub Actions (:mod:`cargohold.actions.oidc`), which only add masking and their own wording.

The steps:

1. **Discovery** (unless the audience is given): ``GET <registry>/api/v1/oidc`` says which audience to request.
2. **An ID token** for that audience, from whoever mints them: :func:`request_github_id_token` asks the GitHub
   Actions runner (``ACTIONS_ID_TOKEN_REQUEST_URL`` with ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``).
3. **The exchange**: ``POST <registry>/auth/oidc/github-actions``. The registry accepts each ID token once, so
   every try of the exchange (the registry restarting, say) sends a freshly minted one.

Every request goes through the caller's retry policy (:mod:`cargohold.client.retry`): outages are waited out
for the budget, anything else fails at once. The exchange is always sent to the registry the caller named,
never to the URL a discovery document suggests, so a confused or compromised discovery answer cannot redirect
the ID token elsewhere.

Failures are :class:`OidcError` (a :class:`~cargohold.client.errors.CargoholdError`): ``step`` says where it
happened, ``reason`` what the other side said; the subclasses are the cases a front end words itself (no ID
token offered, GitHub refusing one, a registry without OIDC, a registry refusing the token).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from cargohold.client.control import EXCHANGE_PATH, ControlClient, ControlError
from cargohold.client.errors import RETRYABLE_STATUSES, CargoholdError, RegistryError
from cargohold.client.retry import RetryPolicy
from cargohold.schemas import OidcExchange

REQUEST_URL_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN_ENV = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 (a variable name)
DISCOVERY_PATH = "/api/v1/oidc"
ASKING_GITHUB = "requesting the job's OIDC token from GitHub"

IdTokenMinter = Callable[[str], str]
"""Returns a fresh ID token for the audience it is given."""


class OidcError(CargoholdError):
    """The exchange failed. ``step``: ``discovery``, ``id-token`` or ``exchange``; ``url``: what was asked;
    ``status``: the HTTP status, if there was an answer; ``reason``: what went wrong, in the other side's words.

    ``answered``: the other side answered and said no (as opposed to being unreachable or unavailable for
    longer than the retry budget), so trying again later will not help.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str,
        url: str,
        reason: str,
        status: int | None = None,
        answered: bool = False,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.url = url
        self.reason = reason
        self.status = status
        self.answered = answered


class NoIdToken(OidcError):
    """The job was offered no ID token: ``ACTIONS_ID_TOKEN_REQUEST_*`` are not set (no ``id-token: write``
    permission, or a pull request from a fork)."""


class IdTokenRefused(OidcError):
    """GitHub answered the ID token request without a token."""


class OidcUnsupported(OidcError):
    """The registry has no OIDC discovery route (not Cargohold, or too old)."""


class OidcRefused(OidcError):
    """The registry refused the ID token (it did not verify, or no trust relationship matched).

    ``id_token`` is the token it refused, for explaining which claims to compare: never log or print it whole.
    """

    def __init__(self, message: str, *, id_token: str | None, **details: Any) -> None:
        super().__init__(message, **details)
        self.id_token = id_token


def audience_url(request_url: str, audience: str) -> str:
    """The runner's token URL with ``audience`` set, whether or not it already carries a query string.

    Any ``audience`` already in the URL is replaced, so the token is always minted for the registry.
    """
    parts = urlsplit(request_url)
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "audience"]
    query.append(("audience", audience))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def request_github_id_token(audience: str, env: Mapping[str, str], *, http: httpx.Client, retry: RetryPolicy) -> str:
    """A fresh GitHub Actions ID token for ``audience``, from the runner's token service."""
    url = env.get(REQUEST_URL_ENV, "")
    request_token = env.get(REQUEST_TOKEN_ENV, "")
    if not url or not request_token:
        raise NoIdToken(
            "GitHub offered this job no OIDC token: add `permissions: id-token: write` to the job",
            step="id-token",
            url=url,
            reason=f"{REQUEST_URL_ENV} and {REQUEST_TOKEN_ENV} are not set",
        )

    def fetch() -> httpx.Response:
        response = http.get(
            audience_url(url, audience),
            headers={"Authorization": f"bearer {request_token}", "Accept": "application/json"},
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise RegistryError.from_response(ASKING_GITHUB, response)
        return response

    try:
        response = retry.call(fetch, host=urlsplit(url).netloc)
    except (RegistryError, httpx.TransportError) as exc:
        status = exc.status if isinstance(exc, RegistryError) else None
        reason = str(exc) if isinstance(exc, RegistryError) else f"could not connect ({type(exc).__name__}: {exc})"
        raise OidcError(
            f"{ASKING_GITHUB} failed: {reason}", step="id-token", url=url, reason=reason, status=status
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    value = body.get("value") if isinstance(body, dict) else None
    if response.status_code == 200 and isinstance(value, str) and value:
        return value
    detail = body.get("message") or body.get("error") if isinstance(body, dict) else None
    reason = str(detail or f"HTTP {response.status_code}")
    raise IdTokenRefused(
        f"GitHub refused to issue an OIDC token ({reason})",
        step="id-token",
        url=url,
        reason=reason,
        status=response.status_code,
        answered=True,
    )


def exchange_oidc(
    registry: str,
    mint: IdTokenMinter,
    *,
    retry: RetryPolicy,
    audience: str | None = None,
    user_agent: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> OidcExchange:
    """Trade an ID token from ``mint`` for a Cargohold token at ``registry`` (a base URL); see the module doc.

    ``audience``: skip discovery and request ID tokens for this audience.
    """
    with ControlClient(registry, retry=retry, transport=transport, user_agent=user_agent) as control:
        if audience is None:
            url = control.base_url + DISCOVERY_PATH
            try:
                audience = control.oidc_discovery().audience
            except ControlError as exc:
                details: dict[str, Any] = {"step": "discovery", "url": url, "reason": str(exc), "status": exc.status}
                if exc.status == 404:
                    raise OidcUnsupported(
                        f"{url} does not exist, so this registry does not support OIDC", answered=True, **details
                    ) from None
                raise OidcError(f"OIDC discovery at {url} failed: {exc}", answered=_answered(exc), **details) from None
        wanted = audience
        sent: list[str] = []

        def fresh() -> str:
            token = mint(wanted)
            sent.append(token)
            return token

        url = control.base_url + EXCHANGE_PATH
        try:
            return control.exchange_oidc(fresh)
        except ControlError as exc:
            details = {"step": "exchange", "url": url, "reason": str(exc).rstrip("."), "status": exc.status}
            if _answered(exc) and exc.code != "INVALID_RESPONSE":
                raise OidcRefused(
                    f"the registry refused the OIDC token ({details['reason']})",
                    id_token=sent[-1] if sent else None,
                    answered=True,
                    **details,
                ) from None
            raise OidcError(f"the OIDC exchange at {url} failed: {exc}", answered=_answered(exc), **details) from None


def _answered(exc: ControlError) -> bool:
    """The server answered and said no (an error it would repeat), rather than being out of reach."""
    return exc.code == "INVALID_RESPONSE" or (exc.status is not None and exc.status not in RETRYABLE_STATUSES)


def exchange_github_oidc(
    registry: str,
    env: Mapping[str, str],
    *,
    retry: RetryPolicy,
    audience: str | None = None,
    http: httpx.Client | None = None,
    user_agent: str | None = None,
) -> OidcExchange:
    """:func:`exchange_oidc` with ID tokens from the GitHub Actions runner (``env`` holds its variables)."""
    own = http is None
    client = http or httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=False)
    try:
        return exchange_oidc(
            registry,
            lambda wanted: request_github_id_token(wanted, env, http=client, retry=retry),
            retry=retry,
            audience=audience,
            user_agent=user_agent,
        )
    finally:
        if own:
            client.close()


__all__ = [
    "IdTokenRefused",
    "NoIdToken",
    "OidcError",
    "OidcRefused",
    "OidcUnsupported",
    "audience_url",
    "exchange_github_oidc",
    "exchange_oidc",
    "request_github_id_token",
]
