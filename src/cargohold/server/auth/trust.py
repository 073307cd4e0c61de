"""Trust relationships: which GitHub workflows may exchange an OIDC token for access to which project.

A relationship names a repository by owner and name (compared case-insensitively, like GitHub does) and
pins the immutable numeric ids ``repository_owner_id``/``repository_id``. Names can change hands: when an
account is deleted, someone else can register the same name and mint tokens that say the same
``repository``. The ids cannot be re-used, so they are what actually identifies the repository. They are
optional when a relationship is created (people know names, not ids); the first token that matches
teaches them (:attr:`MatchResult.learned`, which the caller must persist), and from then on they are
enforced.

If any relationship for the token's owner/repo has pinned ids that differ from the token's, the whole
match is refused, even if another relationship (without ids) would match: that situation means the name
now belongs to someone else, and trusting-on-first-use a relationship in that state would hand the
resurrected name exactly the access the ids were meant to deny.

Explanations of a failed match only ever describe relationships for the token's own owner/repo, so a
workflow cannot probe how other projects are configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from cargohold.metadata.control import TrustRecord
from cargohold.server.auth.credentials import ACTIONS_PULL, ACTIONS_PUSH, REPOSITORY_ACTIONS, Permission
from cargohold.server.auth.oidc import GitHubClaims

PROVIDER_GITHUB = "github"
RISKY_EVENTS = frozenset({"pull_request_target", "workflow_run"})
"""Events that run trusted workflow code with secrets on behalf of untrusted (fork) contributions."""
RUNNER_ENVIRONMENTS = frozenset({"github-hosted", "self-hosted"})

_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,99})$")
_WORKFLOW_PATH_RE = re.compile(r"^\.github/workflows/[^/@]+\.ya?ml$")


class TrustConfigError(ValueError):
    """A trust relationship's settings are invalid; the message names the field."""


def _normalise_workflow(value: str) -> str:
    """Accept ``ci.yml``, ``.github/workflows/ci.yml`` or ``owner/repo/.github/workflows/ci.yml``."""
    if "/" not in value:
        value = f".github/workflows/{value}"
    if value.startswith(".github/"):
        path = value
    else:
        parts = value.split("/", 2)
        if len(parts) != 3 or not all(_NAME_RE.match(p) for p in parts[:2]):
            raise TrustConfigError(
                f"workflow {value!r} must be a file name like 'ci.yml', a path like "
                "'.github/workflows/ci.yml' or 'owner/repo/.github/workflows/ci.yml'"
            )
        path = parts[2]
    if not _WORKFLOW_PATH_RE.match(path):
        raise TrustConfigError(f"workflow {value!r} must be a .yml/.yaml file under .github/workflows/")
    return value


