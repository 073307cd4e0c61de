"""A private nginx for tests that put a reverse proxy in front of Cargohold (deploy/nginx, replicas).

nginx runs in the foreground under a prefix directory of its own (pid file, logs, temp paths, all private), and
is always stopped: gracefully (SIGQUIT), then killed if it lingers.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from processes import stop_process

TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@contextmanager
def private_nginx(
    prefix: Path, http_config: str, ready_url: str, *, verify: ssl.SSLContext | bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """Run nginx with ``http_config`` inside its ``http {}`` block until ``ready_url`` answers 200; yield it."""
    temp = prefix / "nginx-temp"
    temp.mkdir()
    main = prefix / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/nginx-error.log;\n"
        + ("user root root;\n" if os.geteuid() == 0 else "")
        + "events {}\nhttp {\n"
        + f"  access_log {prefix}/nginx-access.log;\n"
        + "".join(f"  {kind}_temp_path {temp / kind};\n" for kind in TEMP_PATHS)
        + http_config
        + "}\n"
    )
    nginx = subprocess.Popen(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(prefix), "-c", str(main)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(ready_url, verify=verify, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert nginx.poll() is None, (prefix / "nginx-error.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.05)
        yield nginx
    finally:
        stop_process(nginx, signal.SIGQUIT)
