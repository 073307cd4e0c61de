"""Shared fixtures: a real `cargohold serve` process on a free loopback port, always stopped."""

from __future__ import annotations

import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from processes import ManagedProcess, free_port

# Session-scoped servers live in plugins so each starts once per session, not once per module importing it.
pytest_plugins = ["pgcluster", "s3server", "browser"]


@dataclass
class ServerProcess(ManagedProcess):
    """A `cargohold serve` child process bound to 127.0.0.1."""

    name = "cargohold serve"

    data_dir: Path
    port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    umask: int = -1
    """The child's umask (-1: inherit this process's)."""
    ca_cert: Path | None = None
    """Set for a server started with ``--tls-cert``: the CA to verify it with (its URLs are then https)."""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_cert else 'http'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """``host:port`` as image references and skopeo want it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "cargohold",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        self.launch(
            cmd,
            log_path=self.data_dir.parent / f"server-{self.port}.log",
            health_url=f"{self.url}/healthz",
            env={"CARGOHOLD_ADMIN_TOKEN": self.admin_token, **self.env},
            timeout=timeout,
            umask=self.umask,
            verify=self.verify(),
        )
        return self

    def verify(self) -> bool | ssl.SSLContext:
        """What httpx should verify this server's certificate with."""
        return ssl.create_default_context(cafile=str(self.ca_cert)) if self.ca_cert else True

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        """An httpx client with the registry's base URL, authenticated as admin unless ``token`` is given."""
        auth = httpx.BasicAuth("x-token", token or self.admin_token)
        kwargs.setdefault("verify", self.verify())
        return httpx.Client(base_url=self.url, timeout=30, auth=auth, **kwargs)  # type: ignore[arg-type]

    def anonymous(self, **kwargs: object) -> httpx.Client:
        kwargs.setdefault("verify", self.verify())
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh registry with its own empty data directory."""
    proc = ServerProcess(data_dir=tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="session")
def session_dockerd() -> Iterator[str]:
    """One private dockerd for the tests that only need a daemon (the image build, the nginx front);
    yields its DOCKER_HOST. Skips, saying why, where dockerd cannot run (see test_images_docker)."""
    from test_images_docker import private_dockerd

    with private_dockerd() as host:
        yield host
