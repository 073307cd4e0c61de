"""The GC race soak across two servers on one PostgreSQL database (and one blob directory).

Both servers collect garbage every 0.25 s with a 1 s grace window (the ``gc`` lease lets one of them collect
at a time, in turns); workers push images with shared base layers to both and delete a third of them again.
Every image that was not deleted must then pull completely from the *other* server: no collection on either
side may have removed a blob a manifest pushed through the first one references.

Over HTTP the 1 s grace window hides most of the race itself (this test also passed with the stores' locks
removed); ``test_pg_races.py`` provokes each race directly and fails without them. This one shows two servers
sharing the database, its GC lease and its blobs behave as one registry.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from servers import InProcessServer
from test_gc_races import _pull_all
from test_lifecycle_support import push_image

pytestmark = pytest.mark.slow


def test_soak_pushes_to_two_servers_while_both_collect_garbage(pg_migrated_url: str, tmp_path: Path) -> None:
    settings = {
        "database_url": pg_migrated_url,
        "gc_interval": timedelta(seconds=0.25),
        "gc_grace": timedelta(seconds=1),
    }
    first = InProcessServer(tmp_path / "data", settings)
    first.start()
    second = InProcessServer(tmp_path / "data", settings, admin_token=first.admin_token)
    try:
        second.start()
        servers = (first, second)
        shared = [b"shared-base-" + bytes([i]) * 2048 for i in range(3)]
        saved: list[tuple[int, str, str]] = []
        unexpected: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 6

        def saver(worker: int) -> None:
            target = worker % 2
            with servers[target].client() as http:
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
                                saved.append((target, repository, tag))
                            break
                        code = response.json()["errors"][0]["code"]  # type: ignore[attr-defined]
                        if code != "MANIFEST_BLOB_UNKNOWN":  # the only answer a correct registry may give here
                            with lock:
                                unexpected.append(response.text)  # type: ignore[attr-defined]
                            return
                    if n % 3 == 0:
                        http.delete(f"/v2/{repository}/manifests/{tag}")
                        with lock:
                            saved.remove((target, repository, tag))

        threads = [threading.Thread(target=saver, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert unexpected == []
        assert len(saved) > 8
        time.sleep(1.5)  # past the grace window: the next passes could take anything unreferenced
        first.lifecycle.collect_garbage()
        second.lifecycle.collect_garbage()
        for pushed_to, repository, tag in saved:
            with servers[1 - pushed_to].client() as http:
                _pull_all(http, repository, tag)
        for server in servers:
            assert "Traceback" not in server.log()
    finally:
        second.stop()
        first.stop()
