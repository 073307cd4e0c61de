"""Hostile archives are refused before anything is extracted or any build is created."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from cargohold.client.settings import Connection
from cargohold.images import ImageError, save_image

# Nothing listens on port 9 (discard): any attempt to create a build would fail with "cannot reach".
NOWHERE = Connection("http://127.0.0.1:9", "unused-token", "test", "project")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if not fields.get("type") else 0
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def _docker_archive(path: Path, extra: list[tuple[str, dict[str, object]]]) -> None:
    config = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}})
    with tarfile.open(path, "w") as tar:
        _add(tar, "config.json", config.encode())
        _add(tar, "manifest.json", json.dumps([{"Config": "config.json", "RepoTags": [], "Layers": []}]).encode())
        for name, fields in extra:
            _add(tar, name, b"evil", **fields)


@pytest.mark.parametrize(
    ("member", "fields", "expected"),
    [
        ("../escape.txt", {}, "escapes the archive"),
        ("blobs/../../escape.txt", {}, "escapes the archive"),
        ("/etc/escape.txt", {}, "absolute"),
        ("link", {"type": tarfile.SYMTYPE, "linkname": "../../etc/passwd"}, "symlink"),
        ("abs-link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "symlink"),
    ],
)
def test_docker_archive_with_escaping_member_is_refused(
    tmp_path: Path, member: str, fields: dict[str, object], expected: str
) -> None:
    archive = tmp_path / "work" / "evil.tar"
    archive.parent.mkdir()
    _docker_archive(archive, [(member, fields)])
    with pytest.raises(ImageError, match=expected) as caught:
        save_image(NOWHERE, f"docker-archive:{archive}")
    assert "cannot reach" not in str(caught.value), "refused before any build was created"
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    ("member", "fields", "expected"),
    [
        ("../escape.txt", {}, "escapes the archive"),
        ("blobs/sha256/link", {"type": tarfile.SYMTYPE, "linkname": "../../../escape.txt"}, "symlink"),
        ("blobs/sha256/inside-link", {"type": tarfile.SYMTYPE, "linkname": "other"}, "link"),
        ("dev", {"type": tarfile.CHRTYPE}, "device"),
    ],
)
def test_oci_archive_with_hostile_member_is_refused(
    tmp_path: Path, member: str, fields: dict[str, object], expected: str
) -> None:
    archive = tmp_path / "work" / "evil-oci.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, member, b"evil", **fields)
        _add(tar, "index.json", b'{"schemaVersion":2,"manifests":[]}')
    with pytest.raises(ImageError, match=expected):
        save_image(NOWHERE, f"oci-archive:{archive}")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "work" / "escape.txt").exists()