@dataclass(frozen=True, slots=True)
class TrustRelationship:
    """One project's trust in one GitHub repository's workflows.

    ``workflow`` matches the file that runs the job (``job_workflow_ref`` without its ``@ref``): a bare
    name or ``.github/workflows/...`` path means a workflow in this same repository, an
    ``owner/repo/.github/workflows/...`` value trusts a reusable workflow from another repository.
    ``ref_pattern`` is fnmatch-style and case-sensitive (``*`` also matches ``/``). ``allow_events``
    opts into ``pull_request_target``/``workflow_run``, which are refused otherwise. ``permissions`` is what
    exchanged credentials get in the project (default pull+push, or pull alone when ``pull_only``; ``delete``
    only when asked for).
    """

    id: str
    project: str
    repository_owner: str
    repository_name: str
    provider: str = PROVIDER_GITHUB
    repository_owner_id: str | None = None
    repository_id: str | None = None
    workflow: str | None = None
    environment: str | None = None
    ref_pattern: str | None = None
    runner_environment: str | None = None
    allow_events: frozenset[str] = field(default_factory=frozenset)
    pull_only: bool = False
    permissions: frozenset[str] | None = None

    @classmethod
    def from_record(cls, record: TrustRecord) -> TrustRelationship:
        """The relationship a stored record describes (as the metadata store keeps it)."""
        return cls(
            id=record.id,
            project=record.project_id,
            repository_owner=record.owner,
            repository_name=record.repository,
            provider=record.provider,
            repository_owner_id=record.owner_id,
            repository_id=record.repository_id,
            workflow=record.workflow,
            environment=record.environment,
            ref_pattern=record.ref_pattern,
            runner_environment=record.runner_environment,
            allow_events=record.allowed_events,
            pull_only=record.pull_only,
            permissions=record.permissions,
        )

    def __post_init__(self) -> None:
        self._check_permissions()
        if self.provider != PROVIDER_GITHUB:
            raise TrustConfigError(f"provider {self.provider!r} is not supported (only 'github')")
        if not self.project:
            raise TrustConfigError("a trust relationship needs a project")
        for label, value in (("repository owner", self.repository_owner), ("repository name", self.repository_name)):
            if not _NAME_RE.match(value or ""):
                raise TrustConfigError(f"{label} {value!r} is not a valid GitHub name")
        for label, ident in (("repository_owner_id", self.repository_owner_id), ("repository_id", self.repository_id)):
            if ident is not None and not (ident.isascii() and ident.isdigit()):
                raise TrustConfigError(f"{label} must be a decimal number, got {ident!r}")
        if self.workflow is not None:
            object.__setattr__(self, "workflow", _normalise_workflow(self.workflow))
        if self.environment is not None and not self.environment.strip():
            raise TrustConfigError("environment must not be empty (leave it unset to allow any)")
        if self.ref_pattern is not None and not self.ref_pattern.startswith("refs/"):
            raise TrustConfigError(
                f"ref pattern {self.ref_pattern!r} must start with refs/ (e.g. refs/heads/main or refs/tags/v*)"
            )
        if self.runner_environment is not None and self.runner_environment not in RUNNER_ENVIRONMENTS:
            raise TrustConfigError(
                f"runner_environment must be one of {sorted(RUNNER_ENVIRONMENTS)}, got {self.runner_environment!r}"
            )
        unknown = set(self.allow_events) - RISKY_EVENTS
        if unknown:
            raise TrustConfigError(
                f"allow_events may only contain {sorted(RISKY_EVENTS)}; {sorted(unknown)} need no opt-in"
            )

    def _check_permissions(self) -> None:
        if self.permissions is None:
            derived = {ACTIONS_PULL} if self.pull_only else {ACTIONS_PULL, ACTIONS_PUSH}
            object.__setattr__(self, "permissions", frozenset(derived))
            return
        permissions = frozenset(self.permissions)
        unknown = sorted(permissions - REPOSITORY_ACTIONS)
        if unknown or not permissions:
            raise TrustConfigError(
                f"permissions are drawn from {', '.join(sorted(REPOSITORY_ACTIONS))}"
                + (f"; {', '.join(unknown)} is not one of them" if unknown else "; give at least one")
            )
        if ACTIONS_PULL not in permissions:
            raise TrustConfigError("permissions must include pull (pushing starts by reading)")
        if self.pull_only and permissions != {ACTIONS_PULL}:
            raise TrustConfigError(f"pull_only contradicts permissions {','.join(sorted(permissions))}; give one")
        object.__setattr__(self, "permissions", permissions)
        object.__setattr__(self, "pull_only", permissions == {ACTIONS_PULL})

    @property
    def full_name(self) -> str:
        return f"{self.repository_owner}/{self.repository_name}"

    def names_repository(self, claims: GitHubClaims) -> bool:
        """Whether this relationship is about the token's owner/repo (by name, case-insensitively)."""
        return (
            self.repository_owner.casefold() == claims.repository_owner.casefold()
            and self.full_name.casefold() == claims.repository.casefold()
        )

    @property
    def actions(self) -> frozenset[str]:
        assert self.permissions is not None  # set by __post_init__
        return self.permissions


