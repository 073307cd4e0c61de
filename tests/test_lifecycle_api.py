"""Lifecycle through the real server: save, pin, delete, explain on pull, history, usage, GC, metrics."""

from __future__ import annotations

import httpx

from servers import InProcessServer, Server
from test_lifecycle_support import push_image


def _save(http: httpx.Client, project_id: str, layers: list[bytes], salt: str, save_tags: list[str] = ()) -> str:  # type: ignore[assignment]
    build = http.post(f"/api/v1/projects/{project_id}/builds")
    assert build.status_code in (200, 201), build.text
    build_id = build.json()["build_id"] if "build_id" in build.json() else build.json()["id"]
    pushed = push_image(http, project_id, build_id, layers, salt)
    assert pushed.status_code == 201, pushed.text  # type: ignore[attr-defined]
    saved = http.post(f"/api/v1/builds/{build_id}/save", json={"save_tags": list(save_tags)})
    assert saved.status_code == 200, saved.text
    return build_id


def test_pin_delete_explain_history_usage_gc_metrics(server: InProcessServer) -> None:
    with server.client() as http:
        project = http.post("/api/v1/projects", json={"name": "life", "max_builds": 2}).json()
        pid = project["id"]
        first = _save(http, pid, [b"base" * 100, b"one"], "1", ["latest"])
        pinned = http.post(f"/api/v1/builds/{first}/pin")
        assert pinned.status_code == 200 and pinned.json()["pinned"] is True
        second = _save(http, pid, [b"base" * 100, b"two"], "2")
        third = _save(http, pid, [b"base" * 100, b"three"], "3", ["latest"])
        # The cap is 2: the oldest *unpinned* build (second) went when the third was saved.
        gone = http.get(f"/v2/{pid}/manifests/{second}")
        assert gone.status_code == 404
        error = gone.json()["errors"][0]
        assert error["code"] == "MANIFEST_UNKNOWN"
        assert error["message"].startswith(f"build {second} was evicted on ") and "at most 2" in error["message"]
        assert http.get(f"/v2/{pid}/manifests/{first}").status_code == 200

        extended = http.post(f"/api/v1/builds/{third}/extend", json={"by": 3600})
        assert extended.status_code == 200, extended.text
        bad = http.post(f"/api/v1/builds/{third}/extend", json={"by": "soon"})
        assert bad.status_code == 400 and "seconds" in bad.json()["errors"][0]["message"]

        deleted = http.delete(f"/api/v1/builds/{third}")
        assert deleted.status_code == 200, deleted.text
        latest = http.get(f"/v2/{pid}/manifests/latest").json()["errors"][0]["message"]
        assert latest.startswith(f"tag latest followed build {third} was deleted on ")

        history = http.get(f"/api/v1/projects/{pid}/history", params={"limit": 10}).json()["events"]
        assert [(e["action"], e["rule"], e["build_id"]) for e in history[:4]] == [
            ("evict", "manual", third),
            ("extend", "manual", third),
            ("evict", "cap", second),
            ("pin", "manual", first),
        ]

        usage = http.get(f"/api/v1/projects/{pid}/usage").json()
        assert usage["stored_bytes"] > 400 and usage["price_per_gb_month"] == 0.20
        assert http.get(f"/api/v1/projects/{pid}/usage", params={"month": "June"}).status_code == 400

        dry = http.post("/api/v1/gc", json={"dry_run": True})
        assert dry.status_code == 200 and dry.json()["dry_run"] is True
        assert dry.json()["blobs_deleted"] == 0  # everything is inside the 1-hour grace window

        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        text = metrics.text
        assert f'cargohold_project_stored_bytes{{project="{pid}"}}' in text
        assert 'cargohold_builds_evicted_total{rule="cap"} 1.0' in text
        assert 'cargohold_http_requests_total{method="PUT",route="manifest",status="201"}' in text
        assert 'route="/api/v1/builds/{build}/save"' in text
        assert pid not in text.replace(f'project="{pid}"', "")  # no raw paths in labels
        assert 'cargohold_gc_runs_total{result="ok"} 1.0' in text

    with server.anonymous() as anonymous:
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.post("/api/v1/gc", json={}).status_code == 401


