#!/usr/bin/env python3
"""How long the dashboard's builds page of a big project takes to render (issue 16: under 300 ms).

Seeds ``--builds`` builds (default 20,000: mixed statuses, save-tags on some, a few pinned, one a minute)
into one project directly through the metadata database, runs the real application in-process (aiohttp's
test server, a temporary data dir, a bootstrap admin token), signs in to the dashboard like a browser and
times, ``--rounds`` times each, the median and worst wall time of:

* the first page (newest 50),
* a deep page by key (``?before=<the build 3/4 down the list>``: keyset pagination, no OFFSET),
* a filtered page (``status=saved`` + a save-tag), and a text search on the build ID,

next to the peer the page must not be much slower than: the control API's JSON page of the same builds
(``GET /api/v1/projects/<id>/builds``), measured in the same run. Times are whole requests over loopback, so
they are an upper bound on server time. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from cargohold.config import ServerSettings
from cargohold.metadata.control import ControlStore, new_id
from cargohold.metadata.db import Database
from cargohold.metadata.models import Build, SaveTag
from cargohold.server.app import create_app
from cargohold.storage.private import secure_data_dir

BUDGET_MS = 300.0


def seed(database_url: str, count: int) -> tuple[str, list[str]]:
    """A project holding ``count`` builds; returns its ID and the build IDs, newest first."""
    db = Database(database_url)
    db.migrate()
    control = ControlStore(db)
    project = control.create_project("bench-dashboard", max_builds=1_000_000)
    start = datetime.now(UTC) - timedelta(minutes=count)
    ids: list[str] = []
    with db.write() as session:
        for index in range(count):
            build_id = new_id()
            saved = index % 10 != 0
            created = start + timedelta(minutes=index)
            session.add(
                Build(
                    id=build_id,
                    project_id=project.id,
                    status="saved" if saved else ("failed" if index % 20 == 0 else "pending"),
                    created_at=created,
                    saved_at=created + timedelta(seconds=40) if saved else None,
                    expires_at=created + timedelta(days=7) if saved else None,
                    pinned=index % 500 == 0,
                    manifest_digest="sha256:" + secrets.token_hex(32) if saved else None,
                    media_type="application/vnd.oci.image.index.v1+json" if saved else None,
                    platforms=json.dumps(["linux/amd64", "linux/arm64"]) if saved else None,
                    total_size=(index * 7919) % (900 << 20) if saved else None,
                    unique_size=(index * 104729) % (90 << 20) if saved else None,
                    provenance=json.dumps({"repository": "acme/app", "workflow": "ci", "run_id": str(index)}),
                    created_by="oidc:acme/app",
                )
            )
            if saved and index % 7 == 0:
                session.add(SaveTag(build_id=build_id, project_id=project.id, tag=f"pr-{index}", updated_at=created))
            ids.append(build_id)
    db.dispose()
    return project.id, list(reversed(ids))


async def timed(client: TestClient, path: str, rounds: int, **kwargs: object) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        response = await client.get(path, allow_redirects=False, **kwargs)  # type: ignore[arg-type]
        await response.read()
        times.append((time.perf_counter() - began) * 1000)
        assert response.status == 200, (path, response.status)
    return statistics.median(times), max(times)


async def measure(data_dir: Path, project_id: str, ids: list[str], rounds: int, admin_token: str) -> bool:
    settings = ServerSettings(data_dir=data_dir, admin_token=admin_token)
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        signed = await client.post("/ui/sign-in", data={"token": admin_token}, allow_redirects=False)
        assert signed.status == 303, await signed.text()
        api = {"Authorization": f"Bearer {admin_token}"}
        deep = ids[len(ids) * 3 // 4]
        tag = next(f"pr-{index}" for index in range(len(ids) // 2, len(ids)) if index % 70 == 0)
        cases = [
            ("first page", f"/ui/projects/{project_id}/builds", f"/api/v1/projects/{project_id}/builds"),
            (
                "deep page by key",
                f"/ui/projects/{project_id}/builds?before={deep}",
                f"/api/v1/projects/{project_id}/builds?before={deep}",
            ),
            (
                "filtered (saved + save-tag)",
                f"/ui/projects/{project_id}/builds?status=saved&tag={tag}",
                f"/api/v1/projects/{project_id}/builds?tag={tag}",
            ),
            ("text search on ID", f"/ui/projects/{project_id}/builds?q={ids[1234][2:6]}", None),
        ]
        ok = True
        print(f"{len(ids)} builds; {rounds} rounds each; budget {BUDGET_MS:.0f} ms")
        print(f"{'page':<30} {'median ms':>10} {'worst ms':>10} {'API median':>11} {'ratio':>7}")
        for name, ui_path, api_path in cases:
            await timed(client, ui_path, 1)  # warm caches and templates
            median, worst = await timed(client, ui_path, rounds)
            peer = (await timed(client, api_path, rounds, headers=api))[0] if api_path else None
            ratio = f"{median / peer:6.2f}x" if peer else "      -"
            peer_text = f"{peer:11.1f}" if peer else f"{'-':>11}"
            print(f"{name:<30} {median:10.1f} {worst:10.1f} {peer_text} {ratio}")
            ok = ok and median < BUDGET_MS
        return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cargohold-bench-dashboard-") as temp:
        data_dir = Path(temp) / "data"
        settings = ServerSettings(data_dir=data_dir)
        secure_data_dir(data_dir, settings.resolved_database_url())
        began = time.perf_counter()
        project_id, ids = seed(settings.resolved_database_url(), args.builds)
        print(f"seeded {len(ids)} builds in {time.perf_counter() - began:.1f} s")
        ok = asyncio.run(measure(data_dir, project_id, ids, args.rounds, secrets.token_urlsafe(32)))
    print("within budget" if ok else f"OVER BUDGET ({BUDGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
