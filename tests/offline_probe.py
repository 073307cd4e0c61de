"""Exercise every test back-end once and print what happened, as JSON: run inside tests/netns.py's namespace.

Started by tests/test_offline.py in a private network namespace whose only way out is a packet counter, so
the PostgreSQL cluster, the moto S3 server and Chromium (including deliberate requests for a non-loopback
address) can be shown to send nothing off the machine, and to work with no network at all.
"""

from __future__ import annotations

import http.server
import json
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

OUTSIDE = "http://192.0.2.1/tracker.png"
"""TEST-NET-1 (documentation range); in the namespace its packets could only reach the counting trap."""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f'<!doctype html><title>outside</title><img src="{OUTSIDE}">'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def probe_postgres() -> dict[str, Any]:
    import sqlalchemy as sa

    from pgcluster import running_cluster

    with running_cluster() as cluster:
        engine = sa.create_engine(cluster.url(cluster.create_database()))
        with engine.connect() as connection:
            answer = connection.execute(sa.text("SELECT 40 + 2")).scalar()
        engine.dispose()
    return {"answer": answer}


def probe_s3(scratch: Path) -> dict[str, Any]:
    import os

    import boto3
    import httpx
    from botocore.config import Config

    from s3server import S3Server

    server = S3Server(base_dir=scratch).start()
    try:
        os.environ.update(server.environment(scratch / "aws"))
        server.create_bucket("offline-probe")
        client = boto3.client("s3", config=Config(signature_version="s3v4"))
        client.put_object(Bucket="offline-probe", Key="k", Body=b"stored")
        url = client.generate_presigned_url("get_object", Params={"Bucket": "offline-probe", "Key": "k"})
        return {"presigned_get": httpx.get(url).text}
    finally:
        server.stop()


def probe_chromium() -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from browser import LAUNCH_ARGS, LoopbackGuard, chromium_binary

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{site.server_address[1]}/"
    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_binary(), args=LAUNCH_ARGS, headless=True)
        for label, guard in (("guarded", LoopbackGuard()), ("flags only", None)):
            context = browser.new_context()
            if guard is not None:
                context.route("**/*", guard)
            failures: dict[str, str | None] = {}
            page = context.new_page()
            page.on("requestfailed", lambda request, failures=failures: failures.update({request.url: request.failure}))
            page.goto(url)  # returns after "load", which waits for the image to load or fail
            results[label] = {"title": page.title(), "failures": failures}
            if guard is not None:
                results[label]["refused"] = guard.refused
            context.close()
        browser.close()
    site.shutdown()
    return results


def main() -> int:
    # Concurrently: each probe mostly waits for its server's start-up, and the test should take seconds.
    with tempfile.TemporaryDirectory(prefix="cargohold-offline-") as scratch, ThreadPoolExecutor(3) as pool:
        futures = {
            "postgres": pool.submit(probe_postgres),
            "s3": pool.submit(probe_s3, Path(scratch)),
            "chromium": pool.submit(probe_chromium),
        }
        report = {name: future.result() for name, future in futures.items()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
