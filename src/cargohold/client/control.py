"""A small client for Cargohold's control API (``/api/v1``) and its OIDC exchange.

Shares the registry client's retry policy (:mod:`cargohold.client.retry`: an outage is waited out for the
retry budget) so every call the CLI and the GitHub Actions make rides out a server restart the same way.
Every method returns the typed answer (:mod:`cargohold.schemas`); an answer that does not have its schema's
shape is a :class:`ControlError` saying so, never a half-read dict. Errors carry the server's one-sentence
message.

Which calls may be repeated after a connection broke off mid-request: reads, and writes whose repetition
changes nothing (marking a build saved or failed, pinning, save-tags, ``PUT``/``DELETE``). Creating a build
carries an ``Idempotency-Key``, so the server answers a repeated request with the build it already created.
Every other ``POST``/``PATCH`` (a token, a project, a trust relationship, extending an expiry) is repeated
only when the server certainly did not process it (see ``idempotent`` in :mod:`cargohold.client.retry`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from cargohold.client.errors import (
    INSUFFICIENT_STORAGE,
    RETRYABLE_STATUSES,
    STORAGE_FULL,
    CargoholdError,
    RegistryError,
    storage_full_sentence,
)
from cargohold.client.retry import RetryPolicy
from cargohold.client.tls import tls_failure, verify_option
from cargohold.schemas import (
    Build,
    BuildCreated,
    BuildDeletion,
    BuildPage,
    ExpiryReport,
    GcReport,
    History,
    HistoryEvent,
    OidcDiscovery,
    OidcExchange,
    Project,
    ProjectList,
    PullInfo,
    Schema,
    SchemaError,
    ServerStorage,
    Tag,
    TagPage,
    Token,
    TokenCreated,
    TokenList,
    TokenRevoked,
    TrustList,
    TrustRelationship,
    TrustRemoved,
    Usage,
    Whoami,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
EXCHANGE_PATH = "/auth/oidc/github-actions"
S = TypeVar("S", bound=Schema)


class ControlError(CargoholdError):
    """A control-API call failed; ``str()`` is the server's explanation (or a description of the failure)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _message(response: httpx.Response) -> tuple[str, str | None]:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase, None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message", "")), str(errors[0].get("code", "")) or None
        if "error" in body:
            return str(body["error"]), None
    return response.text.strip()[:300], None


