"""The lifecycle CLI (``builds …``, ``gc``, ``expire``, ``usage``) in-process against a real server.

Builds are created over HTTP (create, push a tiny image, save) and then driven only through the CLI, so each
command's request, the server's answer and the printed table or JSON are checked end to end. As in the
admin CLI tests, ``CARGOHOLD_CONFIG`` points at a temporary file and the CARGOHOLD_* variables are cleared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import cargohold.cli.lifecycle  # noqa: F401  (registers the commands on the app)
from cargohold.cli.main import app
from servers import InProcessServer, module_server
from test_lifecycle_support import push_image

server = module_server()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cfg" / "config.json"
    monkeypatch.setenv("CARGOHOLD_CONFIG", str(path))
    for name in ("CARGOHOLD_REGISTRY", "CARGOHOLD_TOKEN", "CARGOHOLD_PROJECT_ID", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield path


def run(server: InProcessServer, *args: str) -> tuple[int, str, str]:
    """Invoke the CLI as an admin against ``server``; returns (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, [*args, "--registry", server.url, "--token", server.admin_token])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def ok(server: InProcessServer, *args: str) -> str:
    code, out, err = run(server, *args)
    assert code == 0, f"{args}: {err or out}"
    return out


def ok_json(server: InProcessServer, *args: str) -> dict[str, object]:
    data = json.loads(ok(server, *args, "--json"))
    assert isinstance(data, dict)
    return data


def assert_one_sentence_error(code: int, stdout: str, stderr: str, *fragments: str) -> None:
    assert code == 1
    assert stdout == ""
    text = " ".join(stderr.split())
    assert text.startswith("error: ") and text.endswith(".") and "Traceback" not in text
    assert len(stderr.strip().splitlines()) <= 3  # one sentence, possibly wrapped by the console
    for fragment in fragments:
        assert fragment in text, text


def new_project(server: InProcessServer, **settings: object) -> str:
    with server.client() as http:
        created = http.post("/api/v1/projects", json={"name": "cli-lifecycle", **settings})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


def save_build(server: InProcessServer, project_id: str, salt: str, save_tags: list[str] | None = None) -> str:
    """Create a build, push a two-layer image under its ID, and save it (all over HTTP)."""
    with server.client() as http:
        return _save(http, project_id, salt, save_tags or [])


def _save(http: httpx.Client, project_id: str, salt: str, save_tags: list[str]) -> str:
    created = http.post(f"/api/v1/projects/{project_id}/builds")
    assert created.status_code == 201, created.text
    build_id = str(created.json()["build_id"])
    pushed = push_image(http, project_id, build_id, [b"shared base layer" * 64, salt.encode()], salt)
    assert pushed.status_code == 201, pushed.text  # type: ignore[attr-defined]
    saved = http.post(f"/api/v1/builds/{build_id}/save", json={"save_tags": save_tags})
    assert saved.status_code == 200, saved.text
    return build_id


def test_list_show_pin_unpin_extend(server: InProcessServer, config: Path) -> None:
    project = new_project(server, retention_seconds=7 * 86400)
    older = save_build(server, project, "older")
    newer = save_build(server, project, "newer", ["stable"])

    listed = ok_json(server, "builds", "list", "--project", project)
    assert [build["id"] for build in listed["builds"]] == [newer, older]  # type: ignore[index]
    table = ok(server, "builds", "list", "--project", project)
    assert f"Builds of {project}" in table and older in table and newer in table and "stable" in table
    tagged = ok_json(server, "builds", "list", "--project", project, "--tag", "stable", "--limit", "5")
    assert [build["id"] for build in tagged["builds"]] == [newer]  # type: ignore[index]

    shown = ok_json(server, "builds", "show", older)
    assert shown["id"] == older and shown["status"] == "saved" and shown["pinned"] is False
    text = ok(server, "builds", "show", older)
    assert "expires" in text and str(shown["expires_at"]) in text and f"{project}:{older}" in text

    pinned = ok_json(server, "builds", "pin", older)
    assert pinned["pinned"] is True
    assert "pinned" in ok(server, "builds", "show", older).split("expires", 1)[1].splitlines()[0]
    assert f"Pinned build {older}" in ok(server, "builds", "pin", older)
    out = ok(server, "builds", "unpin", older)
    assert f"Unpinned build {older}; it expires at {shown['expires_at']}." in out
    assert ok_json(server, "builds", "show", older)["pinned"] is False

    before = datetime.fromisoformat(str(shown["expires_at"]).replace("Z", "+00:00"))
    extended = ok_json(server, "builds", "extend", older, "--by", "3d")
    after = datetime.fromisoformat(str(extended["expires_at"]).replace("Z", "+00:00"))
    assert after - before == timedelta(days=3)
    out = ok(server, "builds", "extend", older, "--until", "2099-12-31T00:00:00Z")
    assert out.strip() == f"Build {older} now expires at 2099-12-31T00:00:00Z."
    assert ok_json(server, "builds", "show", older)["expires_at"] == "2099-12-31T00:00:00Z"

    history = ok_json(server, "builds", "history", "--project", project, "--build", older)
    assert [(e["action"], e["rule"]) for e in history["events"]] == [  # type: ignore[index]
        ("extend", "manual"),
        ("extend", "manual"),
        ("unpin", "manual"),
        ("pin", "manual"),
        ("pin", "manual"),
    ]


