"""docker-archive reading (validated, streamed) and writing (streamed from a registry or layout)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cargohold.client.copy import LayoutStore, RegistryRepo, copy_image
from cargohold.client.registry import RegistryClient
from cargohold.client.retry import RetryPolicy
from cargohold.oci import mediatypes
from cargohold.oci.archive import (
    DOCKER_LAYER_TAR,
    ArchiveError,
    DockerArchive,
    DockerArchiveSource,
    write_docker_archive,
)
from cargohold.oci.layout import OCILayout
from cargohold.sample import write_sample_index
from refregistry import RefRegistry, refregistry_fixture  # noqa: F401 - fixtures

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def legacy_archive(
    path: Path,
    layers: list[bytes],
    *,
    compress: set[int] = frozenset(),  # type: ignore[assignment]
    diff_ids: list[str] | None = None,
    extra: list[tarfile.TarInfo] | None = None,
) -> Path:
    """A `docker save` (pre-25) style archive: <id>/layer.tar, <config-hex>.json, manifest.json, repositories."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids or [f"sha256:{sha(layer)}" for layer in layers]},
        }
    ).encode()
    names = []
    with tarfile.open(path, "w") as tar:
        for i, layer in enumerate(layers):
            stored = gzip.compress(layer, mtime=0) if i in compress else layer
            name = f"{sha(layer)[:16]}{i}/layer.tar"
            add(tar, name, stored)
            names.append(name)
        add(tar, f"{sha(config)}.json", config)
        add(
            tar,
            "manifest.json",
            json.dumps([{"Config": f"{sha(config)}.json", "RepoTags": ["demo/app:v1"], "Layers": names}]).encode(),
        )
        add(tar, "repositories", json.dumps({"demo/app": {"v1": "x"}}).encode())
        for info in extra or []:
            tar.addfile(info)
    return path


def test_read_legacy_archive_and_push(refregistry: RefRegistry, tmp_path: Path) -> None:
    layers = [layer_tar({"a.txt": b"hello"}), layer_tar({"b.bin": bytes(range(256)) * 8000})]
    path = legacy_archive(tmp_path / "img.tar", layers, compress={1})
    with DockerArchive.open(path) as archive:
        image = archive.image()
        assert image.repo_tags == ["demo/app:v1"]
        descs = archive.layer_descriptors(image)
        assert descs[0].media_type == DOCKER_LAYER_TAR and str(descs[0].digest) == f"sha256:{sha(layers[0])}"
        assert descs[1].media_type == mediatypes.DOCKER_LAYER_GZIP
        source = DockerArchiveSource(archive)
        with RegistryClient(refregistry.host, retry=FAST) as client:
            result = copy_image(source, None, RegistryRepo(client, "loaded/app"), ["v1"])
            assert result.digest == source.manifest.digest
            got = client.get_manifest("loaded/app", "v1")
            assert got.media_type == mediatypes.DOCKER_MANIFEST and got.data == source.manifest.data
            assert [json.loads(got.data)["layers"][i]["digest"] for i in range(2)] == [str(d.digest) for d in descs]

            # And back out as a docker archive, streamed from the registry.
            out = tmp_path / "out.tar"
            digest = write_docker_archive(RegistryRepo(client, "loaded/app"), "v1", out, repo_tags=["again:v2"])
            assert digest == source.manifest.digest
    with DockerArchive.open(out) as again:
        image = again.image("again:v2")
        assert [d.digest for d in again.layer_descriptors(image)] == [d.digest for d in descs]
        assert json.loads(b"".join(again.open_member("repositories")))["again"]["v2"] == descs[-1].digest.hex