def test_tag_routes_check_access_and_input(server: InProcessServer) -> None:
    with server.client() as http:
        pid = http.post("/api/v1/projects", json={"name": "tags"}).json()["id"]
        other = http.post("/api/v1/projects", json={"name": "other"}).json()["id"]
        build = _save(http, pid, [b"built"], "b")
        assert push_image(http, f"{pid}/web", "1.0", [b"web"], "w").status_code == 201  # type: ignore[attr-defined]
        tokens = {
            kind: http.post("/api/v1/tokens", json={"kind": "pull", "name": kind, **scope}).json()["token"]
            for kind, scope in (("pull", {"project_id": pid}), ("build", {"build_id": build}))
        }
        foreign = http.post("/api/v1/tokens", json={"kind": "project", "name": "f", "project_id": other}).json()
        tokens["foreign"] = foreign["token"]

        listed = http.get(f"/api/v1/projects/{pid}/tags")
        assert listed.status_code == 200 and [t["tag"] for t in listed.json()["tags"]] == ["1.0"]
        body = {"repository": f"{pid}/web", "tag": "1.0"}
        for path, payload, status, fragment in [
            (f"/api/v1/projects/{pid}/tags/pin", {"repository": f"{other}/web", "tag": "1.0"}, 400, "not in project"),
            (f"/api/v1/projects/{pid}/tags/pin", {"repository": f"{pid}/web", "tag": ".bad"}, 400, '"tag"'),
            (f"/api/v1/projects/{pid}/tags/pin", {"repository": f"{pid}/web", "tag": "nope"}, 404, "does not exist"),
            (f"/api/v1/projects/{pid}/tags/pin", {"tag": build}, 409, f"cargohold builds pin {build}"),
            (f"/api/v1/projects/{pid}/tags/extend", {**body, "by": "soon"}, 400, "seconds"),
            (f"/api/v1/projects/{pid}/tags/extend", {**body, "by": -5}, 409, "positive"),
            (f"/api/v1/projects/{pid}/tags/extend", {**body, "by": 1e20}, 400, "at most"),
        ]:
            answer = http.post(path, json=payload)
            assert answer.status_code == status, (payload, answer.text)
            assert fragment in answer.json()["errors"][0]["message"], answer.text
        assert http.get(f"/api/v1/projects/{pid}/tags", params={"after": "no-colon"}).status_code == 400
        assert http.get(f"/api/v1/projects/{pid}/tags", params={"limit": "many"}).status_code == 400
        assert http.get("/api/v1/projects/zzzzzzzzzz/tags").status_code == 404

    with server.client(tokens["pull"]) as reader:
        assert [t["tag"] for t in reader.get(f"/api/v1/projects/{pid}/tags").json()["tags"]] == ["1.0"]
        assert reader.post(f"/api/v1/projects/{pid}/tags/pin", json=body).status_code == 403
    with server.client(tokens["build"]) as scoped:
        refused = scoped.get(f"/api/v1/projects/{pid}/tags")
        assert refused.status_code == 403 and f"limited to build {build}" in refused.text
    with server.client(tokens["foreign"]) as stranger:
        assert stranger.get(f"/api/v1/projects/{pid}/tags").status_code == 404
        assert stranger.post(f"/api/v1/projects/{pid}/tags/pin", json=body).status_code == 404
    with server.anonymous() as anonymous:
        assert anonymous.get(f"/api/v1/projects/{pid}/tags").status_code == 401


BUILD_KEYS = {
    "id",
    "project_id",
    "status",
    "created_at",
    "saved_at",
    "expires_at",
    "pinned",
    "digest",
    "media_type",
    "platforms",
    "targets",
    "total_size",
    "unique_size",
    "provenance",
    "failure",
    "created_by",
    "save_tags",
    "reference",
}


def test_pin_unpin_extend_answer_the_same_build_shape_as_get(server: Server) -> None:
    """One rendering of a build: the lifecycle routes answer exactly what GET /api/v1/builds/{id} answers."""
    with server.client() as http:
        pid = http.post("/api/v1/projects", json={"name": "shape"}).json()["id"]
        build = _save(http, pid, [b"shape" * 50], "s", ["latest"])
        for route, body in (("pin", None), ("unpin", None), ("extend", {"by": 60})):
            answered = http.post(f"/api/v1/builds/{build}/{route}", json=body)
            assert answered.status_code == 200, answered.text
            shown = http.get(f"/api/v1/builds/{build}").json()
            assert set(answered.json()) == BUILD_KEYS and answered.json() == shown, route
        assert shown["save_tags"] == ["latest"] and shown["reference"].endswith(f"/{pid}:{build}")
