"""Fixtures and helpers for tests that drive real clients (skopeo, umoci) against a running registry.

The registry under test is Cargohold (in-process, see ``servers.py``), with a random admin token so that
the same tests keep working once authentication is enforced. For developing these tests against a known-good
peer, set ``CARGOHOLD_TEST_REGISTRY=docker-registry`` to run them against the CNCF reference registry
instead; both speak the OCI distribution protocol and both write an access log line per request.

Fixtures are defined under ``name=`` so a test module imports ``registry_fixture`` (keeping linters
quiet) while its tests ask for ``registry``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from refregistry import RefRegistry
from servers import InProcessServer

TOKEN_USER = "x-token"


def require_tools(*names: str) -> None:
    """Skip (with the missing names and the fix) unless every binary is on PATH.

    Under ``CARGOHOLD_REQUIRE_TOOLS=1`` (set by scripts/test.sh, whose bootstrap installs the tools) a
    missing binary is a failure: in CI a quiet skip would hide exactly the interoperability we promise.
    """
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        message = f"needs {', '.join(missing)} on PATH (run scripts/bootstrap.sh or apt-get install them)"
        if os.environ.get("CARGOHOLD_REQUIRE_TOOLS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a tool, failing the test with its full output if it exits non-zero."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
            pytrace=False,
        )
    return proc


Registry = InProcessServer | RefRegistry


@pytest.fixture(name="admin_token")
def admin_token_fixture() -> str:
    """A fresh random admin token per test: nothing may depend on a well-known secret."""
    return secrets.token_urlsafe(24)


@pytest.fixture(name="registry")
def registry_fixture(tmp_path: Path, admin_token: str) -> Iterator[Registry]:
    """The registry under test (cargohold unless CARGOHOLD_TEST_REGISTRY says otherwise), always stopped."""
    proc: Registry
    if os.environ.get("CARGOHOLD_TEST_REGISTRY") == "docker-registry":
        require_tools("docker-registry")
        proc = RefRegistry(tmp_path / "data").start()
    else:
        proc = InProcessServer(data_dir=tmp_path / "data", admin_token=admin_token).start()
    try:
        yield proc
    finally:
        proc.stop()


def creds(token: str) -> str:
    """The ``user:password`` pair skopeo's ``--*-creds`` flags take."""
    return f"{TOKEN_USER}:{token}"


def skopeo_copy(src: str, dest: str, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``skopeo copy`` that never rewrites content: digests in must equal digests out.

    ``--preserve-digests`` stops skopeo from recompressing our uncompressed tar layers on push, and
    ``--dest-oci-accept-uncompressed-layers`` stops it from gzipping them again when writing a layout.
    Credentials are passed on both sides; skopeo only sends them when the registry asks.
    """
    args = ["skopeo", "--insecure-policy", "copy", "--preserve-digests", *extra]
    if src.startswith("docker://"):
        args += ["--src-tls-verify=false", "--src-creds", creds(token)]
    if dest.startswith("docker://"):
        args += ["--dest-tls-verify=false", "--dest-creds", creds(token)]
    if dest.startswith("oci:"):
        args.append("--dest-oci-accept-uncompressed-layers")
    return run(*args, src, dest)


def layout_blob_digests(layout_dir: Path) -> set[Digest]:
    """Every blob in a layout, after checking each file really hashes to its name."""
    layout = OCILayout.open(layout_dir)
    digests = set(layout.iter_blobs())
    for digest in digests:
        for _ in layout.iter_blob(digest):  # raises BlobVerificationError on mismatch
            pass
    return digests


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def index_entry(layout_dir: Path, ref: str) -> dict[str, object]:
    """The raw index.json entry named ``ref`` (as another tool wrote it)."""
    index = json.loads((layout_dir / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            return entry
    raise AssertionError(f"{layout_dir}/index.json has no entry named {ref!r}: {index}")
