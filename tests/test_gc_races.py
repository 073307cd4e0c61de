"""GC under load: concurrent pushes with a tiny grace window, and a server killed in the middle of a pass.

The soak runs in-process (GC every 0.25 s, 1 s grace); the kill needs a real process (``kill -9``), and only
the pass that is killed runs in one: filling the data dir and checking it afterwards use in-process servers.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from s3server import stored_blob_count
from servers import InProcessServer, ServerProcess, running
from test_lifecycle_support import Env, push_image

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


def _gc_runs(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('cargohold_gc_runs_total{result="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_soak_pushes_while_gc_runs_all_the_time(tmp_path: Path) -> None:
    settings = {"gc_interval": timedelta(seconds=0.25), "gc_grace": timedelta(seconds=1)}
    with running(InProcessServer(tmp_path / "data", settings)) as server:
        shared = [b"shared-base-" + bytes([i]) * 2048 for i in range(3)]
        saved: list[tuple[str, str]] = []
        unexpected: list[str] = []
        retries = 0
        lock = threading.Lock()
        deadline = time.monotonic() + 8  # about 30 GC passes

        def saver(worker: int) -> None:
            nonlocal retries
            with server.client() as http:
                repository = f"soak/w{worker}"
                n = 0
                # At least 11 rounds each (8 kept after the deletions below) however slow the machine is.
                while time.monotonic() < deadline or n < 11:
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
        with server.client() as http:
            # Two more passes (the first may have begun before the pushes ended) over the finished state.
            finished, waited = _gc_runs(http), time.monotonic() + 30
            while _gc_runs(http) < finished + 2 and time.monotonic() < waited:
                time.sleep(0.1)
            assert _gc_runs(http) >= finished + 2, "GC stopped running"
            for repository, tag in saved:
                _pull_all(http, repository, tag)
        assert "Traceback" not in server.log()
        print(f"soak: {len(saved)} images kept, {retries} manifest retries after GC unlinked a blob")


def test_kill_during_gc_loses_nothing_referenced(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    on_demand = {"gc_interval": timedelta(0), "gc_grace": timedelta(0)}
    # Filling is set-up, not under test: without fsync (the filler is stopped cleanly before the kill).
    with running(InProcessServer(data_dir, {**on_demand, "fsync": False})) as filler, filler.client() as http:
        kept = push_image(http, "crash/app", "kept", [b"kept-layer"], "kept")
        assert kept.status_code == 201  # type: ignore[attr-defined]
        # Garbage, written through the server's own stores (what an upload does, minus HTTP): linked blobs no
        # manifest references, enough for three content-deletion batches.
        state = filler.state
        stores = Env(state.metadata.db, state.metadata, state.control, state.blobs)
        for i in range(1200):
            stores.put_blob("crash/app", f"garbage-{i}".encode())
    # Every content-deletion batch holds its transaction 0.5 s after deleting its files: the kill lands there,
    # once a whole batch (500) of files is gone.
    stored = _blob_files(data_dir)
    server = ServerProcess(
        data_dir=data_dir,
        admin_token=filler.admin_token,
        extra_args=["--gc-interval", "0", "--gc-grace", "0s"],
        env={"CARGOHOLD_GC_TEST_DELAY": "0.5"},
    ).start()
    try:
        with server.client() as http:

            def gc() -> None:
                try:
                    with server.client() as slow:
                        slow.post("/api/v1/gc", json={}, timeout=60)
                except httpx.HTTPError:
                    pass  # the server is killed under it

            runner = threading.Thread(target=gc)
            runner.start()
            deadline = time.monotonic() + 30
            while _blob_files(data_dir) > stored - 500:
                assert runner.is_alive() and time.monotonic() < deadline, "GC deleted no batch of files"
                time.sleep(0.01)
            server.stop(kill=True)
            runner.join()
    finally:
        server.stop(kill=True)
    with running(InProcessServer(data_dir, on_demand, admin_token=filler.admin_token)) as after, after.client() as http:
        _pull_all(http, "crash/app", "kept")
        report = http.post("/api/v1/gc", json={})
        assert report.status_code == 200, report.text
        assert report.json()["completed"] is True
        _pull_all(http, "crash/app", "kept")
        again = http.post("/api/v1/gc", json={}).json()
        assert (again["links_removed"], again["blobs_deleted"], again["orphan_files"]) == (0, 0, 0)
    assert _blob_files(data_dir) == 2  # the kept image's layer and config, nothing else


def _blob_files(data_dir: Path) -> int:
    return stored_blob_count(data_dir)
