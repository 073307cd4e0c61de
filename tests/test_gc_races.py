"""GC under load: concurrent pushes with a tiny grace window, and a server killed in the middle of a pass."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import pytest

from servers import ServerProcess
from test_lifecycle_support import push_blob, push_image

pytestmark = pytest.mark.slow


def _pull_all(http: httpx.Client, repository: str, tag: str) -> None:
    manifest = http.get(
        f"/v2/{repository}/manifests/{tag}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    assert manifest.status_code == 200, manifest.text
    body = manifest.json()
    for descriptor in [body["config"], *body["layers"]]:
        blob = http.get(f"/v2/{repository}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, (descriptor, blob.text)
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == descriptor["digest"]


def test_soak_pushes_while_gc_runs_every_second(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", extra_args=["--gc-interval", "1s", "--gc-grace", "3s"]).start()
    try:
        shared = [b"shared-base-" + bytes([i]) * 2048 for i in range(3)]
        saved: list[tuple[str, str]] = []
        unexpected: list[str] = []
        retries = 0
        lock = threading.Lock()
        deadline = time.monotonic() + 20

        def saver(worker: int) -> None:
            nonlocal retries
            with server.client() as http:
                repository = f"soak/w{worker}"
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    tag = f"t{n}"
                    for _attempt in range(3):
                        response = push_image(
                            http, repository, tag, [*shared, f"{worker}-{n}".encode()], f"{worker}-{n}"
                        )
                        if response.status_code == 201:  # type: ignore[attr-defined]
                            with lock:
                                saved.append((repository, tag))
                            break
                        code = response.json()["errors"][0]["code"]  # type: ignore[attr-defined]
                        if code != "MANIFEST_BLOB_UNKNOWN":  # the only answer a correct registry may give here
                            with lock:
                                unexpected.append(response.text)  # type: ignore[attr-defined]
                            return
                        with lock:
                            retries += 1
                    # Leave some images unreferenced (deleted) so GC has real work.
                    if n % 3 == 0:
                        http.delete(f"/v2/{repository}/manifests/{tag}")
                        with lock:
                            saved.remove((repository, tag))
                    time.sleep(0.05)

        threads = [threading.Thread(target=saver, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert unexpected == []
        assert len(saved) > 20
        time.sleep(1.5)  # let at least one more GC pass run over the finished state
        with server.client() as http:
            for repository, tag in saved:
                _pull_all(http, repository, tag)
            metrics = http.get("/metrics").text
        assert 'cargohold_gc_runs_total{result="ok"}' in metrics
        assert "Traceback" not in server.log()
        print(f"soak: {len(saved)} images kept, {retries} manifest retries after GC unlinked a blob")
    finally:
        server.stop()


def test_kill_during_gc_loses_nothing_referenced(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir=data_dir, extra_args=["--gc-interval", "0", "--gc-grace", "1s"]).start()
    try:
        with server.client() as http:
            kept = push_image(http, "crash/app", "kept", [b"kept-layer"], "kept")
            assert kept.status_code == 201  # type: ignore[attr-defined]
            for i in range(1200):  # garbage: linked blobs no manifest references
                push_blob(http, "crash/app", f"garbage-{i}".encode())
        time.sleep(1.2)
        server.stop()
        server.env = {"CARGOHOLD_GC_TEST_DELAY": "0.5"}
        server.start()
        with server.client() as http:

            def gc() -> None:
                try:
                    with server.client() as slow:
                        slow.post("/api/v1/gc", json={}, timeout=60)
                except httpx.HTTPError:
                    pass  # the server is killed under it

            runner = threading.Thread(target=gc)
            runner.start()
            time.sleep(2.0)  # inside the content-deletion batches: files deleted, transaction not committed
            server.stop(kill=True)
            runner.join()
        server.env = {}
        server.start()
        with server.client() as http:
            _pull_all(http, "crash/app", "kept")
            report = http.post("/api/v1/gc", json={})
            assert report.status_code == 200, report.text
            assert report.json()["completed"] is True
            _pull_all(http, "crash/app", "kept")
            again = http.post("/api/v1/gc", json={}).json()
            assert (again["links_removed"], again["blobs_deleted"], again["orphan_files"]) == (0, 0, 0)
        blob_files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
        assert len(blob_files) == 2  # the kept image's layer and config, nothing else
    finally:
        server.stop()
