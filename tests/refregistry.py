"""The CNCF reference registry (``docker-registry`` 2.8) as a test peer, on a free loopback port.

Fixtures are registered under ``name=`` (as in fixtures_images.py): a test module imports
``refregistry_fixture`` and its tests ask for ``refregistry``.

Two variants: open, and htpasswd Basic auth. The htpasswd line is produced with the C library's bcrypt
(``crypt`` module, libxcrypt on Debian) so the tests need no extra Python dependency; the registry only
accepts bcrypt hashes.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from processes import ManagedProcess, free_port

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash the Go registry accepts (``$2a$``/``$2b$`` prefix), with the cheapest cost."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated in 3.11, gone in 3.13: fine for a test helper on 3.11/3.12

        # Minimum bcrypt cost on purpose: a throwaway test password, hashed on every registry start.
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))  # noqa: S324
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("the C library's crypt() has no bcrypt; install apache2-utils or the bcrypt package")
    return hashed


@dataclass
class RefRegistry(ManagedProcess):
    """One ``docker-registry serve`` process with its own storage directory and config."""

    name = "docker-registry"

    root: Path
    users: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.root / 'storage'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: cargohold-test-secret",
        ]
        if self.users:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.users.items()))
            lines += ["auth:", "  htpasswd:", "    realm: cargohold-test", f"    path: {htpasswd}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60.0) -> RefRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(self._config())
        self.launch(
            [REGISTRY_BINARY, "serve", str(config)],
            log_path=self.root / "registry.log",
            health_url=f"{self.url}/v2/",
            healthy=(200, 401),
            timeout=timeout,
        )
        return self


def _require_binary() -> None:
    if not Path(REGISTRY_BINARY).exists():
        pytest.skip("docker-registry is not installed (scripts/bootstrap.sh installs it)")


@pytest.fixture(name="refregistry")
def refregistry_fixture(tmp_path: Path) -> Iterator[RefRegistry]:
    """An open reference registry."""
    _require_binary()
    reg = RefRegistry(tmp_path / "refreg").start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(name="refregistry2")
def refregistry2_fixture(tmp_path: Path) -> Iterator[RefRegistry]:
    """A second, independent open reference registry (registry-to-registry copies)."""
    _require_binary()
    reg = RefRegistry(tmp_path / "refreg2").start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(name="refregistry_auth")
def refregistry_auth_fixture(tmp_path: Path) -> Iterator[RefRegistry]:
    """A reference registry requiring Basic auth as ``ci`` / ``s3cret-pass``."""
    _require_binary()
    reg = RefRegistry(tmp_path / "refreg-auth", users={"ci": "s3cret-pass"}).start()
    try:
        yield reg
    finally:
        reg.stop()
