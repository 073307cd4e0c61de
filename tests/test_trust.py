"""Trust relationship matching: ids, resurrection, risky events, workflow/env/ref/runner filters, leaks."""

from __future__ import annotations

import dataclasses

import pytest

from cargohold.server.auth.credentials import Permission
from cargohold.server.auth.oidc import GitHubClaims
from cargohold.server.auth.trust import LearnedIds, TrustConfigError, TrustRelationship, match

BASE = GitHubClaims(
    issuer="https://token.actions.githubusercontent.com",
    subject="repo:octo-org/app:ref:refs/heads/main",
    audience="https://registry.test",
    jti="j1",
    issued_at=1,
    expires_at=301,
    repository="octo-org/app",
    repository_id="2002",
    repository_owner="octo-org",
    repository_owner_id="1001",
    event_name="push",
    ref="refs/heads/main",
    sha="a" * 40,
    job_workflow_ref="octo-org/app/.github/workflows/ci.yml@refs/heads/main",
    runner_environment="github-hosted",
)


def claims(**changes: object) -> GitHubClaims:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


def rel(**kwargs: object) -> TrustRelationship:
    values: dict[str, object] = {
        "id": "r1",
        "project": "web",
        "repository_owner": "octo-org",
        "repository_name": "app",
        "repository_owner_id": "1001",
        "repository_id": "2002",
    }
    values.update(kwargs)
    return TrustRelationship(**values)  # type: ignore[arg-type]


def test_basic_match_grants_push_and_pull_and_learns_nothing_when_pinned() -> None:
    result = match([rel()], BASE)
    assert result.ok and result.denial is None
    assert result.permissions == (Permission("web", frozenset({"pull", "push"})),)
    assert result.learned == ()


def test_names_are_case_insensitive() -> None:
    result = match([rel(repository_owner="Octo-Org", repository_name="APP")], BASE)
    assert result.ok


def test_first_match_learns_ids_then_they_are_enforced() -> None:
    unpinned = rel(repository_owner_id=None, repository_id=None)
    result = match([unpinned], BASE)
    assert result.ok
    assert result.learned == (LearnedIds("r1", "1001", "2002"),)
    pinned = dataclasses.replace(unpinned, repository_owner_id="1001", repository_id="2002")
    assert match([pinned], BASE).learned == ()


def test_same_names_with_different_ids_are_refused_as_resurrection() -> None:
    resurrected = claims(repository_owner_id="9999", repository_id="8888")
    result = match([rel(), rel(id="r2", project="other", repository_owner_id=None, repository_id=None)], resurrected)
    assert not result.ok and result.learned == ()
    assert result.denial is not None
    assert "the owner 'octo-org' has id 9999 but the trust relationship was set up with id 1001" in result.denial
    assert "deleted and the name re-registered" in result.denial
    assert "the repository 'octo-org/app' has id 8888" in result.denial


def test_recreated_repository_with_same_owner_is_refused() -> None:
    result = match([rel()], claims(repository_id="7777"))
    assert not result.ok
    assert result.denial is not None and "deleted and re-created" in result.denial


@pytest.mark.parametrize("event", ["pull_request_target", "workflow_run"])
def test_risky_events_are_refused_unless_allowed(event: str) -> None:
    token = claims(event_name=event)
    refused = match([rel()], token)
    assert not refused.ok
    assert refused.denial is not None and f"event '{event}' is refused unless explicitly allowed" in refused.denial
    assert match([rel(allow_events=frozenset({event}))], token).ok


def test_pull_request_event_needs_no_opt_in() -> None:
    assert match([rel()], claims(event_name="pull_request", ref="refs/pull/7/merge")).ok


