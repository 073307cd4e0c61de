"""A private containerd for tests that pull through containerd's own resolver (what Kubernetes nodes use).

containerd runs with a config of its own: root, state and socket in a temp dir, the CRI plugin off (no
Kubernetes here), images unpacked by the ``native`` snapshotter (plain directories: no overlay mounts needed).
It is always stopped: SIGTERM, then killed if it lingers. ``ctr`` talks to it over its private socket and
fetches in the ``ctr`` process with containerd's ``remotes/docker`` resolver, the code containerd's CRI
plugin pulls with.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from processes import stop_process

NAMESPACE = "cargohold-test"


@dataclass(frozen=True)
class Containerd:
    socket: Path
    log: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this daemon in the test namespace, whatever its exit status."""
        command = ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """Run ``ctr`` as :meth:`run` does; its stdout, or a test failure with its output."""
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"{' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}"
        return result.stdout


@contextmanager
def private_containerd() -> Iterator[Containerd]:
    """Start a private containerd; yield it once it answers; skip, saying why, where it cannot run."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd is not installed (apt-get install containerd)")
    root = Path(tempfile.mkdtemp(prefix="chc-", dir="/tmp"))  # short: unix socket paths are limited to 108 bytes
    socket, log = root / "c.sock", root / "containerd.log"
    config = root / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\n'
        f'state = "{root / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    daemon = Containerd(socket, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                pytest.skip(f"containerd cannot start here (exit {proc.returncode}): {' | '.join(tail)}")
            probe = subprocess.run(["ctr", "--address", str(socket), "version"], capture_output=True, timeout=10)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.skip("containerd did not answer within 30 s")
            time.sleep(0.2)
        yield daemon
    finally:
        stop_process(proc, timeout=20)
        shutil.rmtree(root, ignore_errors=True)
