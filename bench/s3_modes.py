"""Filesystem vs S3 with redirects vs S3 streamed through the server: server CPU per GB served, wall times.

Not a test. In one run, on one generated image (default 5 x 100 MiB layers of random bytes), for each mode:

* ``filesystem``: ``cargohold serve`` with blobs in its data dir (sendfile);
* ``s3-redirect``: ``--storage-url s3://…`` (moto, tests/s3server.py), blob GETs answer 307 to a presigned URL;
* ``s3-stream``: the same with ``--blob-redirect off``: every byte passes through the server.

Each mode gets a fresh ``cargohold serve`` child process (and a fresh bucket). The image is pushed with five
concurrent chunked uploads (16 MiB PATCHes, as the Cargohold client sends them), then pulled by ``--pulls``
concurrent ``curl`` processes (each fetches every layer, following redirects as registry clients do; curl
keeps our client CPU out of Python). Measured from ``/proc/<pid>/stat`` before and after each phase: the
server process's CPU seconds (all its threads) and, separately, moto's, because moto is a slow Python stand-in
for a real object store and its CPU says nothing about Cargohold's.

    python bench/s3_modes.py                        # 5 x 100 MiB, 20 pulls
    python bench/s3_modes.py --layer-mb 20 --pulls 5

Targets (issue 13): with redirects, the server's CPU for the pull is under 10% of filesystem mode's; a push
to S3 takes at most 1.5x the filesystem's time.

The push target is also measured against what moto alone costs, because moto, not Cargohold, sets the pace
there (its CPU is shown). Two floors, written straight to moto with boto3 by five threads, no Cargohold
involved, same bytes:

* ``moto floor, same layout``: each layer as the 8 MiB part objects Cargohold stages, then assembled into one
  object by a multipart upload of server-side copies, as Cargohold's commit does;
* ``moto floor, one multipart upload``: each 16 MiB chunk as one ``UploadPart`` of a multipart upload completed
  at the end: the least any S3 layout can ask of the store for a chunked upload (it cannot be resumed on
  another replica, which is why Cargohold stages readable objects; see cargohold.storage.s3).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cargohold.storage.s3 import PART_SIZE, s3_client  # noqa: E402
from processes import ManagedProcess, free_port  # noqa: E402
from registry_bench import tree_cpu_seconds  # noqa: E402
from s3server import S3Server  # noqa: E402

MiB = 1 << 20
CHUNK = 16 * MiB
MODES = ("filesystem", "s3-redirect", "s3-stream")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` and every process below it (``cargohold serve`` forks one worker
    per CPU by default; the supervisor itself does almost nothing)."""
    return tree_cpu_seconds(psutil.Process(pid))


