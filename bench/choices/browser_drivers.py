"""Which browser driver for the dashboard's real-browser tests: Playwright vs Selenium, measured.

Both drive Debian's Chromium (``/usr/lib/chromium/chromium``) with the off-network flags of tests/browser.py;
Playwright through its bundled driver (``executable_path``; ``playwright install`` is never run), Selenium
through Debian's ``chromedriver``. Each runs in a fresh child process against a page served on loopback by that
same process, and, when run as root, inside a private network namespace whose only way out is a counting trap
(tests/netns.py): the run proves that the library works with no network at all and reports how many packets
it tried to send off the machine.

Measured: import time; cold start (driver process + browser up and a first page shown); the median round trip
of "load page, click, wait for the page's reaction, screenshot"; the median cost of a fresh isolated session
for the next test (Playwright: a new browser context; Selenium: a new WebDriver session, i.e. a new browser,
since it has no cheaper isolation); peak memory of the Python process; installed size.

    python bench/choices/browser_drivers.py [--rounds 10]

It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import footprint, peak_rss_mib, print_table

PAGE = b"""<!doctype html><html><head><title>ready</title><style>
body{font-family:sans-serif} table{border-collapse:collapse} td{border:1px solid #999;padding:4px}
</style></head><body><h1>Builds</h1><table>%s</table>
<button id="pin" onclick="document.getElementById('state').textContent='pinned'">Pin</button>
<p id="state">unpinned</p></body></html>""" % b"".join(
    b"<tr><td>build-%d</td><td>sha256:%064x</td><td>%d MiB</td></tr>" % (i, i, i) for i in range(40)
)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def run_playwright(rounds: int, shots: Path, *, bare: bool = False) -> dict[str, Any]:
    from browser import LAUNCH_ARGS, chromium_binary

    url = _serve()
    started = time.perf_counter()
    from playwright.sync_api import sync_playwright

    import_s = time.perf_counter() - started
    with sync_playwright() as playwright:
        args = [] if bare else LAUNCH_ARGS
        browser = playwright.chromium.launch(executable_path=chromium_binary(), args=args, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(url)
        cold_s = time.perf_counter() - started - import_s
        trips, contexts = [], []
        for number in range(rounds):
            begin = time.perf_counter()
            page.goto(url)
            page.click("#pin")
            page.wait_for_function("document.getElementById('state').textContent === 'pinned'")
            page.screenshot(path=str(shots / f"playwright-{number}.png"))  # the viewport, as Selenium's
            trips.append(time.perf_counter() - begin)
        for _ in range(max(3, rounds // 2)):
            begin = time.perf_counter()
            context.close()
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(url)
            contexts.append(time.perf_counter() - begin)
        version = browser.version
        browser.close()
    return {
        "import_ms": import_s * 1e3,
        "cold_ms": cold_s * 1e3,
        "trip_ms": _median_ms(trips),
        "isolate_ms": _median_ms(contexts),
        "browser": version,
    }


def run_selenium(rounds: int, shots: Path) -> dict[str, Any]:
    from browser import LAUNCH_ARGS, chromium_binary

    # Selenium Manager (a bundled binary) would otherwise look for drivers online and send usage statistics.
    os.environ.update({"SE_OFFLINE": "true", "SE_AVOID_STATS": "true"})
    url = _serve()
    started = time.perf_counter()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import_s = time.perf_counter() - started

    def session() -> Any:
        profile = tempfile.mkdtemp(prefix="cargohold-selenium-")  # a fresh profile: the test's isolation
        options = webdriver.ChromeOptions()
        options.binary_location = chromium_binary() or ""
        for argument in ["--headless", "--no-sandbox", f"--user-data-dir={profile}", *LAUNCH_ARGS]:
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
        driver.set_window_size(1280, 800)
        return driver

    driver = session()
    driver.get(url)
    cold_s = time.perf_counter() - started - import_s
    trips, sessions = [], []
    for number in range(rounds):
        begin = time.perf_counter()
        driver.get(url)
        driver.find_element(By.ID, "pin").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "state").text == "pinned")
        driver.save_screenshot(str(shots / f"selenium-{number}.png"))
        trips.append(time.perf_counter() - begin)
    for _ in range(max(3, rounds // 2)):
        begin = time.perf_counter()
        driver.quit()
        driver = session()
        driver.get(url)
        sessions.append(time.perf_counter() - begin)
    version = driver.capabilities.get("browserVersion", "?")
    driver.quit()
    return {
        "import_ms": import_s * 1e3,
        "cold_ms": cold_s * 1e3,
        "trip_ms": _median_ms(trips),
        "isolate_ms": _median_ms(sessions),
        "browser": version,
    }


RUNNERS: dict[str, Callable[[int, Path], dict[str, Any]]] = {
    "playwright": run_playwright,
    "selenium": run_selenium,
    # Only Playwright's own defaults, none of tests/browser.py's flags: what Chromium tries to reach by itself.
    # Run only inside the counting namespace, where its attempts cannot leave the machine.
    "playwright-bare": lambda rounds, shots: run_playwright(rounds, shots, bare=True),
}


def orchestrate(args: argparse.Namespace) -> int:
    from netns import run_counting, unavailable_reason

    offline = unavailable_reason() is None
    if not offline:
        print(f"not isolating the runs: {unavailable_reason()}")
    rows, failed = [], False
    libraries = args.libraries + (["playwright-bare"] if offline and "playwright-bare" not in args.libraries else [])
    for library in libraries:
        if library == "playwright-bare" and not offline:
            continue
        with tempfile.TemporaryDirectory(prefix="cargohold-browserbench-") as shots:
            command = [sys.executable, __file__, "--worker", library, str(args.rounds), shots]
            if offline:
                counted = run_counting(command, timeout=600)
                proc, packets = counted.process, str(counted.packets_off_machine)
            else:
                proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
                packets = "not measured"
            if proc.returncode != 0:
                print(f"{library} FAILED:\n{proc.stdout}\n{proc.stderr[-3000:]}")
                failed = True
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            fp = footprint(library.removesuffix("-bare"))
            rows.append(
                [
                    library,
                    f"{result['import_ms']:.0f}",
                    f"{result['cold_ms']:.0f}",
                    f"{result['trip_ms']:.0f}",
                    f"{result['isolate_ms']:.0f}",
                    f"{result['rss_mib']:.0f}",
                    f"{fp.version}",
                    fp.licence,
                    f"{fp.added_mib:.1f} ({len(fp.added_packages)} pkgs)",
                    "yes" if offline else "not checked",
                    packets,
                ]
            )
    print(f"\nChromium {result.get('browser', '?') if rows else '?'}; medians of {args.rounds} round trips")
    print_table(
        [
            "library",
            "import ms",
            "cold start ms",
            "load+click+screenshot ms",
            "fresh isolated session ms",
            "peak RSS MiB (Python)",
            "version",
            "licence",
            "MiB added",
            "runs with no network",
            "packets sent off machine",
        ],
        rows,
    )
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        result = RUNNERS[sys.argv[2]](int(sys.argv[3]), Path(sys.argv[4]))
        print(json.dumps({**result, "rss_mib": peak_rss_mib()}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="measured round trips per library")
    parser.add_argument("--libraries", type=lambda text: text.split(","), default=["playwright", "selenium"])
    return orchestrate(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