class ControlClient:
    """``base_url`` is the server root (``https://cargohold.example.com``); ``token`` any Cargohold token."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: bool = True,
        user_agent: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        # A 429 here usually means "too many failed logins": wait briefly, not the minute a registry may ask.
        self.retry = retry or RetryPolicy(max_retry_after=10.0)
        self.host = httpx.URL(self.base_url).netloc.decode()
        headers = {"User-Agent": user_agent or "cargohold-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport, verify=verify_option(verify)
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        params: Mapping[str, Any] | None = None,
        authenticated: bool = True,
        idempotent: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call with retries; returns the decoded JSON body or raises :class:`ControlError`.

        ``idempotent``: may the request be repeated after a connection broke off mid-request? Default: yes
        for every method but ``POST`` and ``PATCH``. ``json`` may be a function: each try sends what it
        returns (a fresh single-use credential, say).
        """
        sent_headers = dict(headers or {})
        if not authenticated:
            sent_headers["Authorization"] = ""
        repeatable = method not in ("POST", "PATCH") if idempotent is None else idempotent

        def send() -> httpx.Response:
            body = json() if callable(json) else json
            response = self._http.request(method, path, json=body, params=params, headers=sent_headers or None)
            if response.status_code in RETRYABLE_STATUSES:
                raise RegistryError.from_response(f"{method} {path}", response)
            return response

        try:
            response = self.retry.call(send, host=self.host, idempotent=repeatable)
        except RegistryError as exc:
            raise ControlError(str(exc), status=exc.status) from None
        except httpx.TransportError as exc:
            raise ControlError(f"cannot reach Cargohold at {self.base_url}: {tls_failure(exc) or exc}") from None
        if response.status_code >= 400:
            message, code = _message(response)
            if response.status_code == INSUFFICIENT_STORAGE and message.startswith(STORAGE_FULL):
                message = storage_full_sentence(message)
            raise ControlError(
                message or f"{method} {path} failed with {response.status_code}", status=response.status_code, code=code
            )
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ControlError(
                f"{self.base_url} answered {method} {path} with something that is not JSON; check that it is a "
                "Cargohold server",
                status=response.status_code,
                code="INVALID_RESPONSE",
            ) from None

    def _answer(self, schema: type[S], method: str, path: str, **options: Any) -> S:
        """One call whose answer is read into ``schema`` (see :meth:`request` for ``options``)."""
        return self._read(schema, self.request(method, path, **options), method, path)

    def _read(self, schema: type[S], answer: Any, method: str, path: str) -> S:
        try:
            return schema.from_json(answer)
        except SchemaError as exc:
            raise ControlError(
                f"{self.base_url} answered {method} {path} with something this version of cargohold does not "
                f"understand ({exc}); check that it is a Cargohold server of a compatible version",
                code="INVALID_RESPONSE",
            ) from None

    # --- discovery and auth -------------------------------------------------------------------------------

    def oidc_discovery(self) -> OidcDiscovery:
        return self._answer(OidcDiscovery, "GET", "/api/v1/oidc", authenticated=False)

    def exchange_oidc(self, id_token: str | Callable[[], str]) -> OidcExchange:
        """Trade a CI job's OIDC ID token for a short-lived Cargohold token.

        The server accepts each ID token once. Given a function that mints ID tokens, every try sends a fresh
        one, so the exchange is repeated after any failure; given one token, only when it was not processed.
        """
        if callable(id_token):
            mint = id_token
            return self._answer(
                OidcExchange,
                "POST",
                EXCHANGE_PATH,
                json=lambda: {"token": mint()},
                authenticated=False,
                idempotent=True,
            )
        return self._answer(OidcExchange, "POST", EXCHANGE_PATH, json={"token": id_token}, authenticated=False)

    def whoami(self) -> Whoami:
        return self._answer(Whoami, "GET", "/api/v1/whoami")

    # --- projects -----------------------------------------------------------------------------------------

    def list_projects(self) -> list[Project]:
        return self._answer(ProjectList, "GET", "/api/v1/projects").projects

    def create_project(self, name: str, **settings: Any) -> Project:
        """``settings``: ``retention_seconds`` (``None``: no time limit), ``max_builds``."""
        return self._answer(Project, "POST", "/api/v1/projects", json={"name": name, **settings})

    def get_project(self, project_id: str) -> Project:
        return self._answer(Project, "GET", f"/api/v1/projects/{project_id}")

    def update_project(self, project_id: str, **settings: Any) -> Project:
        return self._answer(Project, "PATCH", f"/api/v1/projects/{project_id}", json=settings)

    # --- builds -------------------------------------------------------------------------------------------

    def create_build(self, project_id: str, provenance: Mapping[str, str] | None = None) -> BuildCreated:
        """A new build; a retried request (the first answer was lost) gets the same build, not a second one."""
        body = {"provenance": dict(provenance)} if provenance else {}
        return self._answer(
            BuildCreated,
            "POST",
            f"/api/v1/projects/{project_id}/builds",
            json=body,
            idempotent=True,
            headers={IDEMPOTENCY_HEADER: uuid.uuid4().hex},
        )

    def save_build(
        self, build_id: str, *, save_tags: list[str] | None = None, targets: list[str] | None = None
    ) -> Build:
        body = {"save_tags": save_tags or [], "targets": targets or []}
        return self._answer(Build, "POST", f"/api/v1/builds/{build_id}/save", json=body, idempotent=True)

    def fail_build(self, build_id: str, reason: str) -> Build:
        return self._answer(Build, "POST", f"/api/v1/builds/{build_id}/fail", json={"reason": reason}, idempotent=True)

    def get_build(self, build_id: str) -> Build:
        return self._answer(Build, "GET", f"/api/v1/builds/{build_id}")

    def list_builds(
        self, project_id: str, *, limit: int = 50, before: str | None = None, tag: str | None = None
    ) -> BuildPage:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        if tag:
            params["tag"] = tag
        return self._answer(BuildPage, "GET", f"/api/v1/projects/{project_id}/builds", params=params)

    def add_save_tags(self, build_id: str, tags: list[str]) -> Build:
        return self._answer(Build, "POST", f"/api/v1/builds/{build_id}/tags", json={"tags": tags}, idempotent=True)

    def remove_save_tag(self, build_id: str, tag: str) -> Build:
        return self._answer(Build, "DELETE", f"/api/v1/builds/{build_id}/tags/{tag}")

    def pull_info(self, ref: str) -> PullInfo:
        """Where ``<build-id>`` or ``<project>:<tag>`` lives, with a short-lived pull token."""
        return self._answer(PullInfo, "GET", "/api/v1/pull-info", params={"ref": ref})

    # --- tokens and trust ---------------------------------------------------------------------------------

    def create_token(self, kind: str, name: str, **fields: Any) -> TokenCreated:
        """``fields``: ``project_id``, ``build_id``, ``expires_in`` (seconds), ``permissions`` (``None``: omitted)."""
        body = {"kind": kind, "name": name, **{k: v for k, v in fields.items() if v is not None}}
        return self._answer(TokenCreated, "POST", "/api/v1/tokens", json=body)

    def list_tokens(self, project_id: str | None = None, *, include_inactive: bool = False) -> list[Token]:
        params: dict[str, Any] = {"all": "1"} if include_inactive else {}
        if project_id:
            params["project"] = project_id
        return self._answer(TokenList, "GET", "/api/v1/tokens", params=params).tokens

    def revoke_token(self, token_id: str, *, force: bool = False) -> TokenRevoked:
        """``force``: revoke even the last admin token (the server refuses with 409 otherwise)."""
        params = {"force": "1"} if force else None
        return self._answer(TokenRevoked, "DELETE", f"/api/v1/tokens/{token_id}", params=params)

    def add_trust(self, project_id: str, **fields: Any) -> TrustRelationship:
        body = {k: v for k, v in fields.items() if v is not None}
        return self._answer(TrustRelationship, "POST", f"/api/v1/projects/{project_id}/trust", json=body)

    def list_trust(self, project_id: str) -> list[TrustRelationship]:
        return self._answer(TrustList, "GET", f"/api/v1/projects/{project_id}/trust").trust_relationships

    def remove_trust(self, project_id: str, trust_id: str) -> TrustRemoved:
        return self._answer(TrustRemoved, "DELETE", f"/api/v1/projects/{project_id}/trust/{trust_id}")

    # --- lifecycle: pin/unpin/extend, deletion, history, usage, expiry sweeps, garbage collection -------------

    def pin_build(self, build_id: str) -> Build:
        """Keep a saved build until unpinned (neither expiry nor the build cap removes it)."""
        return self._changed_build(build_id, "pin", None, idempotent=True)

    def unpin_build(self, build_id: str) -> Build:
        return self._changed_build(build_id, "unpin", None, idempotent=True)

    def extend_build(self, build_id: str, *, by_seconds: float | None = None, until: str | None = None) -> Build:
        """Move a saved build's expiry: ``by_seconds`` past its current expiry, or to ``until`` (ISO 8601)."""
        body: dict[str, Any] = {}
        if by_seconds is not None:
            body["by"] = by_seconds
        if until is not None:
            body["until"] = until
        return self._changed_build(build_id, "extend", body, idempotent=False)

    def _changed_build(self, build_id: str, action: str, body: dict[str, Any] | None, *, idempotent: bool) -> Build:
        """The build after a pin, unpin or extend (the server answers the whole build)."""
        path = f"/api/v1/builds/{build_id}/{action}"
        return self._read(Build, self.request("POST", path, json=body, idempotent=idempotent), "POST", path)

    def delete_build(self, build_id: str, *, dry_run: bool = False) -> BuildDeletion:
        """Evict a build now; ``dry_run`` only says what would go."""
        params = {"dry_run": "1"} if dry_run else None
        return self._answer(BuildDeletion, "DELETE", f"/api/v1/builds/{build_id}", params=params)

    # --- tags pushed outside builds (tag retention) ---------------------------------------------------------

    def list_tags(
        self, project_id: str, *, repository: str | None = None, limit: int = 50, after: str | None = None
    ) -> TagPage:
        """A page of the project's non-build tags; ``next`` (``<repository>:<tag>``) is the next page's ``after``."""
        params: dict[str, Any] = {"limit": limit}
        if repository:
            params["repository"] = repository
        if after:
            params["after"] = after
        return self._answer(TagPage, "GET", f"/api/v1/projects/{project_id}/tags", params=params)

    def pin_tag(self, repository: str, tag: str) -> Tag:
        """Keep a tag pushed outside builds until unpinned (``repository`` is ``<project>[/…]``)."""
        return self._tag_call(repository, tag, "pin", {})

    def unpin_tag(self, repository: str, tag: str) -> Tag:
        return self._tag_call(repository, tag, "unpin", {})

    def extend_tag(
        self, repository: str, tag: str, *, by_seconds: float | None = None, until: str | None = None
    ) -> Tag:
        """Move a tag's expiry: ``by_seconds`` past its current expiry, or to ``until`` (ISO 8601)."""
        body: dict[str, Any] = {}
        if by_seconds is not None:
            body["by"] = by_seconds
        if until is not None:
            body["until"] = until
        return self._tag_call(repository, tag, "extend", body)

    def _tag_call(self, repository: str, tag: str, action: str, body: dict[str, Any]) -> Tag:
        project_id = repository.split("/", 1)[0]
        return self._answer(
            Tag,
            "POST",
            f"/api/v1/projects/{project_id}/tags/{action}",
            json={"repository": repository, "tag": tag, **body},
        )

    def project_history(self, project_id: str, *, limit: int = 100, build_id: str | None = None) -> list[HistoryEvent]:
        """Lifecycle events of a project, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if build_id:
            params["build"] = build_id
        return self._answer(History, "GET", f"/api/v1/projects/{project_id}/history", params=params).events

    def project_usage(self, project_id: str, *, month: str | None = None) -> Usage:
        """Storage used in a month (``YYYY-MM``, default the current one): GB-months and the cost estimate."""
        params = {"month": month} if month else None
        return self._answer(Usage, "GET", f"/api/v1/projects/{project_id}/usage", params=params)

    def server_storage(self) -> ServerStorage:
        """The server's free space per filesystem, its minimum and whether uploads are refused (admin)."""
        return self._answer(ServerStorage, "GET", "/api/v1/storage")

    def run_expiry(self, *, project_id: str | None = None, dry_run: bool = False) -> ExpiryReport:
        """Evict expired and stale builds now (one project, or every project with an admin token)."""
        body: dict[str, Any] = {"dry_run": dry_run}
        if project_id:
            body["project"] = project_id
        return self._answer(ExpiryReport, "POST", "/api/v1/expire", json=body)

    def run_gc(self, *, dry_run: bool = False) -> GcReport:
        """One garbage-collection pass (admin); the answer is the pass's report."""
        return self._answer(GcReport, "POST", "/api/v1/gc", json={"dry_run": dry_run})