def test_workflow_is_compared_by_path() -> None:
    for spelling in ("ci.yml", ".github/workflows/ci.yml", "octo-org/app/.github/workflows/ci.yml"):
        assert match([rel(workflow=spelling)], BASE).ok, spelling
    result = match([rel(workflow="release.yml")], BASE)
    assert not result.ok
    assert result.denial is not None and (
        "workflow is 'octo-org/app/.github/workflows/ci.yml', the relationship requires "
        "'octo-org/app/.github/workflows/release.yml'" in result.denial
    )


def test_reusable_workflow_from_another_repository_must_be_named_in_full() -> None:
    reusable = claims(job_workflow_ref="octo-org/shared/.github/workflows/build.yml@refs/tags/v1")
    assert not match([rel(workflow="build.yml")], reusable).ok
    assert match([rel(workflow="octo-org/shared/.github/workflows/build.yml")], reusable).ok


def test_environment_ref_and_runner_filters() -> None:
    env_rel = rel(environment="Production")
    assert match([env_rel], claims(environment="production")).ok
    no_env = match([env_rel], BASE)
    assert no_env.denial is not None and "the job has no environment" in no_env.denial

    tags = rel(ref_pattern="refs/tags/v*")
    assert match([tags], claims(ref="refs/tags/v1.2.3")).ok
    branch = match([tags], BASE)
    assert branch.denial is not None and "ref 'refs/heads/main' does not match 'refs/tags/v*'" in branch.denial

    hosted = rel(runner_environment="github-hosted")
    assert match([hosted], BASE).ok
    self_hosted = match([hosted], claims(runner_environment="self-hosted"))
    assert self_hosted.denial is not None and "runner_environment is 'self-hosted'" in self_hosted.denial


def test_all_mismatching_fields_are_listed() -> None:
    result = match([rel(workflow="release.yml", environment="prod", ref_pattern="refs/tags/*")], BASE)
    assert result.denial is not None
    assert result.denial.startswith(
        "no trust relationship for repository octo-org/app matched this token: relationship r1 (project web): "
    )
    for fragment in ("workflow is", "no environment", "does not match 'refs/tags/*'"):
        assert fragment in result.denial


def test_no_relationship_for_repository_is_stated_exactly_without_leaking_others() -> None:
    others = [rel(id="secret-rel", project="secret-project", repository_name="other-app", workflow="secret.yml")]
    result = match(others, BASE)
    assert result.denial == "no trust relationship for repository octo-org/app"


def test_denial_only_mentions_relationships_of_the_same_repository() -> None:
    result = match(
        [
            rel(ref_pattern="refs/tags/*"),
            rel(id="r-other", project="hidden", repository_name="different", ref_pattern="refs/x"),
        ],
        BASE,
    )
    assert result.denial is not None
    assert "hidden" not in result.denial and "r-other" not in result.denial and "refs/x" not in result.denial


def test_multiple_projects_and_pull_only() -> None:
    result = match(
        [
            rel(id="r1", project="web"),
            rel(id="r2", project="docs", pull_only=True),
            rel(id="r3", project="web", pull_only=True),
            rel(id="r4", project="x", ref_pattern="refs/t"),
        ],
        BASE,
    )
    assert {r.id for r in result.matched} == {"r1", "r2", "r3"}
    assert set(result.permissions) == {
        Permission("web", frozenset({"pull", "push"})),
        Permission("docs", frozenset({"pull"})),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"provider": "gitlab"}, "only 'github'"),
        ({"repository_owner": "bad owner"}, "not a valid GitHub name"),
        ({"repository_id": "12a"}, "decimal number"),
        ({"workflow": "../../evil.yml"}, "workflow"),
        ({"workflow": "ci.txt"}, ".yml/.yaml"),
        ({"ref_pattern": "main"}, "must start with refs/"),
        ({"runner_environment": "cloud"}, "runner_environment must be one of"),
        ({"allow_events": frozenset({"push"})}, "need no opt-in"),
        ({"environment": " "}, "environment must not be empty"),
    ],
)
def test_invalid_relationships_are_refused_with_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TrustConfigError, match=message):
        rel(**kwargs)