def test_rm_dry_run_then_for_real_and_history(server: InProcessServer, config: Path) -> None:
    project = new_project(server)
    build = save_build(server, project, "doomed", ["nightly"])

    out = ok(server, "builds", "rm", build, "--dry-run")
    assert out.strip().startswith(f"Would delete build {build}") and "nothing was changed" in out
    assert ok_json(server, "builds", "show", build)["status"] == "saved"

    removed = ok_json(server, "builds", "rm", build)
    assert removed["dry_run"] is False
    [eviction] = removed["evicted"]  # type: ignore[misc]
    assert eviction["build_id"] == build and eviction["rule"] == "manual"
    assert sorted(eviction["tags"]) == sorted([build, "nightly"])

    # Asking about it again explains what happened instead of a bare "not found".
    code, out, err = run(server, "builds", "show", build)
    assert_one_sentence_error(code, out, err, f"build {build} was deleted on ")

    table = ok(server, "builds", "history", "--project", project)
    assert f"History of {project}" in table and "evict" in table and "manual" in table and build in table
    events = ok_json(server, "builds", "history", "--project", project, "--limit", "1")["events"]
    assert [(e["action"], e["rule"], e["build_id"]) for e in events] == [("evict", "manual", build)]  # type: ignore[union-attr]


def test_expire_says_what_would_go_and_why(
    server: InProcessServer, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = new_project(server, retention_seconds=1)
    build = save_build(server, project, "short-lived")
    keeper = new_project(server)
    kept = save_build(server, keeper, "kept")
    server.move_lifecycle_clock(monkeypatch, timedelta(seconds=2))  # past the 1 s retention

    planned = ok_json(server, "expire", "--project", project, "--dry-run")
    assert planned["dry_run"] is True
    assert [(e["build_id"], e["rule"]) for e in planned["evicted"]] == [(build, "expired")]  # type: ignore[union-attr]
    table = ok(server, "expire", "--project", project, "--dry-run")
    assert "Would evict 1 build:" in table and build in table and "expired" in table
    assert ok_json(server, "builds", "show", build)["status"] == "saved"

    out = ok(server, "expire", "--project", project)
    assert "Evicted 1 build:" in out and build in out
    assert ok(server, "expire", "--project", project).strip() == f"Nothing to expire in project {project}."
    assert ok_json(server, "builds", "show", kept)["status"] == "saved"
    events = ok_json(server, "builds", "history", "--project", project)["events"]
    assert [(e["action"], e["rule"], e["build_id"]) for e in events] == [("evict", "expired", build)]  # type: ignore[union-attr]


def test_gc_and_usage(server: InProcessServer, config: Path) -> None:
    project = new_project(server)
    save_build(server, project, "measured")

    report = ok_json(server, "gc", "--dry-run")
    assert report["dry_run"] is True and report["completed"] is True
    out = ok(server, "gc", "--dry-run")
    assert out.startswith("Garbage collection would free ") and " links in " in out and out.strip().endswith(" s.")
    report = ok_json(server, "gc")
    assert report["dry_run"] is False and {"blobs_deleted", "bytes_freed", "links_removed"} <= set(report)
    out = ok(server, "gc")
    assert out.startswith("Garbage collection freed ") and "removed" in out

    usage = ok_json(server, "usage", "--project", project)
    month = datetime.now(UTC).strftime("%Y-%m")
    assert usage["project_id"] == project and usage["month"] == month
    assert int(usage["stored_bytes"]) > 1000  # type: ignore[call-overload]
    table = ok(server, "usage", "--project", project, "--month", month)
    for label in ("GB-months", "free allowance", "estimated cost", "USD"):
        assert label in table, table


def test_errors_are_one_sentence_with_the_fix(server: InProcessServer, config: Path) -> None:
    code, out, err = run(server, "builds", "pin", "zzzzzzzzzz")
    assert_one_sentence_error(code, out, err, "build zzzzzzzzzz does not exist", "cargohold builds list")
    code, out, err = run(server, "builds", "rm", "zzzzzzzzzz", "--dry-run")
    assert_one_sentence_error(code, out, err, "build zzzzzzzzzz does not exist")

    project = new_project(server)
    build = save_build(server, project, "errors")
    code, out, err = run(server, "builds", "extend", build)
    assert_one_sentence_error(code, out, err, "give exactly one of --by")
    code, out, err = run(server, "builds", "extend", build, "--by", "soon")
    assert_one_sentence_error(code, out, err, "--by", "not a duration")
    code, out, err = run(server, "builds", "extend", build, "--until", "next tuesday")
    assert_one_sentence_error(code, out, err, "--until", "ISO 8601")
    code, out, err = run(server, "builds", "extend", build, "--until", "2001-01-01T00:00:00Z")
    assert_one_sentence_error(code, out, err, "is in the past")
    code, out, err = run(server, "usage", "--project", project, "--month", "June")
    assert_one_sentence_error(code, out, err, "June")
    code, out, err = run(server, "builds", "history")
    assert_one_sentence_error(code, out, err, "no project given", "--project")


# --- tags pushed outside builds -------------------------------------------------------------------------------


def push_tag(server: InProcessServer, repository: str, tag: str, salt: str) -> str:
    """Push a tiny image as ``repository:tag`` the way docker push would (no build); returns its digest."""
    with server.client() as http:
        pushed = push_image(http, repository, tag, [salt.encode()], salt)
        assert pushed.status_code == 201, pushed.text  # type: ignore[attr-defined]
        return str(pushed.headers["Docker-Content-Digest"])  # type: ignore[attr-defined]


def test_tags_list_pin_unpin_extend(server: InProcessServer, config: Path) -> None:
    project = new_project(server, retention_seconds=7 * 86400)
    build = save_build(server, project, "a build", ["main"])
    app = push_tag(server, f"{project}/app", "1.0", "app")
    push_tag(server, project, "edge", "edge")

    listed = ok_json(server, "tags", "list", "--project", project)
    assert [(t["repository"], t["tag"]) for t in listed["tags"]] == [(project, "edge"), (f"{project}/app", "1.0")]  # type: ignore[index]
    first = listed["tags"][1]  # type: ignore[index]
    assert first["digest"] == app and first["pinned"] is False and first["expires_at"] and first["pushed_at"]
    table = ok(server, "tags", "list", "--project", project)
    assert f"Tags of {project} pushed outside builds" in table and f"{project}:edge" in table
    assert app.split(":")[1][:12] in table and "Expires" in table and build not in table
    only = ok_json(server, "tags", "list", "--project", project, "--repository", "app", "--limit", "1")
    assert [t["tag"] for t in only["tags"]] == ["1.0"] and only["next"] == f"{project}/app:1.0"  # type: ignore[index]

    assert ok_json(server, "tags", "pin", f"{project}/app:1.0")["pinned"] is True
    assert "pinned" in ok(server, "tags", "list", "--project", project, "--repository", "app")
    out = ok(server, "tags", "unpin", f"{project}/app:1.0")
    assert out.strip() == f"Unpinned {project}/app:1.0; it expires at {first['expires_at']}."
    before = datetime.fromisoformat(str(first["expires_at"]).replace("Z", "+00:00"))
    extended = ok_json(server, "tags", "extend", f"{project}/app:1.0", "--by", "3d")
    assert datetime.fromisoformat(str(extended["expires_at"]).replace("Z", "+00:00")) - before == timedelta(days=3)
    out = ok(server, "tags", "extend", f"{project}/app:1.0", "--until", "2099-12-31T00:00:00Z")
    assert out.strip() == f"{project}/app:1.0 now expires at 2099-12-31T00:00:00Z."
    history = ok_json(server, "builds", "history", "--project", project)["events"]
    assert [(e["action"], e["detail"]["tag"]) for e in history] == [  # type: ignore[index]
        ("extend", "1.0"),
        ("extend", "1.0"),
        ("unpin", "1.0"),
        ("pin", "1.0"),
    ]

    code, out, err = run(server, "tags", "pin", "no-tag-here")
    assert_one_sentence_error(code, out, err, "is not <repository>:<tag>", "cargohold tags list")
    code, out, err = run(server, "tags", "pin", f"{project}/app:nope")
    assert_one_sentence_error(code, out, err, f"{project}/app:nope does not exist", "cargohold tags list")
    code, out, err = run(server, "tags", "pin", f"{project}:main")
    assert_one_sentence_error(code, out, err, f"tag of build {build}", f"cargohold builds pin {build}")
    code, out, err = run(server, "tags", "extend", f"{project}/app:1.0")
    assert_one_sentence_error(code, out, err, "give exactly one of --by")
    code, out, err = run(server, "tags", "list")
    assert_one_sentence_error(code, out, err, "no project given", "--project")


def test_expire_removes_expired_tags_and_untagged_manifests(
    server: InProcessServer, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = new_project(server, retention_seconds=1)
    tagged = push_tag(server, f"{project}/tool", "v1", "tool")
    by_digest = push_tag(server, f"{project}/tool", "v2", "by digest")
    with server.client() as http:  # untag it: a manifest pushed by digest and never tagged
        assert http.delete(f"/v2/{project}/tool/manifests/v2").status_code == 202
    server.move_lifecycle_clock(monkeypatch, timedelta(seconds=2))  # past the 1 s retention

    planned = ok_json(server, "expire", "--project", project, "--dry-run")
    assert [(t["tag"], t["rule"]) for t in planned["tags"]] == [("v1", "expired")]  # type: ignore[union-attr]
    assert [m["digests"] for m in planned["manifests"]] == [[by_digest]]  # type: ignore[union-attr]
    table = ok(server, "expire", "--project", project, "--dry-run")
    assert "Would evict 1 tag pushed outside builds:" in table and "Would remove 1 untagged manifest:" in table
    assert [t["tag"] for t in ok_json(server, "tags", "list", "--project", project)["tags"]] == ["v1"]  # type: ignore[union-attr]

    out = ok(server, "expire", "--project", project)
    assert "Evicted 1 tag pushed outside builds:" in out and "Removed 2 untagged manifests:" in out
    assert ok(server, "expire", "--project", project).strip() == f"Nothing to expire in project {project}."
    code, out, err = run(server, "tags", "pin", f"{project}/tool:v1")  # explained, not a bare "does not exist"
    assert_one_sentence_error(code, out, err, f"tag {project}/tool:v1 expired on ", "push it again")
    assert (
        ok(server, "tags", "list", "--project", project).strip()
        == f"No tags pushed outside builds in project {project}."
    )
    with server.client() as http:
        for digest in (tagged, by_digest):
            assert http.get(f"/v2/{project}/tool/manifests/{digest}").status_code == 404
        message = http.get(f"/v2/{project}/tool/manifests/v1").json()["errors"][0]["message"]
        assert message.startswith(f"tag {project}/tool:v1 expired on ") and "push it again" in message
        metrics = http.get("/metrics").text
    counters = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("cargohold_"))
    # The module's server is shared (its background sweeps may count other tests' work too): at least ours.
    assert float(counters['cargohold_tags_evicted_total{rule="expired"}']) >= 1
    assert float(counters["cargohold_manifests_collected_total"]) >= 2
