"""The admin CLI in-process (click's CliRunner) against a real server.

``CARGOHOLD_CONFIG`` points at a temporary file for every test, so the stored login never touches the
developer's own config; CARGOHOLD_REGISTRY/TOKEN/PROJECT_ID from the environment are cleared for the same
reason.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import cargohold.cli.admin  # noqa: F401  (registers the commands on the app)
from cargohold.cli.main import app
from cargohold.isotime import iso
from cargohold.server.auth.credentials import CredentialKind, generate_token
from control_helpers import api, http
from servers import Server, module_server

server = module_server()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cfg" / "config.json"
    monkeypatch.setenv("CARGOHOLD_CONFIG", str(path))
    for name in ("CARGOHOLD_REGISTRY", "CARGOHOLD_TOKEN", "CARGOHOLD_PROJECT_ID", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield path


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_sentence_error(code: int, stdout: str, stderr: str, *fragments: str) -> None:
    assert code == 1
    assert stdout == ""
    text = " ".join(stderr.split())
    assert text.startswith("error: ") and text.endswith(".") and "Traceback" not in text
    assert len(stderr.strip().splitlines()) <= 3  # one sentence, possibly wrapped by the console
    for fragment in fragments:
        assert fragment in text, text


def test_login_whoami_logout(server: Server, config: Path) -> None:
    code, out, err = run("login", server.url, "--password-stdin", stdin=server.admin_token + "\n")
    assert code == 0, err
    assert "Logged in to" in out and "admin token" in out
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert json.loads(config.read_text()) == {"registry": server.url, "token": server.admin_token}

    code, out, _ = run("whoami", "--json")
    assert code == 0 and json.loads(out)["kind"] == "admin" and json.loads(out)["token_source"] == "stored login"
    code, out, _ = run("whoami")
    assert code == 0 and "admin token" in out and "stored login" in out

    code, out, _ = run("logout")
    assert code == 0 and not config.exists()
    code, out, err = run("whoami")
    assert_one_sentence_error(code, out, err, "no registry configured")


def test_login_with_a_bad_token_stores_nothing(server: Server, config: Path) -> None:
    code, out, err = run("login", server.host, "--token", generate_token(CredentialKind.PROJECT))
    assert_one_sentence_error(code, out, err, f"logging in to {server.url} failed", "not known to this registry")
    code, out, err = run("login", server.url, "--token", "hunter2")
    assert_one_sentence_error(code, out, err, "is not a Cargohold token")
    assert not config.exists()
    code, out, err = run("login", server.url, "--password-stdin", stdin="\n")
    assert_one_sentence_error(code, out, err, "nothing was read from standard input")


def test_projects_tokens_and_pull_token(server: Server, config: Path) -> None:
    assert run("login", server.url, "--token", server.admin_token)[0] == 0

    code, out, err = run("projects", "create", "cli app", "--retention", "7d", "--max-builds", "3", "--json")
    assert code == 0, err
    project = json.loads(out)
    assert (project["name"], project["retention_seconds"], project["max_builds"]) == ("cli app", 604800, 3)
    pid = project["id"]
    code, out, _ = run("projects", "create", "keep forever", "--retention", "unlimited")
    assert code == 0 and "unlimited" in out and "keep forever" in out

    code, out, _ = run("projects", "list")
    assert code == 0 and pid in out and "cli app" in out and "7d" in out
    code, out, _ = run("projects", "list", "--json")
    assert pid in [p["id"] for p in json.loads(out)["projects"]]
    code, out, _ = run("projects", "update", pid, "--max-builds", "4", "--retention", "12h", "--json")
    assert code == 0 and (json.loads(out)["max_builds"], json.loads(out)["retention_seconds"]) == (4, 43200)
    code, out, _ = run("projects", "show", "--project", pid)
    assert code == 0 and "12h" in out

    code, out, err = run("tokens", "create", "--project", pid, "--name", "ci", "--expires", "30d", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["token"].startswith("chp_") and created["kind"] == "project" and created["expires_at"]
    code, out, _ = run("tokens", "list", "--project", pid)
    assert code == 0 and created["id"] in out and "ci" in out
    code, out, _ = run("tokens", "list", "--json")
    listed_tokens = json.loads(out)["tokens"]
    assert created["id"] in [t["id"] for t in listed_tokens] and "token" not in listed_tokens[0]

    code, out, err = run("pull-token", "--project", pid)
    assert code == 0, err
    pull = out.strip()
    assert out == pull + "\n" and pull.startswith("chl_") and len(pull) == 40
    with http(server, pull) as client:
        who = client.get("/api/v1/whoami").json()
    assert who["kind"] == "pull" and who["permissions"][0]["actions"] == ["pull"]

    code, out, _ = run("tokens", "revoke", created["id"])
    assert code == 0 and f"Revoked token {created['id']}" in out
    code, out, _ = run("tokens", "list", "--project", pid, "--json")
    assert created["id"] not in [t["id"] for t in json.loads(out)["tokens"]]
    code, out, err = run("tokens", "revoke", created["token"])
    assert_one_sentence_error(code, out, err, "token ID")


def test_pull_token_for_one_build_with_a_project_token(server: Server, config: Path) -> None:
    with api(server) as admin:
        pid = admin.create_project("scoped").id
        project_token = admin.create_token("project", "ci", project_id=pid).token
        build = admin.create_build(pid).build_id
    code, out, err = run("pull-token", "--registry", server.url, "--token", project_token, build, "--expires", "10m")
    assert code == 0, err
    with http(server, out.strip()) as client:
        who = client.get("/api/v1/whoami").json()
    assert who["permissions"] == [{"project": pid, "actions": ["pull"], "build_id": build}]


def test_trust_add_list_remove(server: Server, config: Path) -> None:
    assert run("login", server.url, "--token", server.admin_token)[0] == 0
    pid = json.loads(run("projects", "create", "trusting", "--json")[1])["id"]
    code, out, err = run(
        "trust",
        "add",
        "--project",
        pid,
        "--repository",
        "Octo-Org/App",
        "--workflow",
        "release.yml",
        "--ref",
        "refs/tags/v*",
        "--environment",
        "production",
        "--runner-environment",
        "github-hosted",
        "--allow-event",
        "pull_request_target",
        "--allow-event",
        "workflow_run",
        "--pull-only",
        "--json",
    )
    assert code == 0, err
    rel = json.loads(out)
    assert (rel["owner"], rel["repository"], rel["pull_only"]) == ("octo-org", "app", True)
    assert rel["workflow"] == ".github/workflows/release.yml" and rel["ref_pattern"] == "refs/tags/v*"
    assert rel["allow_events"] == ["pull_request_target", "workflow_run"]

    code, out, err = run(
        "trust", "add", "--project", pid, "--repository", "octo-org/lib", "--repository-id", "42", "--owner-id", "7"
    )
    assert code == 0, err
    code, out, _ = run("trust", "list", "--project", pid, "--json")
    listed = json.loads(out)["trust_relationships"]
    assert len(listed) == 2 and {r["repository_id"] for r in listed} == {None, "42"}
    code, out, _ = run("trust", "list", "--project", pid)
    assert code == 0 and rel["id"] in out and "octo-org/app" in out and "learned on first use" in out

    code, out, _ = run("trust", "remove", "--project", pid, rel["id"])
    assert code == 0 and "Removed trust relationship" in out
    assert len(json.loads(run("trust", "list", "--project", pid, "--json")[1])["trust_relationships"]) == 1
    code, out, err = run("trust", "remove", "--project", pid, rel["id"])
    assert_one_sentence_error(code, out, err, f"trust relationship {rel['id']} does not exist")

    code, out, err = run("trust", "add", "--project", pid, "--repository", "octo-org/app", "--ref", "main")
    assert_one_sentence_error(code, out, err, "must start with refs/")
    code, out, err = run("trust", "add", "--project", pid, "--repository", "just-a-name")
    assert_one_sentence_error(code, out, err, "must be owner/name")


def test_errors_are_one_sentence(server: Server, config: Path) -> None:
    assert run("login", server.url, "--token", server.admin_token)[0] == 0
    code, out, err = run("projects", "show", "nosuchproject")
    assert_one_sentence_error(code, out, err, "project nosuchproject does not exist")
    code, out, err = run("tokens", "create", "--kind", "pull")
    assert_one_sentence_error(code, out, err, "needs a project")
    code, out, err = run("tokens", "create", "--kind", "root")
    assert_one_sentence_error(code, out, err, "is not one of project, pull, admin")
    code, out, err = run("projects", "create", "x", "--retention", "soon")
    assert_one_sentence_error(code, out, err, "--retention", "is not a duration")
    code, out, err = run("trust", "list")
    assert_one_sentence_error(code, out, err, "no project given")
    with api(server) as admin:
        pid = admin.create_project("limited").id
        pull = admin.create_token("pull", "reader", project_id=pid).token
    code, out, err = run("projects", "create", "nope", "--token", pull)
    assert_one_sentence_error(code, out, err, "only an admin token may do this")


def test_tokens_and_trust_with_permissions(server: Server, config: Path) -> None:
    assert run("login", server.url, "--token", server.admin_token)[0] == 0
    pid = json.loads(run("projects", "create", "permissions", "--json")[1])["id"]
    code, out, err = run("tokens", "create", "--project", pid, "--permissions", "pull,push,delete", "--json")
    assert code == 0, err
    janitor = json.loads(out)
    assert janitor["permissions"] == [{"project": pid, "actions": ["delete", "pull", "push"], "build_id": None}]
    code, out, _ = run("tokens", "list", "--project", pid)
    assert code == 0 and "delete,pull,push" in out
    code, out, err = run("tokens", "create", "--project", pid, "--permissions", "push")
    assert_one_sentence_error(code, out, err, "always includes pull")
    code, out, err = run("tokens", "create", "--kind", "admin", "--permissions", "metrics", "--json")
    assert code == 0, err
    assert json.loads(out)["admin_permissions"] == ["metrics"]

    # A pull token minted with a short-lived token dies with it, and the CLI says so.
    with api(server) as admin:
        brief = admin.create_token("project", "brief", project_id=pid, expires_in=600)
    code, out, err = run("pull-token", "--token", brief.token, "--project", pid, "--expires", "30d", "--json")
    assert code == 0, err
    assert json.loads(out)["expires_at"] == iso(brief.expires_at) and json.loads(out)["parent_id"] == brief.id
    code, out, err = run("pull-token", "--token", brief.token, "--project", pid, "--expires", "30d")
    assert code == 0 and out.strip().startswith("chl_") and len(out.strip()) == 40
    assert f"It expires at {iso(brief.expires_at)}, with the token that created it." in " ".join(err.split())
    code, out, _ = run("tokens", "revoke", brief.id)
    assert code == 0 and "and 2 token(s) minted from it" in out

    code, out, err = run(
        "trust",
        "add",
        "--project",
        pid,
        "--repository",
        "octo-org/cleaner",
        "--permissions",
        "pull,push,delete",
        "--json",
    )
    assert code == 0, err
    rel = json.loads(out)
    assert rel["permissions"] == ["delete", "pull", "push"] and rel["pull_only"] is False
    code, out, _ = run("trust", "list", "--project", pid)
    assert code == 0 and "delete, pull, push" in out
    code, out, err = run(
        "trust", "add", "--project", pid, "--repository", "octo-org/x", "--pull-only", "--permissions", "pull"
    )
    assert_one_sentence_error(code, out, err, "either --pull-only or --permissions")
    code, out, err = run("trust", "add", "--project", pid, "--repository", "octo-org/x", "--permissions", "push")
    assert_one_sentence_error(code, out, err, "must include pull")
    code, out, _ = run("trust", "remove", "--project", pid, rel["id"])
    assert code == 0 and "revoked 0 token(s)" in out
