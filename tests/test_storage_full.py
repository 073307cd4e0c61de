"""A full disk, for real: the data directory on a small ext4 filesystem, filled by real saves and by others.

**Why ext4 on a loop device rather than tmpfs.** Both are real kernel filesystems, but ext4 allocates blocks
the way a server's disk does: a journal, inode tables and directory blocks take room too (so what statvfs
reports and what a write can use differ, as on a real disk), writes are allocated lazily (delayed
allocation), and SQLite's WAL and shared-memory files behave as they do in production. The image is made
with ``-m 0`` (no blocks reserved for root), so "full" means the same to a server running as root (CI) as
to one running as an unprivileged user on a default ext4.

The test needs root (``mount``); it skips elsewhere, and fails under ``CARGOHOLD_REQUIRE_TOOLS=1`` (CI, which
runs as root), so it cannot silently stop running there. The filesystem is always unmounted.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from cargohold.client.control import ControlClient
from cargohold.client.settings import Connection
from cargohold.images import pull_image
from cargohold.sample import write_sample_image
from cargohold.storage.space import MinFreeSpace, SpaceGuard, StorageFull
from oidc_issuer import REPO, LoopbackOidcIssuer
from servers import InProcessServer, running
from space_helpers import LogWindow, layout_blob_hashes

MiB = 1 << 20
DISK = 48 * MiB
"""The image: about 38 MiB of it can hold files once ext4 has its journal and tables."""
MIN_FREE = "8MiB"


def _need_root_mounts() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "mounting a test filesystem needs root"
    elif shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        problem = "needs mkfs.ext4 and mount (e2fsprogs, mount)"
    if problem:
        if os.environ.get("CARGOHOLD_REQUIRE_TOOLS") == "1":
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


@contextmanager
def ext4_filesystem(workdir: Path, size: int) -> Iterator[Path]:
    """A fresh ext4 filesystem of ``size`` bytes mounted (loop device) at ``workdir/mnt``; always unmounted."""
    _need_root_mounts()
    image, mountpoint = workdir / "disk.img", workdir / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        message = f"mount -o loop failed: {mounted.stderr.strip()}"
        if os.environ.get("CARGOHOLD_REQUIRE_TOOLS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        image.unlink(missing_ok=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Another process filling the disk: write until ENOSPC, to the last byte, and make it stick."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (MiB, 64 << 10, 4096, 512, 1):
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError:
                    break
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    return path


def truncate_wal(data_dir: Path) -> None:
    """Checkpoint the server's SQLite WAL and truncate it to nothing, as after a restart or a quiet spell: its
    next write then needs new blocks, so a full disk really stops it (a WAL with spare room would hide that)."""
    with closing(sqlite3.connect(data_dir / "metadata.db", timeout=30)) as database:
        busy, _, _ = database.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0 and (data_dir / "metadata.db-wal").stat().st_size == 0


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with ext4_filesystem(tmp_path, DISK) as mountpoint:
        yield mountpoint


@pytest.fixture
def issuer() -> Iterator[LoopbackOidcIssuer]:
    with LoopbackOidcIssuer() as running:
        yield running


@pytest.fixture
def server(disk: Path, issuer: LoopbackOidcIssuer) -> Iterator[InProcessServer]:
    """The registry (in-process: its log is in memory, so a full disk cannot eat the test's evidence) with its
    data directory on the small filesystem.

    Free space is measured in the background only every 30 s: what happens at once must be triggered by the
    requests themselves (a refusal, a full disk met by a read, healthz seeing the state change).
    """
    settings = {
        "min_free_space": MinFreeSpace.parse(MIN_FREE),
        "gc_grace": timedelta(0),
        "space_check_interval": timedelta(seconds=30),
        "oidc_issuers": (issuer.url,),
    }
    proc = InProcessServer(disk / "data", settings)
    issuer.audience = proc.url
    with running(proc) as started:
        assert isinstance(started, InProcessServer)
        yield started


@pytest.fixture
def conn(server: InProcessServer) -> Connection:
    with ControlClient(server.url, server.admin_token) as control:
        project = control.create_project("full-disk")
    return Connection(server.url, server.admin_token, "test", str(project.id))


def cli(conn: Connection, tmp_path: Path, *args: str, project: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CARGOHOLD_REGISTRY": conn.registry,
        "CARGOHOLD_TOKEN": str(conn.token),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "CI": "true",
    }
    if project:
        env["CARGOHOLD_PROJECT_ID"] = str(conn.project)
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def save(conn: Connection, tmp_path: Path, layout: Path) -> str:
    """``cargohold save`` through the CLI; returns the build ID."""
    saved = cli(conn, tmp_path, "save", f"oci:{layout}:v1", "--json", "--progress", "quiet")
    assert saved.returncode == 0, saved.stderr
    return str(json.loads(saved.stdout)["build_id"])


def image(tmp_path: Path, name: str, *, layers: int, layer_mib: int, seed: int) -> Path:
    layout = tmp_path / "images" / name
    write_sample_image(layout, layers=layers, layer_size=layer_mib * MiB, seed=seed, ref="v1")
    return layout


def assert_pulls_identical(conn: Connection, build_id: str, source: Path, out: Path) -> None:
    """The build pulls (digests verified on the way) and every blob is byte-for-byte the saved one."""
    target = out / f"{build_id}-{time.monotonic_ns()}"
    pull_image(conn, build_id, output=f"oci:{target}")
    assert layout_blob_hashes(target) == layout_blob_hashes(source)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def health(server: InProcessServer) -> dict[str, object]:
    response = httpx.get(f"{server.url}/healthz", timeout=10)
    assert response.status_code == 200  # degraded or not: reads work, keep the server in the pool
    return response.json()  # type: ignore[no-any-return]


def build_ids(conn: Connection) -> set[str]:
    with ControlClient(conn.registry, conn.token) as control:
        return {str(b.id) for b in control.list_builds(str(conn.project), limit=500).builds if b.status == "saved"}


def test_an_oversize_save_is_refused_before_the_disk_fills(
    server: InProcessServer, conn: Connection, disk: Path, tmp_path: Path
) -> None:
    window = LogWindow(server)
    first = image(tmp_path, "first", layers=2, layer_mib=3, seed=1)
    second = image(tmp_path, "second", layers=2, layer_mib=4, seed=2)
    oversize = image(tmp_path, "oversize", layers=3, layer_mib=20, seed=3)  # 60 MiB: more than the disk
    small = image(tmp_path, "small", layers=1, layer_mib=1, seed=4)
    first_id, second_id = save(conn, tmp_path, first), save(conn, tmp_path, second)

    before = free_bytes(disk)
    refused = cli(conn, tmp_path, "save", f"oci:{oversize}:v1", "--progress", "quiet")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: Cargohold's storage is full, so build ")
    assert "--min-free-space" in lines[0] and "cargohold gc" in lines[0] and "cargohold builds rm" in lines[0]
    # Refused up front: no layer was staged, the disk did not fill, nothing is left in uploads/.
    assert free_bytes(disk) >= before - MiB
    assert os.listdir(server.data_dir / "uploads") == []
    assert health(server)["status"] == "ok"

    assert_pulls_identical(conn, first_id, first, tmp_path / "out")
    assert_pulls_identical(conn, second_id, second, tmp_path / "out")
    small_id = save(conn, tmp_path, small)
    assert_pulls_identical(conn, small_id, small, tmp_path / "out")
    assert build_ids(conn) == {first_id, second_id, small_id}
    # An admin sees the server's free space without naming a project.
    usage = cli(conn, tmp_path, "usage", project=False)
    assert usage.returncode == 0, usage.stderr
    assert "server free space (blob store and database)" in usage.stdout and "minimum 8.4 MB" in usage.stdout
    assert "Traceback" not in window.text()
    assert window.lines("refused upload", "Cargohold's storage is full")


def test_a_full_disk_keeps_serving_and_makes_room_by_itself(
    server: InProcessServer, conn: Connection, disk: Path, tmp_path: Path, issuer: LoopbackOidcIssuer
) -> None:
    window = LogWindow(server)
    layouts = {
        "pinned": image(tmp_path, "pinned", layers=2, layer_mib=3, seed=11),
        "old": image(tmp_path, "old", layers=2, layer_mib=4, seed=12),
        "newest": image(tmp_path, "newest", layers=1, layer_mib=2, seed=13),
    }
    ids = {name: save(conn, tmp_path, layout) for name, layout in layouts.items()}
    with ControlClient(server.url, server.admin_token) as control:
        control.pin_build(ids["pinned"])
        control.add_trust(str(conn.project), repository=REPO)

    # Something else on the machine fills the disk to the last byte.
    truncate_wal(server.data_dir)
    filler = fill(disk)
    assert free_bytes(disk) < MiB
    # Reads keep working: pull-info mints a token (a database write, given the reserve) and blobs are served.
    assert_pulls_identical(conn, ids["pinned"], layouts["pinned"], tmp_path / "out")
    assert window.lines("GET /api/v1/pull-info hit a full disk", "answering it again with the reserved space")

    # The server makes room: the oldest unpinned build goes (not the pinned one, not the project's newest).
    wait_for(lambda: ids["old"] not in build_ids(conn), "the space eviction")
    assert build_ids(conn) == {ids["pinned"], ids["newest"]}
    with ControlClient(server.url, server.admin_token) as control:
        history = control.project_history(str(conn.project), build_id=ids["old"])
    assert history[0].rule == "space" and "to free storage space" in str(history[0].message)
    for name in ("pinned", "newest"):
        assert_pulls_identical(conn, ids[name], layouts[name], tmp_path / "out")

    # The reserve is taken back as soon as there is room for it (below the minimum too), for the next time.
    wait_for(lambda: (server.data_dir / "cargohold-reserved-space").exists(), "the reserve to be taken back")

    # Fill again: now nothing more may go. Uploads are refused, healthz says why, reads and GC still work.
    truncate_wal(server.data_dir)
    fill(disk, "filler-2")
    assert health(server)["status"] == "degraded"
    assert "below the minimum" in str(health(server)["reasons"])
    refused = cli(conn, tmp_path, "save", f"oci:{layouts['old']}:v1", "--progress", "quiet")
    assert refused.returncode == 1 and "Cargohold's storage is full" in refused.stderr
    gc = cli(conn, tmp_path, "gc")
    assert gc.returncode == 0, gc.stderr
    usage = cli(conn, tmp_path, "usage")
    assert usage.returncode == 0 and "below the minimum" in usage.stdout, usage.stdout + usage.stderr
    assert_pulls_identical(conn, ids["newest"], layouts["newest"], tmp_path / "out")
    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.admin_token}"}).text
    assert 'cargohold_builds_evicted_total{rule="space"} 1.0' in metrics
    assert 'cargohold_storage_low{filesystem="blob_store_and_database"} 1.0' in metrics
    assert "cargohold_storage_min_free_bytes" in metrics and "cargohold_storage_refusals_total" in metrics

    # Room again: healthz recovers, the reserve is held again, saves work.
    filler.unlink()
    (disk / "filler-2").unlink()
    assert health(server)["status"] == "ok"
    wait_for(lambda: (server.data_dir / "cargohold-reserved-space").exists(), "the reserve to be re-created")
    again = save(conn, tmp_path, layouts["old"])
    assert_pulls_identical(conn, again, layouts["old"], tmp_path / "out")

    # A restart on a completely full disk: SQLite needs room to open its WAL; the reserve gives it.
    server.stop()
    filler = fill(disk)
    server.start()
    assert health(server)["status"] == "degraded"
    assert_pulls_identical(conn, ids["pinned"], layouts["pinned"], tmp_path / "out")
    # ... and makes room again: the older unpinned build goes, the project's newest (``again``) stays.
    wait_for(lambda: ids["newest"] not in build_ids(conn), "the space eviction after the restart")
    assert build_ids(conn) == {ids["pinned"], again}

    # A CI job logging in with its OIDC token on a full disk (the exchange records the token's jti).
    filler.unlink()
    wait_for(lambda: health(server)["status"] == "ok", "healthz to recover")
    wait_for(lambda: (server.data_dir / "cargohold-reserved-space").exists(), "the reserve to be re-created")
    truncate_wal(server.data_dir)
    fill(disk)
    with ControlClient(server.url) as anonymous:
        exchanged = anonymous.exchange_oidc(issuer.mint("push"))
    job = Connection(server.url, str(exchanged.token), "oidc", str(conn.project))
    assert_pulls_identical(job, ids["pinned"], layouts["pinned"], tmp_path / "out")
    assert "Traceback" not in window.text()


def test_admission_counts_what_other_uploads_announced(disk: Path) -> None:
    """Two uploads that each fit alone but not together: the second is refused while the first is running."""
    guard = SpaceGuard(MinFreeSpace.parse(MIN_FREE), blobs=disk, database=None)
    status = guard.measure()
    assert status.blobs is not None and status.blobs.minimum == 8 * MiB
    half = (status.blobs.free - status.blobs.minimum) // 2 + MiB
    first = guard.admit(half)
    with pytest.raises(StorageFull) as refused:
        guard.admit(half)
    assert str(refused.value).startswith("Cargohold's storage is full: ") and "--min-free-space" in str(refused.value)
    # The first writes what it announced: its claim turns into used space, the second still may not start.
    written = 0
    with open(disk / "first-upload", "wb") as staged:
        while written < half - MiB:
            written += MiB
            first.writing(MiB)
            staged.write(bytes(MiB))
            staged.flush()
            os.fsync(staged.fileno())
    with pytest.raises(StorageFull):
        guard.admit(half)
    # Once it is over (and, here, discarded), there is room again.
    first.release()
    (disk / "first-upload").unlink()
    guard.admit(half).release()


def test_a_stream_without_length_is_stopped_at_the_minimum(
    server: InProcessServer, conn: Connection, disk: Path, tmp_path: Path
) -> None:
    """No Content-Length: the server re-measures every few MiB and stops the stream before the disk fills."""
    window = LogWindow(server)
    before = free_bytes(disk)
    lowest = [before]

    def body() -> Iterator[bytes]:
        for _ in range(before // MiB + 8):  # more than the whole disk
            lowest.append(free_bytes(disk))
            yield os.urandom(MiB)

    with server.client() as http:
        started = http.post(f"/v2/{conn.project}/blobs/uploads/")
        assert started.status_code == 202
        upload_id = started.headers["Location"].rsplit("/", 1)[1]
        try:
            response = http.patch(started.headers["Location"], content=body())
            assert response.status_code == 507, response.text
            assert response.json()["errors"][0]["message"].startswith("Cargohold's storage is full")
        except httpx.TransportError:
            pass  # the server answered and closed while the client was still sending: also a clean refusal
    # Refused before it would cross the minimum (a little slack for the filesystem's and database's own blocks).
    assert min(lowest) > 8 * MiB - MiB // 2, f"free space fell to {min(lowest)} bytes"
    wait_for(lambda: os.listdir(server.data_dir / "uploads") == [], "the staged bytes to be removed")
    assert free_bytes(disk) > before - MiB
    # The server refused while free space was still above the minimum (it claims the next MiBs first).
    assert window.lines("refused upload", upload_id, "would take it below the 8.0 MiB")
    assert "Traceback" not in window.text()
    small = image(tmp_path, "small", layers=1, layer_mib=1, seed=5)
    assert_pulls_identical(conn, save(conn, tmp_path, small), small, tmp_path / "out")
