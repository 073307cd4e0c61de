"""The control API end to end over HTTP: projects, builds, real image pushes, save-tags and pull-info.

One server for the module; every test makes its own project so they do not see each other's builds.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cargohold.client.control import ControlError
from cargohold.sample import write_sample_image
from cargohold.schemas import BuildCreated
from control_helpers import api, error_of, http, new_project, push_image
from servers import Server, module_server

server = module_server()


def test_projects_create_list_show_update_admin_only(server: Server) -> None:
    with api(server) as admin:
        created = admin.create_project("web app", retention_seconds=7 * 86400, max_builds=5)
        assert created.name == "web app"
        assert created.retention_seconds == 7 * 86400 and created.max_builds == 5
        assert created.registry == f"{server.host}/{created.id}"
        unlimited = admin.create_project("forever", retention_seconds=None)
        assert unlimited.retention_seconds is None

        ids = [p.id for p in admin.list_projects()]
        assert created.id in ids and unlimited.id in ids
        shown = admin.get_project(created.id)
        assert shown.name == "web app" and shown.max_builds == 5

        updated = admin.update_project(created.id, name="web", max_builds=9, retention_seconds=3600)
        assert (updated.name, updated.max_builds, updated.retention_seconds) == ("web", 9, 3600)
        assert admin.get_project(created.id).name == "web"

        with pytest.raises(ControlError) as missing_name:
            admin.request("POST", "/api/v1/projects", json={"max_builds": 3})
        assert missing_name.value.status == 400 and "needs a name" in str(missing_name.value)
        with pytest.raises(ControlError) as bad_cap:
            admin.update_project(created.id, max_builds=0)
        assert bad_cap.value.status == 400 and "max_builds" in str(bad_cap.value)
        with pytest.raises(ControlError) as unknown:
            admin.update_project("nosuchproject", name="x")
        assert unknown.value.status == 404

        project_token = admin.create_token("project", "ci", project_id=created.id).token

    with api(server, project_token) as member:
        # A project credential sees only its own project and can manage none.
        assert [p.id for p in member.list_projects()] == [created.id]
        assert member.get_project(created.id).id == created.id
        for call in (lambda: member.create_project("mine"), lambda: member.update_project(created.id, name="x")):
            with pytest.raises(ControlError) as denied:
                call()
            assert denied.value.status == 403 and denied.value.code == "DENIED"
        with pytest.raises(ControlError) as hidden:
            member.get_project(unlimited.id)
        assert hidden.value.status == 404 and hidden.value.code == "NOT_FOUND"


def _start_build(server: Server, token: str, project_id: str) -> BuildCreated:
    with api(server, token) as control:
        build = control.create_build(project_id)
    assert build.token.startswith("chp_") and build.project_id == project_id
    assert build.reference == f"{server.host}/{project_id}:{build.build_id}"
    return build


def test_build_push_save_list_pull_info_and_save_tags(server: Server, tmp_path: Path) -> None:
    project = new_project(server, "builds")
    pid = project.id
    with api(server) as admin:
        ci_token = admin.create_token("project", "ci", project_id=pid).token

    first = _start_build(server, ci_token, pid)
    with api(server, first.token) as control:
        # Saving before the image exists must say what to do, not half-save.
        with pytest.raises(ControlError) as early:
            control.save_build(first.build_id, save_tags=["main"])
        assert early.value.status == 409 and early.value.code == "CONFLICT"
        assert f"{pid}:{first.build_id} is not in the registry" in str(early.value)
        assert control.get_build(first.build_id).status != "saved"

        image1 = push_image(server, pid, first.build_id, first.token, tmp_path / "one", seed=1)
        saved1 = control.save_build(first.build_id, save_tags=["main"])
    assert saved1.status == "saved"
    assert saved1.digest == str(image1.manifest.digest)
    assert saved1.platforms == ["linux/amd64"]
    expected_size = image1.manifest.size + sum(d.size for d in image1.blobs)
    assert saved1.total_size == expected_size
    assert saved1.save_tags == ["main"]

    second = _start_build(server, ci_token, pid)
    image2 = push_image(
        server, pid, second.build_id, second.token, tmp_path / "two", seed=2, platform=("linux", "arm64", "v8")
    )
    with api(server, second.token) as control:
        saved2 = control.save_build(second.build_id, save_tags=["main", "release"])
        assert saved2.digest == str(image2.manifest.digest)
        assert saved2.platforms == ["linux/arm64/v8"]
        # The save-tag moved: the newest build that claims it owns it now.
        assert sorted(saved2.save_tags) == ["main", "release"]
        assert control.get_build(first.build_id).save_tags == []

        third = control.create_build(pid)
        failed = control.fail_build(third.build_id, "tests failed")
        assert failed.status == "failed" and "tests failed" in str(failed.failure)
        with pytest.raises(ControlError) as refail:
            control.save_build(third.build_id)
        assert refail.value.status == 409

        listing = control.list_builds(pid)
        assert [b.id for b in listing.builds] == [third.build_id, second.build_id, first.build_id]
        page1 = control.list_builds(pid, limit=2)
        assert [b.id for b in page1.builds] == [third.build_id, second.build_id]
        page2 = control.list_builds(pid, limit=2, before=page1.next)
        assert [b.id for b in page2.builds] == [first.build_id] and page2.next is None
        tagged = control.list_builds(pid, tag="main")
        assert [b.id for b in tagged.builds] == [second.build_id]

        by_tag = control.pull_info(f"{pid}:main")
        assert by_tag.build_id == second.build_id and by_tag.digest == str(image2.manifest.digest)
        by_id = control.pull_info(first.build_id)
        assert by_id.build_id == first.build_id and by_id.username == "x-token"
        assert by_id.token.startswith("chl_") and by_id.reference == f"{server.host}/{pid}:{first.build_id}"
        with pytest.raises(ControlError) as not_saved:
            control.pull_info(third.build_id)
        assert not_saved.value.status == 409 and "not saved" in str(not_saved.value)

        # Tags may also be added to an older build; it takes the tag over.
        moved_back = control.add_save_tags(first.build_id, ["release"])
        assert moved_back.save_tags == ["release"]
        assert control.get_build(second.build_id).save_tags == ["main"]
        untagged = control.remove_save_tag(second.build_id, "main")
        assert untagged.save_tags == []
        with pytest.raises(ControlError) as gone:
            control.pull_info(f"{pid}:main")
        assert gone.value.status == 404
        with pytest.raises(ControlError) as bad_tag:
            control.add_save_tags(first.build_id, ["no spaces allowed"])
        assert bad_tag.value.status == 400

    # The pull-info token is scoped to its build: that build's manifest and blobs, nothing else.
    with http(server, by_id.token) as puller:
        ok = puller.get(
            f"/v2/{pid}/manifests/{first.build_id}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
        )
        assert ok.status_code == 200
        assert puller.get(f"/v2/{pid}/blobs/{image1.layers[0].digest}").status_code == 200
        other = puller.get(f"/v2/{pid}/manifests/{second.build_id}")
        assert other.status_code == 403 and error_of(other)[0] == "DENIED"
        other_blob = puller.get(f"/v2/{pid}/blobs/{image2.layers[0].digest}")
        assert other_blob.status_code == 403 and error_of(other_blob)[0] == "DENIED"
        listed = puller.get(f"/api/v1/projects/{pid}/builds").json()["builds"]
        assert [b["id"] for b in listed] == [first.build_id]
        assert puller.get(f"/api/v1/builds/{second.build_id}").status_code == 404


def test_build_routes_refuse_wrong_callers(server: Server) -> None:
    project = new_project(server, "guarded")
    pid = project.id
    with api(server) as admin:
        pull_token = admin.create_token("pull", "reader", project_id=pid).token
        build = admin.create_build(pid)
    with api(server, pull_token) as reader:
        with pytest.raises(ControlError) as create:
            reader.create_build(pid)
        assert create.value.status == 403 and create.value.code == "DENIED"
        with pytest.raises(ControlError) as fail:
            reader.fail_build(build.build_id, "nope")
        assert fail.value.status == 403
        assert reader.get_build(build.build_id).id == build.build_id
    with http(server) as anonymous:
        response = anonymous.get(f"/api/v1/builds/{build.build_id}")
        assert response.status_code == 401 and "WWW-Authenticate" in response.headers
        assert anonymous.get("/api/v1/oidc").status_code == 200


def test_docker_login_style_flow_with_skopeo(server: Server, tmp_path: Path) -> None:
    """``skopeo login -u x-token --password-stdin`` stores the token; copies then use it, or ``--creds``."""
    project = new_project(server, "skopeo")
    pid = project.id
    with api(server) as admin:
        token = admin.create_token("project", "laptop", project_id=pid).token
    layout = tmp_path / "layout"
    write_sample_image(layout, layers=1, layer_size=1024, seed=5, ref="img")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}

    def skopeo(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["skopeo", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)

    bad = skopeo("login", "--tls-verify=false", "-u", "x-token", "--password-stdin", server.host, stdin="nope\n")
    assert bad.returncode != 0 and not (tmp_path / "auth.json").exists()
    login = skopeo("login", "--tls-verify=false", "-u", "x-token", "--password-stdin", server.host, stdin=token + "\n")
    assert login.returncode == 0, login.stderr
    assert server.host in json.loads((tmp_path / "auth.json").read_text())["auths"]
    stored = skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:img", f"docker://{server.host}/{pid}:stored")
    assert stored.returncode == 0, stored.stderr
    explicit = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"x-token:{token}",
            f"oci:{layout}:img",
            f"docker://{server.host}/{pid}:explicit",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert explicit.returncode == 0, explicit.stderr
    # The same token cannot push outside its project.
    other = new_project(server, "not yours").id
    refused = skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:img", f"docker://{server.host}/{other}:x")
    assert refused.returncode != 0
    with http(server, token) as client:
        assert sorted(client.get(f"/v2/{pid}/tags/list").json()["tags"]) == ["explicit", "stored"]
