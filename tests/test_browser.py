"""Self-tests of the headless Chromium fixtures (tests/browser.py)."""

from __future__ import annotations

import http.server
import os
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import is_loopback_url

PAGE = b"""<!doctype html><title>builds</title>
<button id="pin" onclick="document.getElementById('state').textContent = 'pinned'">Pin</button>
<p id="state">unpinned</p>"""

# What happens to requests for non-loopback addresses is tested inside a private network namespace, where no
# packet can leave the machine even if both defences broke: tests/test_offline.py.


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module", name="site")
def site_fixture() -> Iterator[str]:
    """A tiny site on loopback, one origin for the whole module (so storage could leak between tests)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    return struct.unpack(">I", data[16:20])[0]


def test_page_loads_clicks_and_screenshots(browser_page: object, site: str, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(browser_page, Page)
    browser_page.goto(site)
    browser_page.click("#pin")
    expect(browser_page.locator("#state")).to_have_text("pinned")
    browser_page.screenshot(path=str(tmp_path / "shot.png"))
    assert _png_width(tmp_path / "shot.png") == 1280


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_a_fresh_browser_context(browser_page: object, site: str, round_: int) -> None:
    """Run twice on one origin: the second run would see the first one's storage and cookie if shared."""
    from playwright.sync_api import Page

    assert isinstance(browser_page, Page)
    browser_page.goto(site)
    assert browser_page.evaluate("[localStorage.getItem('seen'), document.cookie]") == [None, ""]
    browser_page.evaluate(f"localStorage.setItem('seen', '{round_}'); document.cookie = 'seen={round_}'")


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:5000/ui/", True),
        ("http://localhost/", True),
        ("http://[::1]:8080/", True),
        ("data:text/html,hi", True),
        ("http://127.0.0.1.example.com/", False),
        ("https://fonts.googleapis.com/css", False),
        ("http://10.0.0.1/", False),
        ("ftp://127.0.0.1/", False),
    ],
)
def test_only_loopback_urls_count_as_loopback(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def _inner_pytest(directory: Path, files: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``files`` (name -> source) in ``directory`` with the browser fixtures as a plugin."""
    tests_dir = Path(__file__).resolve().parent
    (directory / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(tests_dir)!r})\npytest_plugins = ['browser']\n"
    )
    (directory / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    for name, source in files.items():
        (directory / name).write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *files],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


def test_a_failing_browser_test_leaves_screenshots_at_desktop_and_phone_width(tmp_path: Path) -> None:
    """A real pytest run of a failing browser test; the fixture must save both widths for it."""
    failing = """
        def test_fails(browser_page):
            browser_page.set_content("<h1>the dashboard</h1>")
            assert False, "deliberate"
        """
    artifacts = tmp_path / "artifacts"
    proc = _inner_pytest(tmp_path, {"test_failing.py": failing}, {"CARGOHOLD_ARTIFACTS_DIR": str(artifacts)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deliberate" in proc.stdout
    shots = sorted(artifacts.rglob("*.png"))
    assert [path.name for path in shots] == ["page0-desktop.png", "page0-phone.png"], proc.stdout
    assert [_png_width(path) for path in shots] == [1280, 390]
    assert "screenshots of the failed test" in proc.stdout


def test_asyncio_tests_after_a_browser_module_still_run(tmp_path: Path) -> None:
    """Playwright's sync API claims the main thread's event loop while it is open; it must be closed by then."""
    browser_module = """
        def test_page(browser_page):
            browser_page.set_content("<p>hi</p>")
        """
    async_module = """
        import asyncio

        async def test_sleep():
            await asyncio.sleep(0)
        """
    proc = _inner_pytest(tmp_path, {"test_a_browser.py": browser_module, "test_b_async.py": async_module}, {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
