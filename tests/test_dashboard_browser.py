"""The dashboard in a real browser (Debian's Chromium via Playwright, tests/browser.py): sign in, find a build
saved by the real CLI, pin it and see its expiry change, copy the pull command, sign out; a pull token for one
build sees only that build; a form whose CSRF token was tampered with changes nothing.

Failure screenshots at desktop and phone width land in test-artifacts/ (the ``browser_page`` fixture).
Kept to a few tests: each one is a couple of seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from cargohold.sample import write_sample_index
from control_helpers import api, new_project
from servers import InProcessServer, module_server

server = module_server()


@pytest.fixture(scope="module", name="saved")
def saved_fixture(server: InProcessServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """``(project ID, build ID)`` of a multi-platform image saved by ``cargohold save`` (a real subprocess)."""
    project = new_project(server, "browser")
    with api(server) as control:
        token = control.create_token("project", "ci", project_id=project.id).token
    tmp = tmp_path_factory.mktemp("cli")
    layout = tmp / "layout"
    write_sample_index(layout, layers=1, layer_size=4096, seed=3, ref="v1", attestations=True)
    env = {
        **os.environ,
        "CARGOHOLD_REGISTRY": server.url,
        "CARGOHOLD_TOKEN": token,
        "CARGOHOLD_PROJECT_ID": project.id,
        "XDG_CONFIG_HOME": str(tmp / "xdg"),
        "CI": "true",
    }
    saved = subprocess.run(
        [sys.executable, "-m", "cargohold", "save", f"oci:{layout}:v1", "--save-tag", "main", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert saved.returncode == 0, saved.stderr
    return project.id, str(json.loads(saved.stdout)["build_id"])


def sign_in(page: Page, server: InProcessServer, token: str) -> None:
    page.goto(f"{server.url}/")
    expect(page).to_have_url(f"{server.url}/ui/sign-in?next=%2Fui%2Fprojects")
    page.get_by_label("Cargohold token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()


def test_sign_in_browse_pin_copy_and_sign_out(
    browser_page: Page, server: InProcessServer, saved: tuple[str, str]
) -> None:
    page = browser_page
    project_id, build_id = saved
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    sign_in(page, server, server.admin_token or "")
    page.get_by_role("link", name="browser").click()
    row = page.get_by_role("row").filter(has_text=build_id)
    expect(row).to_contain_text("main")
    expect(row).to_contain_text("linux/amd64")
    page.get_by_role("link", name=build_id).click()
    expect(page.get_by_role("heading", name=f"Build {build_id}")).to_be_visible()
    expect(page.locator("#pinned")).to_have_text("no")
    # The CLI saved an index: two platforms, each with its layers, and BuildKit's attestations apart from them.
    expect(page.get_by_role("heading", name="Index")).to_be_visible()
    expect(page.get_by_role("heading", name="linux/amd64")).to_be_visible()
    expect(page.get_by_role("heading", name="linux/arm64")).to_be_visible()
    expect(page.get_by_role("cell", name="attestation of sha256:").first).to_be_visible()
    expect(page.get_by_role("heading", name="unknown/unknown")).to_have_count(0)
    before = page.locator("#expires").inner_text()
    assert "(in " in before

    page.get_by_role("button", name=f"Pin build {build_id}").click()
    expect(page.locator("#pinned")).to_have_text("yes")
    expect(page.locator("#expires")).to_have_text("never (pinned)")

    page.get_by_role("button", name="Copy the cargohold pull command").click()
    expect(page.locator("body")).to_have_attribute("data-copied", f"cargohold pull {build_id}")
    assert page.evaluate("navigator.clipboard.readText()") == f"cargohold pull {build_id}"

    page.set_viewport_size({"width": 390, "height": 844})  # phone width: still usable, nothing hidden
    for path in (f"/ui/builds/{build_id}", f"/ui/projects/{project_id}/builds"):
        page.goto(f"{server.url}{path}")
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
    page.keyboard.press("Tab")  # the first stop is the skip link, visible when focused
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(f"{server.url}/ui/builds/{build_id}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_pull_token_sees_only_its_build_and_a_forged_form_is_refused(
    browser_page: Page, server: InProcessServer, saved: tuple[str, str]
) -> None:
    page = browser_page
    project_id, build_id = saved
    with api(server) as control:
        other = control.create_build(project_id).build_id
        pull = control.create_token("pull", "one build", project_id=project_id, build_id=build_id).token
    sign_in(page, server, pull)
    page.goto(f"{server.url}/ui/projects/{project_id}/builds")
    expect(page.get_by_role("link", name=build_id)).to_be_visible()
    expect(page.get_by_role("link", name=other)).to_have_count(0)
    page.goto(f"{server.url}/ui/builds/{other}")
    expect(page.get_by_role("heading", name="404")).to_be_visible()

    # As an admin, a pin form whose CSRF token was tampered with is refused and changes nothing.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, server, server.admin_token or "")
    page.goto(f"{server.url}/ui/projects/{project_id}/builds")
    with api(server) as control:
        before = control.get_build(build_id).pinned
    form = page.locator(f'form[action="/ui/builds/{build_id}/unpin"], form[action="/ui/builds/{build_id}/pin"]')
    form.locator('input[name="csrf"]').evaluate("element => { element.value = 'forged' }")
    form.get_by_role("button").click()
    expect(page.get_by_role("heading", name="403")).to_be_visible()
    with api(server) as control:
        assert control.get_build(build_id).pinned is before
    page.goto(f"{server.url}/ui/builds/{build_id}")
    expect(page.locator("#pinned")).to_have_text("yes" if before else "no")


def test_artifacts_are_ignored_by_git() -> None:
    assert "/test-artifacts/" in (Path(__file__).resolve().parent.parent / ".gitignore").read_text()
