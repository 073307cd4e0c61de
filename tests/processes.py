"""Long-running peer processes for tests (our server, the reference registry): start, wait, stop, log.

Every server a test starts binds 127.0.0.1 on a free port, writes its output to a log file the test can
read on failure, and is stopped (SIGTERM, then SIGKILL after 10 s) by the fixture that started it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Container, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop ``process`` with ``how`` (the way it shuts down cleanly), then SIGKILL if it is still running after
    ``timeout`` seconds; returns once it has exited. Does nothing to a process that already exited."""
    if process.poll() is not None:
        return
    process.send_signal(how)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ManagedProcess:
    """A child process with a log file; subclasses say how to launch it and where its health check is."""

    name = "process"
    process: subprocess.Popen[bytes] | None
    log_path: Path | None

    def launch(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        health_url: str,
        healthy: Container[int] = (200,),
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
        umask: int = -1,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        """Start ``command`` (with ``umask`` unless -1) and return once ``health_url`` answers with a status in
        ``healthy`` (``verify``: httpx's, for an HTTPS health check against a test CA)."""
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, umask=umask
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            try:
                if httpx.get(health_url, timeout=1, verify=verify).status_code in healthy:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout}s:\n{self.log()}")

    def stop(self, kill: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGKILL if kill else signal.SIGTERM)

    def log(self) -> str:
        path = self.log_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""
