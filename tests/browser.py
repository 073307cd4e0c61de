"""A headless Chromium for real-browser tests: Debian's Chromium driven by Playwright, kept off the network.

Why Playwright (measured in bench/choices/browser_drivers.py): one browser per test module and a fresh
browser context per test (separate cookies, storage and cache for the cost of a new tab) instead of a new Chromium per
test, auto-waiting locators, and request interception, which the ``browser_page`` fixture uses to refuse and
report every request that is not for a loopback address. Playwright's own browser download is never used
(``playwright install`` is not run anywhere): ``executable_path`` points at the Debian package's binary.

Chromium is started as the real binary ``/usr/lib/chromium/chromium``, not the ``/usr/bin/chromium`` wrapper
script, because the wrapper exports Google API keys and adds ``--enable-remote-extensions``. The flags below
switch off every background service that phones home, route any non-loopback request to a closed loopback
port (an unreachable proxy) and answer every host name lookup except ``localhost`` with "not found", so that
even a page link or a feature nobody thought of cannot send a packet off this machine. Playwright adds
``--headless``, ``--no-sandbox`` (root in CI) and a private ``--user-data-dir`` it deletes afterwards.

On a test failure the ``browser_page`` fixture saves a full-page screenshot of each open page at desktop and
phone width into ``test-artifacts/<test name>/`` (or ``$CARGOHOLD_ARTIFACTS_DIR``).

Browser tests are plain (sync) test functions: Playwright's sync API refuses to run inside an asyncio loop.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tooling import tool_missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM_ENV = "CARGOHOLD_CHROMIUM"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
ARTIFACTS_ENV = "CARGOHOLD_ARTIFACTS_DIR"
ARTIFACTS_DEFAULT = Path(__file__).resolve().parent.parent / "test-artifacts"

DEAD_PROXY = "http://127.0.0.1:9"
"""The discard port on loopback: nothing listens there, so a proxied request fails at once, locally."""

LAUNCH_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    # Everything not on loopback goes to a proxy that is not there; loopback always bypasses proxies.
    f"--proxy-server={DEAD_PROXY}",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
"""Widths the dashboard must work at; failure screenshots are taken at each."""


def chromium_binary() -> str | None:
    """Debian's Chromium binary (``$CARGOHOLD_CHROMIUM`` overrides), or None when it is not installed."""
    candidates = [os.environ[CHROMIUM_ENV]] if os.environ.get(CHROMIUM_ENV) else list(CHROMIUM_CANDIDATES)
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


def is_loopback_url(url: str) -> bool:
    """True for URLs that cannot leave the machine: loopback HTTP(S)/WS and the browser's own schemes."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "about", "blob", "chrome", "chrome-error"):
        return True
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only "localhost" is known not to leave the machine
        return False


class LoopbackGuard:
    """A Playwright route handler that lets loopback requests through and refuses (and records) the rest."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def __call__(self, route: Route) -> None:
        url = route.request.url
        if is_loopback_url(url):
            route.fallback()
        else:
            self.refused.append(url)
            route.abort("blockedbyclient")


def artifacts_dir(test_name: str) -> Path:
    base = Path(os.environ.get(ARTIFACTS_ENV) or ARTIFACTS_DEFAULT)
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:150]


def save_screenshots(page: Page, directory: Path, stem: str) -> list[Path]:
    """Full-page PNGs of ``page`` at every width in VIEWPORTS (the viewport is restored afterwards)."""
    directory.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    saved = []
    try:
        for label, size in VIEWPORTS.items():
            page.set_viewport_size(size)  # type: ignore[arg-type]
            path = directory / f"{stem}-{label}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(path)
    finally:
        if original is not None:
            page.set_viewport_size(original)
    return saved


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report on the test item so fixtures can tell, at teardown, whether it failed."""
    report = yield
    setattr(item, f"cargohold_report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"cargohold_report_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture(scope="module", name="chromium_browser")
def chromium_browser_fixture() -> Iterator[Browser]:
    """One headless Chromium per test module (start-up ~1-2 s), closed when the module is done.

    Not per session: while Playwright's sync API is active it leaves its event loop registered as the running
    loop of the main thread, and every asyncio test that runs after it fails with "Runner.run() cannot be
    called from a running event loop". Closing it at the end of each browser test module keeps the rest of
    the suite unaffected.
    """
    binary = chromium_binary()
    if binary is None:
        tool_missing("needs Chromium (Debian: apt-get install chromium; or set CARGOHOLD_CHROMIUM to its binary)")
    if importlib.util.find_spec("playwright") is None:
        tool_missing("needs Playwright for Python: pip install -e '.[test]' (never 'playwright install')")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=LAUNCH_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(name="browser_page")
def browser_page_fixture(chromium_browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh browser context (own cookies and storage), at desktop size.

    Every non-loopback request is refused; the test fails at teardown if the page attempted any. On failure,
    each open page of the context is saved as screenshots at desktop and phone width.
    """
    context_options: dict[str, Any] = {"viewport": VIEWPORTS["desktop"], "service_workers": "block"}
    context = chromium_browser.new_context(**context_options)
    guard = LoopbackGuard()
    context.route("**/*", guard)
    page = context.new_page()
    try:
        yield page
        if _failed(request):
            directory = artifacts_dir(request.node.nodeid)
            saved = [
                path
                for number, open_page in enumerate(context.pages)
                for path in save_screenshots(open_page, directory, f"page{number}")
            ]
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"screenshots of the failed test: {', '.join(map(str, saved))}")
    finally:
        context.close()
    if guard.refused:
        pytest.fail(f"the page tried to reach non-loopback addresses: {guard.refused}", pytrace=False)
