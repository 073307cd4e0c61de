#!/usr/bin/env python3
"""What the free-space admission costs an upload: the same blobs into two servers, one with the check, one
without (``--min-free-space 0``), in the same run, interleaved so machine noise hits both alike.

Each round uploads one blob into each server twice: once announced (``Content-Length``: one ``statvfs`` per
request plus one every few MiB) and once streamed without a length (the body claims free space a few MiB at
a time). It prints MiB/s per server and mode and the ratio (checked / unchecked); 1.00 means no cost.

    python bench/space_bench.py --size-mib 256 --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

MIB = 1 << 20


def start(data_dir: Path, port: int, token: str, min_free: str | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "cargohold", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    args += ["--no-access-log", "--log-level", "warning"]
    if min_free is not None:
        args += ["--min-free-space", min_free]
    proc = subprocess.Popen(args, env={**os.environ, "CARGOHOLD_ADMIN_TOKEN": token})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upload(url: str, token: str, data: bytes, *, announced: bool) -> float:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(view), MIB):
            yield bytes(view[start : start + MIB])

    with httpx.Client(base_url=url, auth=("x-token", token), timeout=300) as http:
        location = http.post("/v2/bench/space/blobs/uploads/").headers["Location"]
        started = time.perf_counter()
        body = data if announced else chunks()
        response = http.patch(location, content=body)
        assert response.status_code == 202, response.text
        assert http.put(location, params={"digest": digest}).status_code == 201
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="space-bench-") as tmp:
        servers = {
            "checked": (free_port(), None),
            "unchecked": (free_port(), "0"),
        }
        procs = {name: start(Path(tmp) / name, port, token, flag) for name, (port, flag) in servers.items()}
        try:
            times: dict[tuple[str, str], list[float]] = {}
            for round_number in range(options.rounds):
                data = os.urandom(options.size_mib * MIB)  # fresh bytes: no upload is a re-upload
                for mode in ("announced", "streamed"):
                    order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
                    for name in order:
                        url = f"http://127.0.0.1:{servers[name][0]}"
                        times.setdefault((name, mode), []).append(
                            upload(url, token, data, announced=mode == "announced")
                        )
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(timeout=20)
    print(f"{options.rounds} rounds of {options.size_mib} MiB per server and mode (median MiB/s)")
    for mode in ("announced", "streamed"):
        rates = {name: options.size_mib / statistics.median(times[(name, mode)]) for name in servers}
        print(
            f"  {mode:<10} checked {rates['checked']:7.1f}  unchecked {rates['unchecked']:7.1f}  "
            f"ratio {rates['checked'] / rates['unchecked']:.3f}"
        )


if __name__ == "__main__":
    main()
