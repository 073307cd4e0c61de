"""Getting a Cargohold token inside a GitHub Actions job: an explicit token, or an exchanged OIDC ID token.

Order (first hit wins), so an explicit choice always beats the ambient one:

1. the action's ``token`` input (how fork pull requests authenticate: they never get an ID token);
2. ``CARGOHOLD_TOKEN`` in the step's environment;
3. GitHub OIDC, through the one exchange the CLI uses too (:mod:`cargohold.client.oidc`): the registry's
   audience (the ``audience`` input, else its discovery document), a fresh ID token from the runner for
   every try, the exchange at the registry the user named.

This module adds what is particular to an action: the JWT and the exchanged token are masked the moment we
hold them (and never written to outputs or ``$GITHUB_ENV``); failures become annotations whose fix names the
action's inputs; a refused token puts its non-secret claims in the job summary, to compare with the trust
relationship. Retries follow the step's retry policy (the ``retry-for`` input).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from cargohold import __version__
from cargohold.actions.runtime import ActionError, ActionRuntime, markdown_code, markdown_escape, markdown_table
from cargohold.client import oidc
from cargohold.client.oidc import audience_url
from cargohold.client.retry import RetryPolicy
from cargohold.isotime import iso

TOKEN_ENV = "CARGOHOLD_TOKEN"  # noqa: S105 (a variable name, not a secret)
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
    request_token = rt.environ.get(oidc.REQUEST_TOKEN_ENV, "")
    if request_token:
        rt.add_mask(request_token)
    try:
        value = oidc.request_github_id_token(audience, rt.environ, http=client, retry=retry)
    except oidc.NoIdToken:
        fork = _fork_hint(rt.environ)
        detail = f" (this run is for a pull request from the fork {fork})" if fork else ""
        raise ActionError(
            f"GitHub did not offer this job an OIDC token{detail}: {MISSING_PERMISSION}",
            title="No OIDC token available",
        ) from None
    except oidc.IdTokenRefused as exc:
        raise ActionError(
            f"GitHub refused to issue an OIDC token ({exc.reason}); check the job's `permissions: id-token: write` "
            "and re-run the job",
            title="OIDC token request failed",
        ) from None
    except oidc.OidcError as exc:
        raise ActionError(str(exc), title="Authentication failed") from None
    rt.add_mask(value)
    return value


def unverified_claims(id_token: str) -> dict[str, Any]:
    """The token's claims without verification: only for explaining a refusal, never for a decision."""
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _explain_refusal(rt: ActionRuntime, refused: oidc.OidcRefused) -> ActionError:
    """The summary gets the refused token's non-secret claims; the error says where to fix the trust."""
    reason = refused.reason.rstrip(".")
    claims = unverified_claims(refused.id_token) if refused.id_token else {}
    rows = [(markdown_code(key), markdown_code(str(claims[key]))) for key in CLAIMS_SHOWN if key in claims]
    if rows:
        rt.append_summary(
            "### Cargohold refused this job's OIDC token\n\n"
            f"{markdown_escape(reason)}\n\n"
            "Claims of the token (compare them with the project's trust relationship):\n\n"
            + markdown_table(["claim", "value"], rows)
        )
    return ActionError(
        f"the registry refused the OIDC token ({reason}); add or fix a trust relationship for this repository "
        "on the project (see docs/github-actions.md, 'Trust relationships'), or pass a 'token' input",
        title="OIDC exchange refused",
    )


def exchange(
    rt: ActionRuntime,
    client: httpx.Client,
    registry: str,
    *,
    retry: RetryPolicy,
    audience: str | None = None,
) -> RegistryToken:
    """The OIDC exchange (:func:`cargohold.client.oidc.exchange_oidc`) with this job's ID tokens, masked; its
    failures as annotations naming the action's inputs."""
    base = registry_base(registry)
    try:
        exchanged = oidc.exchange_oidc(
            base,
            lambda wanted: request_id_token(rt, client, wanted, retry=retry),
            retry=retry,
            audience=audience,
            user_agent=_user_agent(),
        )
    except oidc.OidcRefused as exc:
        raise _explain_refusal(rt, exc) from None
    except oidc.OidcUnsupported as exc:
        raise ActionError(
            f"{exc.url} does not exist, so this registry does not support OIDC; pass a 'token' input instead or "
            "upgrade the registry",
            title="OIDC not supported",
        ) from None
    except oidc.OidcError as exc:
        if exc.step == "discovery" and exc.answered:
            raise ActionError(
                f"{exc}; set the 'audience' input to the registry's OIDC audience", title="OIDC discovery failed"
            ) from None
        raise ActionError(str(exc), title="Authentication failed") from None
    rt.add_mask(exchanged.token)
    return RegistryToken(
        token=exchanged.token, source="oidc", expires_at=iso(exchanged.expires_at), projects=tuple(exchanged.projects)
    )


def resolve_token(
    rt: ActionRuntime,
    registry: str,
    *,
    client: httpx.Client | None = None,
    retry: RetryPolicy | None = None,
) -> RegistryToken:
    """The registry token for this step: ``token`` input, else ``CARGOHOLD_TOKEN``, else OIDC (see module doc).

    ``client`` is what asks the runner for ID tokens (the registry is reached through the control client).
    """
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
        return exchange(rt, http, registry, retry=policy, audience=rt.get_input("audience") or None)
    finally:
        if own_client:
            http.close()


def _user_agent() -> str:
    return f"cargohold-actions/{__version__}"


__all__ = [
    "MISSING_PERMISSION",
    "RegistryToken",
    "audience_url",
    "exchange",
    "registry_base",
    "request_id_token",
    "resolve_token",
    "unverified_claims",
]