@dataclass
class Server(ManagedProcess):
    name = "cargohold serve"
    data_dir: Path
    args: list[str]
    env: dict[str, str]
    token: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        command = [sys.executable, "-m", "cargohold", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--no-access-log", "--gc-interval", "0", *self.args]
        self.launch(
            command,
            log_path=self.data_dir.parent / f"serve-{self.port}.log",
            health_url=f"{self.url}/healthz",
            env={"CARGOHOLD_ADMIN_TOKEN": self.token, **self.env},
            timeout=60,
        )
        return self


def push_layer(url: str, token: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=url, auth=("x-token", token), timeout=300) as http:
        started = http.post(f"/v2/{repo}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["Location"]
        for start in range(0, len(data), CHUNK):
            piece = data[start : start + CHUNK]
            answer = http.patch(
                location,
                content=piece,
                headers={
                    "Content-Range": f"{start}-{start + len(piece) - 1}",
                    "Content-Type": "application/octet-stream",
                },
            )
            answer.raise_for_status()
            location = answer.headers["Location"]
        http.put(location, params={"digest": digest}).raise_for_status()
    return digest


def pull(url: str, token: str, repo: str, digests: list[str], sizes: list[int]) -> None:
    command = ["curl", "-sSfL", "-u", f"x-token:{token}", "-w", "%{size_download}\n"]
    for digest in digests:
        command += ["-o", "/dev/null", f"{url}/v2/{repo}/blobs/{digest}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    got = [int(line) for line in result.stdout.split()]
    if got != sizes:
        raise RuntimeError(f"pulled sizes {got}, expected {sizes}")


def run_mode(mode: str, layers: list[bytes], pulls: int, work: Path, moto: S3Server) -> dict[str, float]:
    token = secrets.token_urlsafe(24)
    args: list[str] = []
    env: dict[str, str] = {}
    if mode != "filesystem":
        bucket = f"bench-{secrets.token_hex(4)}"
        moto.create_bucket(bucket)
        env = moto.environment(work / "aws")
        args = ["--storage-url", f"s3://{bucket}/registry", "--blob-redirect", "on" if mode == "s3-redirect" else "off"]
    server = Server(data_dir=work / mode / "data", args=args, env=env, token=token)
    (work / mode).mkdir()
    server.start()
    assert server.process is not None and moto.process is not None
    try:
        repo = "bench/sample"
        server_cpu, moto_cpu, wall = cpu_seconds(server.process.pid), cpu_seconds(moto.process.pid), time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(layers)) as pool:
            digests = list(pool.map(lambda data: push_layer(server.url, token, repo, data), layers))
        push = {
            "push_wall": time.monotonic() - wall,
            "push_server_cpu": cpu_seconds(server.process.pid) - server_cpu,
            "push_moto_cpu": cpu_seconds(moto.process.pid) - moto_cpu,
        }
        sizes = [len(data) for data in layers]
        server_cpu, moto_cpu, wall = cpu_seconds(server.process.pid), cpu_seconds(moto.process.pid), time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(pulls) as pool:
            list(pool.map(lambda _: pull(server.url, token, repo, digests, sizes), range(pulls)))
        served_gb = pulls * sum(sizes) / 1e9
        return {
            **push,
            "pull_wall": time.monotonic() - wall,
            "pull_server_cpu": cpu_seconds(server.process.pid) - server_cpu,
            "pull_moto_cpu": cpu_seconds(moto.process.pid) - moto_cpu,
            "served_gb": served_gb,
        }
    finally:
        server.stop()


def moto_floor(layers: list[bytes], moto: S3Server, work: Path, *, multipart: bool) -> dict[str, float]:
    """Write ``layers`` to a fresh bucket with boto3 alone (see the module docstring): wall time and moto CPU."""
    bucket = f"floor-{secrets.token_hex(4)}"
    moto.create_bucket(bucket)
    saved = dict(os.environ)
    os.environ.update(moto.environment(work / "aws"))
    try:
        client = s3_client()
    finally:
        os.environ.clear()
        os.environ.update(saved)

    def staged_then_assembled(index: int) -> None:
        data, key, copies = layers[index], f"blob-{index}", []
        for offset in range(0, len(data), PART_SIZE):
            client.put_object(
                Bucket=bucket, Key=f"staged-{index}/{offset:016d}", Body=data[offset : offset + PART_SIZE]
            )
            copies.append(f"staged-{index}/{offset:016d}")
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, source in enumerate(copies, start=1):
            copy = {"Bucket": bucket, "Key": source}
            answer = client.upload_part_copy(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, CopySource=copy
            )
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})

    def one_multipart_upload(index: int) -> None:
        data, key = layers[index], f"blob-{index}"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, offset in enumerate(range(0, len(data), CHUNK), start=1):
            body = data[offset : offset + CHUNK]
            answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})

    assert moto.process is not None
    moto_cpu, wall = cpu_seconds(moto.process.pid), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(layers)) as pool:
        list(pool.map(one_multipart_upload if multipart else staged_then_assembled, range(len(layers))))
    result = {"push_wall": time.monotonic() - wall, "push_moto_cpu": cpu_seconds(moto.process.pid) - moto_cpu}
    moto.drop_bucket(bucket)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=100)
    parser.add_argument("--pulls", type=int, default=20)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cargohold-s3-modes-"))
    layers = [os.urandom(options.layer_mb * MiB) for _ in range(options.layers)]
    moto = S3Server(base_dir=work).start()
    results: dict[str, dict[str, float]] = {}
    floors: dict[str, dict[str, float]] = {}
    try:
        for mode in MODES:
            results[mode] = run_mode(mode, layers, options.pulls, work, moto)
            print(f"{mode}: {results[mode]}", file=sys.stderr, flush=True)
        for name, multipart in (("moto floor, same layout", False), ("moto floor, one multipart upload", True)):
            floors[name] = moto_floor(layers, moto, work, multipart=multipart)
            print(f"{name}: {floors[name]}", file=sys.stderr, flush=True)
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(
        f"\n{options.layers} x {options.layer_mb} MiB, {options.pulls} concurrent pulls "
        f"({results['filesystem']['served_gb']:.2f} GB served per mode), load average {load:.1f}\n"
    )
    print(
        "| mode | push wall s | push server CPU s | push moto CPU s | pull wall s | pull server CPU s "
        "| server CPU s/GB | pull moto CPU s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['push_wall']:.1f} | {r['push_server_cpu']:.1f} | {r['push_moto_cpu']:.1f} | "
            f"{r['pull_wall']:.1f} | {r['pull_server_cpu']:.2f} | {r['pull_server_cpu'] / r['served_gb']:.3f} | "
            f"{r['pull_moto_cpu']:.1f} |"
        )
    for name, floor in floors.items():
        print(f"| {name} | {floor['push_wall']:.1f} | - | {floor['push_moto_cpu']:.1f} | - | - | - | - |")
    fs, redirect, stream = results["filesystem"], results["s3-redirect"], results["s3-stream"]
    same_layout, multipart = floors["moto floor, same layout"], floors["moto floor, one multipart upload"]
    print()
    print(
        f"pull server CPU, s3-redirect / filesystem: {redirect['pull_server_cpu'] / fs['pull_server_cpu']:.3f} "
        "(target < 0.10)"
    )
    print(f"pull server CPU, s3-stream / filesystem: {stream['pull_server_cpu'] / fs['pull_server_cpu']:.2f}")
    print(f"push wall, s3 / filesystem: {redirect['push_wall'] / fs['push_wall']:.2f} (target <= 1.5)")
    print(f"push wall, s3-stream run / filesystem: {stream['push_wall'] / fs['push_wall']:.2f}")
    print(f"push wall, s3 / moto floor with the same layout: {redirect['push_wall'] / same_layout['push_wall']:.2f}")
    print(
        f"push wall, moto floor with one multipart upload / filesystem: {multipart['push_wall'] / fs['push_wall']:.2f}"
    )


if __name__ == "__main__":
    main()
