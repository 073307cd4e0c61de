"""A small client for Cargohold's control API (``/api/v1``) and its OIDC exchange.

Shares the registry client's retry policy (:mod:`cargohold.client.retry`: an outage is waited out for the
retry budget) so every call the CLI and the GitHub Actions make rides out a server restart the same way.
Errors carry the server's one-sentence message.

Which calls may be repeated after a connection broke off mid-request: reads, and writes whose repetition
changes nothing (marking a build saved or failed, pinning, save-tags, ``PUT``/``DELETE``). Creating a build
carries an ``Idempotency-Key``, so the server answers a repeated request with the build it already created.
Every other ``POST``/``PATCH`` (a token, a project, a trust relationship, extending an expiry) is repeated
only when the server certainly did not process it (see ``idempotent`` in :mod:`cargohold.client.retry`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from cargohold.client.errors import (
    INSUFFICIENT_STORAGE,
    RETRYABLE_STATUSES,
    STORAGE_FULL,
    RegistryError,
    storage_full_sentence,
)
from cargohold.client.retry import RetryPolicy
from cargohold.client.tls import tls_failure, verify_option

IDEMPOTENCY_HEADER = "Idempotency-Key"


class ControlError(Exception):
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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        # A 429 here usually means "too many failed logins": wait briefly, not the minute a registry may ask.
        self.retry = retry or RetryPolicy(max_retry_after=10.0)
        self.host = httpx.URL(self.base_url).netloc.decode()
        headers = {"User-Agent": "cargohold-cli"}
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
        return response.json() if response.content else {}

    # --- discovery and auth -------------------------------------------------------------------------------

    def oidc_discovery(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/oidc", authenticated=False)  # type: ignore[no-any-return]

    def exchange_oidc(self, id_token: str | Callable[[], str]) -> dict[str, Any]:
        """Trade a CI job's OIDC ID token for a short-lived Cargohold token (``{"token", "expires_at", ...}``).

        The server accepts each ID token once. Given a function that mints ID tokens, every try sends a fresh
        one, so the exchange is repeated after any failure; given one token, only when it was not processed.
        """
        if callable(id_token):
            mint = id_token
            return self.request(  # type: ignore[no-any-return]
                "POST",
                "/auth/oidc/github-actions",
                json=lambda: {"token": mint()},
                authenticated=False,
                idempotent=True,
            )
        return self.request(  # type: ignore[no-any-return]
            "POST", "/auth/oidc/github-actions", json={"token": id_token}, authenticated=False
        )

    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/whoami")  # type: ignore[no-any-return]

    # --- projects -----------------------------------------------------------------------------------------

    def list_projects(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/projects")["projects"]  # type: ignore[no-any-return]

    def create_project(self, name: str, **settings: Any) -> dict[str, Any]:
        return self.request("POST", "/api/v1/projects", json={"name": name, **settings})  # type: ignore[no-any-return]

    def get_project(self, project_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/projects/{project_id}")  # type: ignore[no-any-return]

    def update_project(self, project_id: str, **settings: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/v1/projects/{project_id}", json=settings)  # type: ignore[no-any-return]

    # --- builds -------------------------------------------------------------------------------------------

    def create_build(self, project_id: str, provenance: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A new build; a retried request (the first answer was lost) gets the same build, not a second one."""
        body = {"provenance": dict(provenance)} if provenance else {}
        return self.request(  # type: ignore[no-any-return]
            "POST",
            f"/api/v1/projects/{project_id}/builds",
            json=body,
            idempotent=True,
            headers={IDEMPOTENCY_HEADER: uuid.uuid4().hex},
        )

    def save_build(
        self, build_id: str, *, save_tags: list[str] | None = None, targets: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"save_tags": save_tags or [], "targets": targets or []}
        return self.request("POST", f"/api/v1/builds/{build_id}/save", json=body, idempotent=True)  # type: ignore[no-any-return]

    def fail_build(self, build_id: str, reason: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/builds/{build_id}/fail", json={"reason": reason}, idempotent=True)  # type: ignore[no-any-return]

    def get_build(self, build_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/builds/{build_id}")  # type: ignore[no-any-return]

    def list_builds(
        self, project_id: str, *, limit: int = 50, before: str | None = None, tag: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        if tag:
            params["tag"] = tag
        return self.request("GET", f"/api/v1/projects/{project_id}/builds", params=params)  # type: ignore[no-any-return]

    def add_save_tags(self, build_id: str, tags: list[str]) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/builds/{build_id}/tags", json={"tags": tags}, idempotent=True)  # type: ignore[no-any-return]

    def remove_save_tag(self, build_id: str, tag: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/builds/{build_id}/tags/{tag}")  # type: ignore[no-any-return]

    def pull_info(self, ref: str) -> dict[str, Any]:
        """Where ``<build-id>`` or ``<project>:<tag>`` lives, with a short-lived pull token."""
        return self.request("GET", "/api/v1/pull-info", params={"ref": ref})  # type: ignore[no-any-return]

    # --- tokens and trust ---------------------------------------------------------------------------------

    def create_token(self, kind: str, name: str, **fields: Any) -> dict[str, Any]:
        body = {"kind": kind, "name": name, **{k: v for k, v in fields.items() if v is not None}}
        return self.request("POST", "/api/v1/tokens", json=body)  # type: ignore[no-any-return]

    def list_tokens(self, project_id: str | None = None, *, include_inactive: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"all": "1"} if include_inactive else {}
        if project_id:
            params["project"] = project_id
        return self.request("GET", "/api/v1/tokens", params=params)["tokens"]  # type: ignore[no-any-return]

    def revoke_token(self, token_id: str, *, force: bool = False) -> dict[str, Any]:
        """``force``: revoke even the last admin token (the server refuses with 409 otherwise)."""
        params = {"force": "1"} if force else None
        return self.request("DELETE", f"/api/v1/tokens/{token_id}", params=params)  # type: ignore[no-any-return]

    def add_trust(self, project_id: str, **fields: Any) -> dict[str, Any]:
        body = {k: v for k, v in fields.items() if v is not None}
        return self.request("POST", f"/api/v1/projects/{project_id}/trust", json=body)  # type: ignore[no-any-return]

    def list_trust(self, project_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/projects/{project_id}/trust")["trust_relationships"]  # type: ignore[no-any-return]

    def remove_trust(self, project_id: str, trust_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/projects/{project_id}/trust/{trust_id}")  # type: ignore[no-any-return]

    # --- lifecycle: pin/unpin/extend, deletion, history, usage, expiry sweeps, garbage collection -------------

    def pin_build(self, build_id: str) -> dict[str, Any]:
        """Keep a saved build until unpinned (neither expiry nor the build cap removes it)."""
        return self.request("POST", f"/api/v1/builds/{build_id}/pin", idempotent=True)  # type: ignore[no-any-return]

    def unpin_build(self, build_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/builds/{build_id}/unpin", idempotent=True)  # type: ignore[no-any-return]

    def extend_build(
        self, build_id: str, *, by_seconds: float | None = None, until: str | None = None
    ) -> dict[str, Any]:
        """Move a saved build's expiry: ``by_seconds`` past its current expiry, or to ``until`` (ISO 8601)."""
        body: dict[str, Any] = {}
        if by_seconds is not None:
            body["by"] = by_seconds
        if until is not None:
            body["until"] = until
        return self.request("POST", f"/api/v1/builds/{build_id}/extend", json=body)  # type: ignore[no-any-return]

    def delete_build(self, build_id: str, *, dry_run: bool = False) -> dict[str, Any]:
        """Evict a build now (``{"dry_run", "evicted": [...]}``); ``dry_run`` only says what would go."""
        params = {"dry_run": "1"} if dry_run else None
        return self.request("DELETE", f"/api/v1/builds/{build_id}", params=params)  # type: ignore[no-any-return]

    # --- tags pushed outside builds (tag retention) ---------------------------------------------------------

    def list_tags(
        self, project_id: str, *, repository: str | None = None, limit: int = 50, after: str | None = None
    ) -> dict[str, Any]:
        """A page of the project's non-build tags (``{"tags": [...], "next": "<repository>:<tag>"}``)."""
        params: dict[str, Any] = {"limit": limit}
        if repository:
            params["repository"] = repository
        if after:
            params["after"] = after
        return self.request("GET", f"/api/v1/projects/{project_id}/tags", params=params)  # type: ignore[no-any-return]

    def pin_tag(self, repository: str, tag: str) -> dict[str, Any]:
        """Keep a tag pushed outside builds until unpinned (``repository`` is ``<project>[/…]``)."""
        return self._tag_call(repository, tag, "pin", {})

    def unpin_tag(self, repository: str, tag: str) -> dict[str, Any]:
        return self._tag_call(repository, tag, "unpin", {})

    def extend_tag(
        self, repository: str, tag: str, *, by_seconds: float | None = None, until: str | None = None
    ) -> dict[str, Any]:
        """Move a tag's expiry: ``by_seconds`` past its current expiry, or to ``until`` (ISO 8601)."""
        body: dict[str, Any] = {}
        if by_seconds is not None:
            body["by"] = by_seconds
        if until is not None:
            body["until"] = until
        return self._tag_call(repository, tag, "extend", body)

    def _tag_call(self, repository: str, tag: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        project_id = repository.split("/", 1)[0]
        return self.request(  # type: ignore[no-any-return]
            "POST", f"/api/v1/projects/{project_id}/tags/{action}", json={"repository": repository, "tag": tag, **body}
        )

    def project_history(
        self, project_id: str, *, limit: int = 100, build_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Lifecycle events of a project, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if build_id:
            params["build"] = build_id
        return self.request("GET", f"/api/v1/projects/{project_id}/history", params=params)["events"]  # type: ignore[no-any-return]

    def project_usage(self, project_id: str, *, month: str | None = None) -> dict[str, Any]:
        """Storage used in a month (``YYYY-MM``, default the current one): GB-months and the cost estimate."""
        params = {"month": month} if month else None
        return self.request("GET", f"/api/v1/projects/{project_id}/usage", params=params)  # type: ignore[no-any-return]

    def server_storage(self) -> dict[str, Any]:
        """The server's free space per filesystem, its minimum and whether uploads are refused (admin)."""
        return self.request("GET", "/api/v1/storage")  # type: ignore[no-any-return]

    def run_expiry(self, *, project_id: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Evict expired and stale builds now (one project, or every project with an admin token)."""
        body: dict[str, Any] = {"dry_run": dry_run}
        if project_id:
            body["project"] = project_id
        return self.request("POST", "/api/v1/expire", json=body)  # type: ignore[no-any-return]

    def run_gc(self, *, dry_run: bool = False) -> dict[str, Any]:
        """One garbage-collection pass (admin); the answer is the pass's report."""
        return self.request("POST", "/api/v1/gc", json={"dry_run": dry_run})  # type: ignore[no-any-return]
