"""Lifecycle benchmark: evicting 20,000 builds and one GC pass over 100,000+ blobs, with peak RSS.

Rows are bulk-inserted straight into a fresh SQLite database (what the registry would hold after 20,000
saves) so the run measures eviction and collection, not pushing. Targets: eviction < 10 s, GC < 30 s,
memory flat (peak RSS printed before and after).

GC time is bounded below by the filesystem: deleting a file whose blocks are on disk costs ~1 ms on some
virtual disks (ext4 mounted with ``discard`` trims every freed block synchronously). So the run also
measures that floor in the same directory, with as many threads as the collector uses, and prints GC
time against it: a GC close to its floor is limited by the disk, not by the collector. The floor is a
2,000-file sample on a shared disk and swings by 2x between runs; compare runs made back to back.

    python bench/lifecycle_bench.py [--builds 20000] [--blobs 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from cargohold.lifecycle.gc import DEFAULT_DELETE_WORKERS, GarbageCollector
from cargohold.lifecycle.retention import Retention
from cargohold.metadata.control import ControlStore
from cargohold.metadata.db import Database
from cargohold.metadata.models import Blob, Build, Manifest, ManifestReference, Repository, RepositoryBlob, Tag
from cargohold.storage.filesystem import FilesystemBlobStore


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def populate(db: Database, store: FilesystemBlobStore, builds: int, blobs: int) -> str:
    project = ControlStore(db).create_project("bench", retention=timedelta(days=1), max_builds=builds)
    old = datetime.now(UTC) - timedelta(days=3)
    with db.write() as session:
        session.execute(insert(Repository).values(id=1, name=project.id, created_at=old))
        base = sha(b"base")
        blob_rows = [{"digest": base, "size": 4, "created_at": old}]
        manifest_rows, reference_rows, tag_rows, build_rows = [], [], [], []
        for i in range(builds):
            config = sha(f"config-{i}".encode())
            blob_rows.append({"digest": config, "size": 20, "created_at": old})
            payload = json.dumps({"config": config, "layers": [base]}).encode()
            manifest_rows.append(
                {
                    "id": i + 1,
                    "repository_id": 1,
                    "digest": sha(payload),
                    "media_type": "x",
                    "size": len(payload),
                    "payload": payload,
                    "created_at": old,
                }
            )
            reference_rows += [
                {"manifest_id": i + 1, "digest": config, "kind": "blob"},
                {"manifest_id": i + 1, "digest": base, "kind": "blob"},
            ]
            build_id = f"b{i:09d}"
            tag_rows.append({"repository_id": 1, "name": build_id, "manifest_id": i + 1, "updated_at": old})
            build_rows.append(
                {
                    "id": build_id,
                    "project_id": project.id,
                    "status": "saved",
                    "created_at": old,
                    "saved_at": old + timedelta(seconds=i),
                    "expires_at": old + timedelta(days=1),
                    "pinned": False,
                    "manifest_digest": sha(payload),
                }
            )
        for i in range(blobs - len(blob_rows)):  # plain garbage: uploaded, never referenced
            blob_rows.append({"digest": sha(f"garbage-{i}".encode()), "size": 10, "created_at": old})
        for table, rows in (
            (Blob, blob_rows),
            (Manifest, manifest_rows),
            (ManifestReference, reference_rows),
            (Tag, tag_rows),
            (Build, build_rows),
        ):
            for start in range(0, len(rows), 5000):
                session.execute(insert(table), rows[start : start + 5000])
        links = [{"repository_id": 1, "digest": row["digest"], "linked_at": old} for row in blob_rows]
        for start in range(0, len(links), 5000):
            session.execute(insert(RepositoryBlob), links[start : start + 5000])
    for row in blob_rows:
        digest = row["digest"]
        path = store.blobs_dir / "sha256" / digest[7:9] / digest[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return project.id


def unlink_floor(directory: Path, files: int = 2000) -> tuple[float, float]:
    """Files/s for deleting synced files here: serially, and with the GC's thread pool (the disk's floor)."""
    from concurrent.futures import ThreadPoolExecutor

    rates = []
    for workers in (1, DEFAULT_DELETE_WORKERS):
        paths = []
        for i in range(files):
            path = directory / f"{i % 256:02x}" / f"floor-{workers}-{i}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            paths.append(path)
        os.sync()  # blocks allocated, as for blobs uploaded a while ago
        started = time.perf_counter()
        if workers == 1:
            for path in paths:
                path.unlink()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(Path.unlink, paths))
        rates.append(files / (time.perf_counter() - started))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=20_000)
    parser.add_argument("--blobs", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'metadata.db'}")
        db.migrate()
        store = FilesystemBlobStore(Path(tmp) / "data", fsync=False)
        started = time.perf_counter()
        populate(db, store, args.builds, args.blobs)
        print(
            f"populated {args.builds} builds, {args.blobs} blobs in {time.perf_counter() - started:.1f} s; "
            f"peak RSS {peak_rss_mib():.0f} MiB"
        )

        started = time.perf_counter()
        evicted = Retention(db).expire()
        eviction_s = time.perf_counter() - started
        print(
            f"eviction: {len(evicted)} builds in {eviction_s:.2f} s "
            f"({len(evicted) / eviction_s:.0f} builds/s; target < 10 s); peak RSS {peak_rss_mib():.0f} MiB"
        )

        serial, pooled = unlink_floor(Path(tmp) / "floor")
        floor_s = args.blobs / pooled
        print(
            f"filesystem floor: unlinking synced files here runs at {serial:.0f}/s serially, {pooled:.0f}/s with "
            f"{DEFAULT_DELETE_WORKERS} threads, so deleting {args.blobs} files alone takes ~{floor_s:.1f} s"
        )

        started = time.perf_counter()
        report = GarbageCollector(db, store, grace=timedelta(hours=1)).run()
        gc_s = time.perf_counter() - started
        print(
            f"gc: {report.links_removed} links, {report.blobs_deleted} blobs deleted in {gc_s:.2f} s "
            f"({report.blobs_deleted / gc_s:.0f} blobs/s; target < 30 s; {gc_s / floor_s:.2f}x the filesystem "
            f"floor); peak RSS {peak_rss_mib():.0f} MiB"
        )
        db.dispose()


if __name__ == "__main__":
    main()
