"""The data directory is private whatever the umask: directories 0700, database and blobs 0600.

The umask is a process's, so those servers are processes of their own; tightening a loose data dir at
start-up is not, and runs in-process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from protocol_helpers import push_blob, random_blob, start_upload
from servers import InProcessServer, ServerProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_everything_the_server_creates_is_private(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data_dir=data, umask=umask).start()
    try:
        with server.client() as http:
            push_blob(http, "modes/app", random_blob(4096))
            location = start_upload(http, "modes/app")  # a session whose staged file stays
            response = http.patch(location, content=b"partial", headers={"Content-Type": "application/octet-stream"})
            assert response.status_code == 202, response.text
    finally:
        server.stop()
    assert _mode(data) == 0o700
    files = [path for path in data.rglob("*") if path.is_file() and not path.name.endswith(".log")]
    dirs = [path for path in data.rglob("*") if path.is_dir()]
    assert {p.name for p in files} >= {"metadata.db"}
    assert any("blobs" in p.parts for p in files) and any("uploads" in p.parts for p in files)
    loose = {str(p.relative_to(data)): oct(_mode(p)) for p in files if _mode(p) & 0o077}
    assert not loose, f"files accessible by others under umask {umask:03o}: {loose}"
    loose = {str(p.relative_to(data)): oct(_mode(p)) for p in dirs if _mode(p) & 0o077}
    assert not loose, f"directories accessible by others under umask {umask:03o}: {loose}"
    for name in ("metadata.db", "metadata.db-wal", "metadata.db-shm"):
        if (data / name).exists():
            assert _mode(data / name) == 0o600, name


def test_a_loose_existing_data_dir_is_tightened_once_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = InProcessServer(data_dir=data).start()
    first.stop()
    os.chmod(data, 0o755)  # noqa: S103 (the loose mode an older version left)
    os.chmod(data / "metadata.db", 0o644)
    second = InProcessServer(data_dir=data).start()
    try:
        log = second.log()
    finally:
        second.stop()
    assert _mode(data) == 0o700 and _mode(data / "metadata.db") == 0o600
    warnings = [line for line in log.splitlines() if "accessible by other users" in line]
    assert len(warnings) == 2, warnings  # the directory and the database, once each
    assert "tightened to 0700" in warnings[0] or "tightened to 0700" in warnings[1]
    third = InProcessServer(data_dir=data).start()
    third.stop()
    assert "accessible by other users" not in third.log()
