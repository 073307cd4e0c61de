"""The web dashboard's views (cargohold.server.ui) against a real in-process server: sessions, CSRF,
security headers, escaping, visibility per credential kind, pagination and filters.

Real-browser tests (Chromium) are in test_dashboard_browser.py.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path

import markupsafe
import pytest

from control_helpers import api, fresh_address, http, new_project
from dashboard_helpers import Browser, save_build
from protocol_helpers import descriptor, digest_of, image_manifest, push_blob, push_manifest, to_bytes
from servers import InProcessServer, module_server, running

server = module_server()


def test_root_redirects_to_the_dashboard_and_pages_need_a_session(server: InProcessServer) -> None:
    with Browser(server) as browser:
        root = browser.client.get("/")
        assert root.status_code == 302 and root.headers["Location"] == "/ui/"
        projects = browser.client.get("/ui/projects")
        assert projects.status_code == 303
        assert projects.headers["Location"].startswith("/ui/sign-in?next=")
        page = browser.get("/ui/sign-in")
        assert page.status_code == 200
        assert "cargohold tokens create" in page.text and "cargohold login" in page.text
        assert '<label for="token">' in page.text


def test_every_page_carries_the_security_headers(server: InProcessServer) -> None:
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        for path in ("/ui/sign-in", "/ui/projects", "/ui/tokens"):
            headers = browser.get(path).headers
            csp = headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["Referrer-Policy"] == "no-referrer"
            assert headers["Cache-Control"] == "no-store"
        unknown = browser.get("/ui/no/such/page")
        assert unknown.status_code == 404 and unknown.headers["Content-Type"].startswith("text/html")
        assert unknown.headers["X-Frame-Options"] == "DENY"
        css = browser.client.get("/ui/static/dashboard.css")
        assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
        assert "max-age" in css.headers["Cache-Control"]
        assert browser.client.get("/ui/static/..%2Fsessions.py").status_code == 404


def test_sign_in_sets_a_strict_http_only_session_cookie_and_never_echoes_the_token(server: InProcessServer) -> None:
    token = server.admin_token or ""
    with Browser(server) as browser:
        response = browser.sign_in(token)
        assert response.status_code == 303 and response.headers["Location"] == "/ui/projects"
        cookie = response.headers["Set-Cookie"]
        assert "cargohold_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Path=/ui/" in cookie and "Secure" not in cookie  # plain HTTP here
        assert token not in cookie and token not in response.headers["Location"]
        for path in ("/ui/projects", "/ui/tokens"):
            assert token not in browser.get(path).text


def test_a_bad_token_is_refused_and_failures_share_the_api_rate_limit(server: InProcessServer) -> None:
    address = fresh_address()
    with Browser(server, address) as browser:
        refused = browser.sign_in("cha_notatoken")
        assert refused.status_code == 401 and "Not signed in" in refused.text
        assert "Set-Cookie" not in refused.headers
        statuses = [browser.sign_in("cha_notatoken").status_code for _ in range(12)]
        assert statuses[-1] == 429
        # The same bucket as the API: a correct token from that address now waits too, on either side.
        assert browser.sign_in(server.admin_token or "").status_code == 429
        assert browser.client.get("/api/v1/whoami", headers={"Authorization": "Bearer x"}).status_code == 429


def test_sign_out_ends_the_session_on_the_server(server: InProcessServer) -> None:
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        cookie = browser.client.cookies.get("cargohold_session")
        assert browser.get("/ui/projects").status_code == 200
        out = browser.post("/ui/sign-out")
        assert out.status_code == 303 and out.headers["Location"] == "/ui/sign-in"
        # The old cookie, replayed, is worthless: the session is gone from the database.
        with Browser(server) as replay:
            replay.client.cookies.set("cargohold_session", cookie or "", path="/ui/")
            assert replay.client.get("/ui/projects").status_code == 303


def test_a_mutation_without_the_sessions_csrf_token_is_refused(server: InProcessServer) -> None:
    project = new_project(server, "csrf")
    build = save_build(server, project.id)
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        browser.get(f"/ui/builds/{build}")
        missing = browser.post(f"/ui/builds/{build}/pin", csrf=False)
        wrong = browser.post(f"/ui/builds/{build}/pin", {"csrf": "x" * 43}, csrf=False)
        assert missing.status_code == 403 and wrong.status_code == 403
        with api(server) as control:
            assert control.get_build(build).pinned is False
        # Another session's token is no good either: the token is tied to its session.
        with Browser(server) as other:
            other.sign_in(server.admin_token or "")
            other.get(f"/ui/builds/{build}")
            assert browser.post(f"/ui/builds/{build}/pin", {"csrf": other.csrf}, csrf=False).status_code == 403
        assert browser.post(f"/ui/builds/{build}/pin").status_code == 303
        with api(server) as control:
            assert control.get_build(build).pinned is True


def test_pin_unpin_extend_and_delete_with_confirmation(server: InProcessServer) -> None:
    project = new_project(server, "actions")
    build = save_build(server, project.id)
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        page = browser.get(f"/ui/builds/{build}").text
        assert 'id="pinned">no' in page
        with api(server) as control:
            before = control.get_build(build).expires_at
        assert browser.post(f"/ui/builds/{build}/extend", {"by": "7d"}).status_code == 303
        with api(server) as control:
            after = control.get_build(build).expires_at
        assert before is not None and after is not None
        assert (_moment(after) - _moment(before)).days == 7
        assert browser.post(f"/ui/builds/{build}/extend", {"by": "999y"}).status_code == 400
        browser.post(f"/ui/builds/{build}/pin")
        assert 'id="pinned">yes' in browser.get(f"/ui/builds/{build}").text
        browser.post(f"/ui/builds/{build}/unpin")
        assert 'id="pinned">no' in browser.get(f"/ui/builds/{build}").text
        unconfirmed = browser.post(f"/ui/builds/{build}/delete", {"confirm": "yes"})
        assert unconfirmed.status_code == 400 and build in unconfirmed.text
        assert browser.get(f"/ui/builds/{build}").status_code == 200
        deleted = browser.post(f"/ui/builds/{build}/delete", {"confirm": build})
        assert deleted.status_code == 303 and deleted.headers["Location"] == f"/ui/projects/{project.id}/builds"
        assert browser.get(f"/ui/builds/{build}").status_code == 404


def _moment(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_hostile_labels_are_escaped_and_env_values_never_shown(server: InProcessServer) -> None:
    project = new_project(server, "escaping")
    build = save_build(
        server,
        project.id,
        labels={HOSTILE: HOSTILE, "org.opencontainers.image.source": "https://example.invalid/repo"},
        env=["API_KEY=hunter2-secret-value", f"ODD={HOSTILE}", "PATH=/usr/bin"],
        save_tags=["release-1.0"],
    )
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        page = browser.get(f"/ui/builds/{build}").text
        assert HOSTILE not in page and "<script>alert" not in page
        assert str(markupsafe.escape(HOSTILE)) in page  # shown, as text
        assert "API_KEY" in page and "PATH" in page and "ODD" in page
        assert "hunter2-secret-value" not in page
        assert "/bin/app --serve" in page
        assert f"cargohold pull {build}" in page
        assert f"docker pull {server.host}/{project.id}:{build}" in page
        assert f"cargohold push {build}" in page
        assert "release-1.0" in page
        listing = browser.get(f"/ui/projects/{project.id}/builds?q={html.escape(HOSTILE)}")
        assert listing.status_code == 200 and "<script>alert" not in listing.text


def test_builds_page_paginates_by_key_newest_first_and_filters(server: InProcessServer) -> None:
    project = new_project(server, "pages")
    with api(server) as control:
        pending = [control.create_build(project.id).build_id for _ in range(5)]
    saved = save_build(server, project.id, save_tags=["stable"])
    newest_first = [saved, *reversed(pending)]
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        seen: list[str] = []
        url = f"/ui/projects/{project.id}/builds?limit=2"
        while url:
            page = browser.get(url).text
            seen += [b for b in newest_first if f'/ui/builds/{b}"' in page and b not in seen]
            marker = 'rel="next"'
            if marker not in page:
                break
            href = page.split(marker)[0].rsplit('href="', 1)[1].split('"', 1)[0]
            url = f"/ui/projects/{project.id}/builds" + html.unescape(href)
            assert "before=" in url and "limit=2" in url
        assert seen == newest_first
        only_saved = browser.get(f"/ui/projects/{project.id}/builds?status=saved").text
        assert saved in only_saved and not any(b in only_saved for b in pending)
        tagged = browser.get(f"/ui/projects/{project.id}/builds?tag=stable").text
        assert saved in tagged and pending[0] not in tagged
        by_text = browser.get(f"/ui/projects/{project.id}/builds?q={pending[2][3:8].upper()}").text
        assert pending[2] in by_text and saved not in by_text
        assert browser.get(f"/ui/projects/{project.id}/builds?pinned=yes").text.count("/ui/builds/") == 0
        assert browser.get(f"/ui/projects/{project.id}/builds?status=bogus").status_code == 400


def test_a_build_scoped_pull_token_sees_only_its_build(server: InProcessServer) -> None:
    project = new_project(server, "scoped")
    mine = save_build(server, project.id, salt="mine")
    other = save_build(server, project.id, salt="other")
    hidden = new_project(server, "hidden")
    with api(server) as control:
        token = control.create_token("pull", "scoped", project_id=project.id, build_id=mine).token
    with Browser(server) as browser:
        assert browser.sign_in(token).status_code == 303
        projects = browser.get("/ui/projects").text
        assert project.id in projects and hidden.id not in projects and "limited to build" in projects
        listing = browser.get(f"/ui/projects/{project.id}/builds").text
        assert mine in listing and other not in listing
        assert browser.get(f"/ui/builds/{mine}").status_code == 200
        assert browser.get(f"/ui/builds/{other}").status_code == 404
        assert browser.get(f"/ui/projects/{project.id}/usage").status_code == 403
        assert browser.get(f"/ui/projects/{project.id}/tags").status_code == 403
        assert browser.get(f"/ui/projects/{hidden.id}/builds").status_code == 404
        assert f'action="/ui/builds/{mine}/pin"' not in browser.get(f"/ui/builds/{mine}").text
        browser.get(f"/ui/builds/{mine}")
        assert browser.post(f"/ui/builds/{mine}/pin").status_code == 403


def test_a_project_pull_token_reads_but_cannot_change(server: InProcessServer) -> None:
    project = new_project(server, "reader")
    build = save_build(server, project.id)
    with api(server) as control:
        token = control.create_token("pull", "reader", project_id=project.id).token
    with Browser(server) as browser:
        browser.sign_in(token)
        assert build in browser.get(f"/ui/projects/{project.id}/builds").text
        assert browser.get(f"/ui/projects/{project.id}/usage").status_code == 200
        browser.get(f"/ui/builds/{build}")
        assert browser.post(f"/ui/builds/{build}/pin").status_code == 403
        assert browser.post(f"/ui/builds/{build}/delete", {"confirm": build}).status_code == 403
        assert browser.post("/ui/projects", {"name": "nope"}).status_code == 403


def test_revoking_the_token_ends_its_sessions(server: InProcessServer) -> None:
    project = new_project(server, "revoke")
    with api(server) as control:
        created = control.create_token("pull", "reader", project_id=project.id)
    with Browser(server) as browser:
        browser.sign_in(created.token)
        assert browser.get("/ui/projects").status_code == 200
        with api(server) as control:
            control.revoke_token(created.id)
        assert browser.client.get("/ui/projects").status_code == 303


def test_tokens_page_creates_shows_once_and_revokes_with_lineage(server: InProcessServer) -> None:
    project = new_project(server, "tokens")
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        browser.get("/ui/tokens")
        created = browser.post("/ui/tokens", {"kind": "project", "name": "ci <b>", "project_id": project.id})
        assert created.status_code == 201 and "copy it now" in created.text
        token = created.text.split('data-copy="', 1)[1].split('"', 1)[0]
        assert token.startswith("chp_") and "ci &lt;b&gt;" in created.text
        with Browser(server) as child:
            child.sign_in(token)
            child.get("/ui/tokens")
            minted = child.post("/ui/tokens", {"kind": "pull", "name": "grandchild", "project_id": project.id})
            assert minted.status_code == 201
            assert f'href="/ui/tokens?project={project.id}"' in child.get("/ui/tokens").text
            listing = child.get(f"/ui/tokens?project={project.id}").text
            assert "grandchild" in listing and "↳" in listing  # shown under its parent
        page = browser.get(f"/ui/tokens?project={project.id}").text
        assert token not in page  # shown once, never again
        token_id = page.split("ci &lt;b&gt;", 1)[1].split("<code>", 1)[1].split("</code>", 1)[0]
        assert browser.post(f"/ui/tokens/{token_id}/revoke").status_code == 303
        assert "revoked" in browser.get(f"/ui/tokens?project={project.id}&all=1").text


def test_projects_usage_tags_and_audit_pages(server: InProcessServer) -> None:
    project = new_project(server, "overview")
    build = save_build(server, project.id, save_tags=["main"])
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        browser.get(f"/ui/projects/{project.id}/builds")
        browser.post(f"/ui/builds/{build}/pin")
        projects = browser.get("/ui/projects").text
        assert "overview" in projects and "GB-months" in projects
        usage = browser.get(f"/ui/projects/{project.id}/usage").text
        assert "<svg" in usage and "<rect" in usage and build in usage and "Free allowance" in usage
        with http(server, server.admin_token) as admin:
            config = to_bytes({"architecture": "amd64", "os": "linux"}, pretty=False)
            push_blob(admin, f"{project.id}/web", config)
            manifest = image_manifest(descriptor("application/vnd.oci.image.config.v1+json", config), [])
            push_manifest(
                admin, f"{project.id}/web", "1.0", to_bytes(manifest), "application/vnd.oci.image.manifest.v1+json"
            )
        tags = browser.get(f"/ui/projects/{project.id}/tags").text
        assert f"<code>{project.id}</code></li>" in tags and f"<code>{project.id}/web</code></li>" in tags
        assert f'<code>{project.id}/web</code></td><th scope="row"><code>1.0</code></th>' in tags  # outside builds
        audit = browser.get(f"/ui/projects/{project.id}/audit?action=pin").text
        assert build in audit and "admin:" in audit
        created = browser.post("/ui/projects", {"name": "made in the dashboard"})
        assert created.status_code == 303 and created.headers["Location"].endswith("/builds")


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/ui/", "/api/v1/whoami"])
def test_sign_in_redirects_only_inside_the_dashboard(server: InProcessServer, target: str) -> None:
    with Browser(server) as browser:
        response = browser.client.post("/ui/sign-in", data={"token": server.admin_token or "", "next": target})
        assert response.status_code == 303 and response.headers["Location"] == "/ui/projects"


def test_the_cookie_is_secure_when_the_browser_came_over_https_through_a_trusted_proxy(tmp_path: Path) -> None:
    proxied = InProcessServer(data_dir=tmp_path / "data", settings={"trusted_proxies": ("127.0.0.0/8",)})
    with running(proxied) as started, Browser(started) as browser:
        forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        response = browser.client.post("/ui/sign-in", data={"token": proxied.admin_token or ""}, headers=forwarded)
        assert response.status_code == 303 and "Secure" in response.headers["Set-Cookie"]
        plain = browser.client.post("/ui/sign-in", data={"token": proxied.admin_token or ""})
        assert "Secure" not in plain.headers["Set-Cookie"]


def test_a_client_cannot_claim_https_for_itself(server: InProcessServer) -> None:
    """Without trusted proxies, X-Forwarded-Proto is ignored: the cookie follows the real connection."""
    with Browser(server) as browser:
        response = browser.client.post(
            "/ui/sign-in", data={"token": server.admin_token or ""}, headers={"X-Forwarded-Proto": "https"}
        )
        assert response.status_code == 303 and "Secure" not in response.headers["Set-Cookie"]


def test_admins_add_and_remove_trust_relationships_others_do_not_see_them(server: InProcessServer) -> None:
    project = new_project(server, "trusting")
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        browser.get("/ui/projects")
        added = browser.post("/ui/trust", {"project": project.id, "repository": "Acme/App", "workflow": "ci.yml"})
        assert added.status_code == 303
        with api(server) as control:
            (trust,) = control.list_trust(project.id)
        assert (trust.owner, trust.repository, trust.workflow) == ("acme", "app", ".github/workflows/ci.yml")
        assert "acme/app (.github/workflows/ci.yml)" in browser.get("/ui/projects").text
        assert browser.post("/ui/trust", {"project": project.id, "repository": "no-slash"}).status_code == 400
        assert browser.post(f"/ui/projects/{project.id}/trust/{trust.id}/delete").status_code == 303
        with api(server) as control:
            assert control.list_trust(project.id) == []
    with api(server) as control:
        control.add_trust(project.id, repository="acme/other")
        reader = control.create_token("pull", "reader", project_id=project.id).token
    with Browser(server) as browser:
        browser.sign_in(reader)
        page = browser.get("/ui/projects").text
        assert "acme/other" not in page and "admins only" in page  # the API shows trust to admins only
        assert browser.post("/ui/trust", {"project": project.id, "repository": "a/b"}).status_code == 403


def test_hostile_paths_and_queries_are_escaped_in_error_pages(server: InProcessServer) -> None:
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        missing = browser.get("/ui/builds/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        assert missing.status_code == 404 and "<script>alert(1)" not in missing.text
        assert "&lt;script&gt;" in missing.text
        project = new_project(server, "hostile-query")
        bad_tag = browser.get(f"/ui/projects/{project.id}/builds", params={"tag": "<b>x</b>"})
        assert bad_tag.status_code == 400 and "<b>x</b>" not in bad_tag.text


def test_who_shows_the_ci_run_recorded_with_the_build(server: InProcessServer) -> None:
    project = new_project(server, "who")
    with api(server) as control:
        build = control.create_build(
            project.id, provenance={"repository": "acme/app", "workflow": "release", "run_id": "4242"}
        ).build_id
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        page = browser.get(f"/ui/projects/{project.id}/builds").text
        assert "acme/app · release · run 4242" in page and "reported by client" in page
        assert build in page


def test_a_sign_in_posted_from_another_site_is_refused(server: InProcessServer) -> None:
    """Login CSRF: another site must not sign a visitor in as the attacker (browsers send Sec-Fetch-Site)."""
    with Browser(server) as browser:
        forged = browser.client.post(
            "/ui/sign-in", data={"token": server.admin_token or ""}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert forged.status_code == 403 and "Set-Cookie" not in forged.headers


def test_build_detail_lists_referrers_of_the_image(server: InProcessServer) -> None:
    project = new_project(server, "referrers")
    build = save_build(server, project.id)
    with api(server) as control:
        digest = control.get_build(build).digest
        assert digest is not None
    signature = b'{"critical": "signed"}'
    with http(server, server.admin_token) as admin:
        push_blob(admin, project.id, signature)
        push_blob(admin, project.id, b"{}")
        manifest_bytes = admin.get(
            f"/v2/{project.id}/manifests/{digest}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
        ).content
        referrer = image_manifest(
            {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
            [descriptor("application/vnd.dev.cosign.simplesigning.v1+json", signature)],
            artifact_type="application/vnd.dev.cosign.artifact.sig.v1+json",
            subject=descriptor("application/vnd.oci.image.manifest.v1+json", manifest_bytes),
        )
        push_manifest(admin, project.id, "sig", to_bytes(referrer), "application/vnd.oci.image.manifest.v1+json")
    with Browser(server) as browser:
        browser.sign_in(server.admin_token or "")
        page = browser.get(f"/ui/builds/{build}").text
        assert "application/vnd.dev.cosign.artifact.sig.v1+json" in page
        assert digest_of(to_bytes(referrer)) in page


def test_the_api_filters_builds_as_the_dashboard_does(server: InProcessServer) -> None:
    project = new_project(server, "api-filters")
    with api(server) as control:
        pending = control.create_build(project.id).build_id
    saved = save_build(server, project.id)
    with http(server, server.admin_token) as admin:
        path = f"/api/v1/projects/{project.id}/builds"

        def ids(**query: str) -> list[str]:
            response = admin.get(path, params=query)
            assert response.status_code == 200, response.text
            return [build["id"] for build in response.json()["builds"]]

        assert ids(status="saved") == [saved] and ids(status="pending") == [pending]
        assert ids(pinned="false") == [saved, pending] and ids(pinned="true") == []
        assert ids(q=pending[1:6]) == [pending]
        assert admin.get(path, params={"status": "gone"}).status_code == 400
        assert admin.get(path, params={"pinned": "maybe"}).status_code == 400
        assert admin.get(path, params={"q": "x" * 41}).status_code == 400