def test_write_archive_from_index_needs_platform(tmp_path: Path) -> None:
    info = write_sample_index(tmp_path / "layout", layers=1, layer_size=1 << 16, seed=3, ref="v1", attestations=True)
    store = LayoutStore(OCILayout.open(tmp_path / "layout"))
    with pytest.raises(ArchiveError, match=r"--platform \(linux/amd64, linux/arm64\)"):
        write_docker_archive(store, "v1", tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
    stream = io.BytesIO()  # a non-seekable-style sink works too (tarfile streaming mode)
    digest = write_docker_archive(store, "v1", stream, platform="linux/arm64", repo_tags=["a:b"])
    assert digest == info.images[1].manifest.digest
    stream.seek(0)
    with tarfile.open(fileobj=stream) as tar:
        names = tar.getnames()
    assert "manifest.json" in names and all(f"blobs/sha256/{d.digest.hex}" in names for d in info.images[1].blobs)


def test_corrupt_source_blob_aborts_archive_writing(tmp_path: Path) -> None:
    write_sample_index(
        tmp_path / "layout", platforms=[("linux", "amd64")], layers=1, layer_size=1 << 16, seed=1, ref="v1"
    )
    layout = OCILayout.open(tmp_path / "layout")
    image = json.loads(layout.read_blob(layout.read_json(layout.resolve("v1").digest)["manifests"][0]["digest"]))
    victim = layout.blob_path(image["layers"][0]["digest"])
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = tmp_path / "x.tar"
    with pytest.raises(Exception, match=r"corrupt|did not match"):
        write_docker_archive(LayoutStore(layout), "v1", out, platform="linux/amd64")
    assert not out.exists() and not list(tmp_path.glob(".x.tar*"))


def malicious(tmp_path: Path, name: str, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / f"{name}.tar"
    layers = [layer_tar({"ok": b"ok"})]
    legacy_archive(path, layers)
    with tarfile.open(path, "a") as tar:
        tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _info(name: str, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    ("label", "info", "message"),
    [
        ("dotdot", _info("../escaped.txt", size=4), "escapes the archive"),
        ("nested-dotdot", _info("a/../../escaped.txt", size=4), "escapes the archive"),
        ("absolute", _info("/tmp/cargohold-abs-escape.txt", size=4), "absolute"),
        ("symlink", _info("link", type=tarfile.SYMTYPE, linkname="../../../../etc/passwd"), "symlink escaping"),
        ("abs-symlink", _info("link2", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "absolute path"),
        ("hardlink", _info("hard", type=tarfile.LNKTYPE, linkname="../outside"), "hard link escaping"),
        ("device", _info("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "device"),
        ("fifo", _info("fifo", type=tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_malicious_archives_are_refused(tmp_path: Path, label: str, info: tarfile.TarInfo, message: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = malicious(tmp_path, label, info, b"evil" if info.size else b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ArchiveError, match=message):
        DockerArchive.open(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/tmp/cargohold-abs-escape.txt").exists()
    assert not any(work.iterdir())


def test_extract_of_valid_archive_stays_inside(tmp_path: Path) -> None:
    path = legacy_archive(tmp_path / "ok.tar", [layer_tar({"f": b"1"})])
    with DockerArchive.open(path) as archive:
        archive.extract(tmp_path / "dest")
    assert (tmp_path / "dest" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "ok.tar"]


def test_layer_not_matching_its_digest_is_refused(tmp_path: Path) -> None:
    good = layer_tar({"f": b"good"})
    bad = layer_tar({"f": b"evil"})
    # diff_id says "good", the file holds "bad"
    path = legacy_archive(tmp_path / "bad.tar", [bad], diff_ids=[f"sha256:{sha(good)}"])
    with DockerArchive.open(path) as archive, pytest.raises(ArchiveError, match="does not match its diff_id"):
        archive.layer_descriptors(archive.image())
    # gzip layer whose uncompressed content does not match
    path = legacy_archive(tmp_path / "badgz.tar", [bad], compress={0}, diff_ids=[f"sha256:{sha(good)}"])
    with DockerArchive.open(path) as archive, pytest.raises(ArchiveError, match="does not match its diff_id"):
        archive.layer_descriptors(archive.image())
    # Docker 25+ layout names promise a digest: content must match the name
    path = tmp_path / "blobs.tar"
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    with tarfile.open(path, "w") as tar:
        add(tar, f"blobs/sha256/{sha(good)}", bad)
        add(tar, f"blobs/sha256/{sha(config)}", config)
        add(
            tar,
            "manifest.json",
            json.dumps(
                [{"Config": f"blobs/sha256/{sha(config)}", "RepoTags": [], "Layers": [f"blobs/sha256/{sha(good)}"]}]
            ).encode(),
        )
    with DockerArchive.open(path) as archive, pytest.raises(ArchiveError, match="is corrupt"):
        archive.layer_descriptors(archive.image())


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ArchiveError, match="not a readable tar"):
        DockerArchive.open(tmp_path / "x.tar")
    with tarfile.open(tmp_path / "y.tar", "w") as tar:
        add(tar, "hello", b"x")
    with pytest.raises(ArchiveError, match=r"no manifest\.json"):
        DockerArchive.open(tmp_path / "y.tar")


class _SlowSharedFile:
    """The archive's shared file object with a pause between calls, which makes any seek/read interleaving
    between threads (the bug: parallel layer uploads reading through one handle) happen every time."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def seek(self, *args: object) -> object:
        result = self.inner.seek(*args)  # type: ignore[attr-defined]
        time.sleep(0.002)
        return result

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("compressed_archive", [False, True])
def test_layers_stream_correctly_from_parallel_threads(tmp_path: Path, compressed_archive: bool) -> None:
    rng = random.Random(5)
    layers = [layer_tar({f"f{i}.bin": rng.randbytes(3 << 20)}) for i in range(3)]
    path = legacy_archive(tmp_path / "img.tar", layers)
    if compressed_archive:  # `docker save | gzip`
        gz = tmp_path / "img.tar.gz"
        gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
        path = gz
    with DockerArchive.open(path) as archive:
        archive._tar.fileobj = _SlowSharedFile(archive._tar.fileobj)  # type: ignore[assignment]
        names = archive.image().layers

        def digest_of(name: str) -> str:
            hasher = hashlib.sha256()
            for chunk in archive.open_member(name):
                hasher.update(chunk)
            return hasher.hexdigest()

        with ThreadPoolExecutor(max_workers=3) as pool:
            for _ in range(2):
                assert list(pool.map(digest_of, names)) == [sha(layer) for layer in layers]
