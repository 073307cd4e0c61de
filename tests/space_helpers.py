"""Helpers for the storage tests (full disk, faults): the consistency check and reading the server's log.

Imported by test_storage_full.py and test_storage_faults.py; holds no tests itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from cargohold.client.control import ControlClient
from cargohold.client.settings import Connection
from cargohold.images import pull_image
from cargohold.oci.layout import OCILayout
from cargohold.schemas import Build


class HasLog(Protocol):
    def log(self) -> str: ...


def saved_builds(conn: Connection) -> list[Build]:
    assert conn.project is not None
    with ControlClient(conn.registry, conn.token) as control:
        builds = control.list_builds(conn.project, limit=500).builds
    return [build for build in builds if build.status == "saved"]


def assert_every_build_pulls(conn: Connection, out: Path) -> list[str]:
    """The consistency check: every saved build the registry lists pulls complete, every digest verified.

    ``pull_image`` fetches the manifest by the build's tag and checks it against the digest recorded at save
    time, and verifies every blob against its digest as it downloads. Returns the IDs that were pulled.
    """
    pulled = []
    for build in saved_builds(conn):
        build_id = str(build.id)
        target = out / f"pull-{build_id}-{len(list(out.glob('pull-*')))}"
        result = pull_image(conn, build_id, output=f"oci:{target}", all_platforms=True)
        assert result.digest == build.digest, f"build {build_id} pulled as {result.digest}, saved as {build.digest}"
        pulled.append(build_id)
    return pulled


def layout_blob_hashes(layout_dir: Path) -> dict[str, str]:
    """sha256 of every blob file of an OCI layout, by digest (to compare two layouts byte for byte)."""
    layout = OCILayout(layout_dir)
    hashes = {}
    for path in sorted((layout.root / "blobs").rglob("*")):
        if path.is_file():
            hashes[f"{path.parent.name}:{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


class LogWindow:
    """The part of a server's log written since this object was made (tests share one server per module)."""

    def __init__(self, server: HasLog) -> None:
        self.server = server
        self.start = len(server.log())

    def text(self) -> str:
        return self.server.log()[self.start :]

    def lines(self, *needles: str) -> list[str]:
        """Log lines (not access-log lines) containing every one of ``needles``."""
        return [
            line
            for line in self.text().splitlines()
            if "cargohold.access" not in line and all(needle in line for needle in needles)
        ]