@dataclass(frozen=True, slots=True)
class LearnedIds:
    """Ids to store on relationship ``relationship_id`` now that a verified token supplied them."""

    relationship_id: str
    repository_owner_id: str
    repository_id: str


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Outcome of :func:`match`. ``permissions`` is what an exchanged credential should carry."""

    matched: tuple[TrustRelationship, ...] = ()
    permissions: tuple[Permission, ...] = ()
    learned: tuple[LearnedIds, ...] = ()
    denial: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.matched)


def _workflow_mismatch(rel: TrustRelationship, claims: GitHubClaims) -> str | None:
    if rel.workflow is None:
        return None
    ref_less, at, _ = claims.job_workflow_ref.partition("@")
    parts = ref_less.split("/", 2)
    if not at or len(parts) != 3:
        return f"job_workflow_ref {claims.job_workflow_ref!r} is not of the form owner/repo/path@ref"
    token_repo, token_path = f"{parts[0]}/{parts[1]}", parts[2]
    if rel.workflow.startswith(".github/"):
        want_repo, want_path = rel.full_name, rel.workflow
    else:
        owner, name, want_path = rel.workflow.split("/", 2)
        want_repo = f"{owner}/{name}"
    if token_repo.casefold() != want_repo.casefold() or token_path != want_path:
        return f"workflow is '{token_repo}/{token_path}', the relationship requires '{want_repo}/{want_path}'"
    return None


def _field_mismatches(rel: TrustRelationship, claims: GitHubClaims) -> list[str]:
    """Why ``rel`` does not match ``claims`` (ids excluded: they are checked first, separately)."""
    reasons = []
    if claims.event_name in RISKY_EVENTS and claims.event_name not in rel.allow_events:
        reasons.append(
            f"event '{claims.event_name}' is refused unless explicitly allowed (it runs "
            "with the base repository's credentials on behalf of fork code)"
        )
    workflow = _workflow_mismatch(rel, claims)
    if workflow:
        reasons.append(workflow)
    if rel.environment is not None:
        if claims.environment is None:
            reasons.append(f"the job has no environment, the relationship requires '{rel.environment}'")
        elif claims.environment.casefold() != rel.environment.casefold():
            reasons.append(f"environment is '{claims.environment}', the relationship requires '{rel.environment}'")
    if rel.ref_pattern is not None and not fnmatchcase(claims.ref, rel.ref_pattern):
        reasons.append(f"ref '{claims.ref}' does not match '{rel.ref_pattern}'")
    if rel.runner_environment is not None and claims.runner_environment != rel.runner_environment:
        reasons.append(
            f"runner_environment is '{claims.runner_environment or 'unknown'}', the "
            f"relationship requires '{rel.runner_environment}'"
        )
    return reasons


def _id_conflicts(rel: TrustRelationship, claims: GitHubClaims) -> list[str]:
    conflicts = []
    if rel.repository_owner_id is not None and rel.repository_owner_id != claims.repository_owner_id:
        conflicts.append(
            f"the owner '{claims.repository_owner}' has id {claims.repository_owner_id} but the trust "
            f"relationship was set up with id {rel.repository_owner_id}: the account was deleted and the "
            "name re-registered, or the relationship is wrong"
        )
    if rel.repository_id is not None and rel.repository_id != claims.repository_id:
        conflicts.append(
            f"the repository '{claims.repository}' has id {claims.repository_id} but the trust "
            f"relationship was set up with id {rel.repository_id}: the repository was deleted and "
            "re-created, or the relationship is wrong"
        )
    return conflicts


def match(relationships: Iterable[TrustRelationship], claims: GitHubClaims) -> MatchResult:
    """Match verified ``claims`` against all relationships; see the module docstring for the rules."""
    candidates = [rel for rel in relationships if rel.names_repository(claims)]
    if not candidates:
        return MatchResult(denial=f"no trust relationship for repository {claims.repository}")

    conflicts = [(rel, _id_conflicts(rel, claims)) for rel in candidates]
    conflicts = [(rel, reasons) for rel, reasons in conflicts if reasons]
    if conflicts:
        details = "; ".join(
            f"relationship {rel.id} (project {rel.project}): {' and '.join(reasons)}" for rel, reasons in conflicts
        )
        return MatchResult(
            denial=f"refusing repository {claims.repository}: its ids do not match the "
            f"ones pinned in its trust relationships ({details}); a project admin "
            "must update or delete these relationships"
        )

    matched: list[TrustRelationship] = []
    failures: list[str] = []
    for rel in candidates:
        reasons = _field_mismatches(rel, claims)
        if reasons:
            failures.append(f"relationship {rel.id} (project {rel.project}): {'; '.join(reasons)}")
        else:
            matched.append(rel)
    if not matched:
        return MatchResult(
            denial=f"no trust relationship for repository {claims.repository} matched this "
            f"token: {' | '.join(failures)}"
        )

    by_project: dict[str, set[str]] = {}
    for rel in matched:
        by_project.setdefault(rel.project, set()).update(rel.actions)
    permissions = tuple(Permission(project, frozenset(actions)) for project, actions in by_project.items())
    learned = tuple(
        LearnedIds(rel.id, claims.repository_owner_id, claims.repository_id)
        for rel in matched
        if rel.repository_owner_id is None or rel.repository_id is None
    )
    return MatchResult(matched=tuple(matched), permissions=permissions, learned=learned)
