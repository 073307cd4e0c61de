"""End-to-end demo: a real registry, real images, real clients, and proof that nothing changed in transit.

Run through scripts/demo.sh (which installs what is missing). Steps:
start `cargohold serve` on a free loopback port -> generate a sample image and a two-platform index ->
push both with skopeo -> pull them back with skopeo -> compare every digest -> unpack with umoci.
Exits non-zero on any mismatch; the server is always stopped, the temporary directory always removed.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from cargohold.sample import write_sample_image, write_sample_index

MiB = 1 << 20
TOKEN_USER = "x-token"  # noqa: S105 - the fixed Basic-auth user name for token auth, not a secret


class DemoFailure(Exception):
    """A step did not produce what it must; the message says which and why."""


def step(number: int, text: str) -> None:
    print(f"\n[{number}] {text}", flush=True)


def detail(text: str) -> None:
    print(f"    {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(*args: str) -> str:
    """Run a tool and return its stdout; a non-zero exit becomes a DemoFailure with the tool's stderr."""
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DemoFailure(f"{' '.join(args[:3])} ... failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def skopeo_copy(src: str, dest: str, token: str, *extra: str) -> None:
    """Copy without letting skopeo rewrite anything (no recompression, digests preserved)."""
    args = ["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests", *extra]
    if src.startswith("docker://"):
        args += ["--src-tls-verify=false", "--src-creds", f"{TOKEN_USER}:{token}"]
    if dest.startswith("docker://"):
        args += ["--dest-tls-verify=false", "--dest-creds", f"{TOKEN_USER}:{token}"]
    if dest.startswith("oci:"):
        args.append("--dest-oci-accept-uncompressed-layers")
    run(*args, src, dest)


def start_server(data_dir: Path, port: int, token: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CARGOHOLD_ADMIN_TOKEN": token}
    cmd = [sys.executable, "-m", "cargohold", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoFailure(f"cargohold serve exited early:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(proc)
    raise DemoFailure(f"cargohold serve did not become healthy in 20s:\n{log_path.read_text(errors='replace')}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pulled_ref_digest(layout_dir: Path, ref: str) -> Digest:
    return OCILayout.open(layout_dir).resolve(ref).digest


def compare(what: str, expected: set[Digest], layout_dir: Path) -> None:
    """Every expected blob must be present in the pulled layout and hash to its digest; nothing extra."""
    layout = OCILayout.open(layout_dir)
    present = set(layout.iter_blobs())
    for digest in sorted(present, key=str):
        for _ in layout.iter_blob(digest):  # raises BlobVerificationError on any corrupt byte
            pass
    if present != expected:
        raise DemoFailure(
            f"{what}: pulled blobs differ: missing {sorted(map(str, expected - present))}, "
            f"unexpected {sorted(map(str, present - expected))}"
        )
    detail(f"{what}: all {len(expected)} blobs present and verified byte-identical")


def demo(work: Path) -> None:
    token = secrets.token_urlsafe(24)
    port = free_port()
    host = f"127.0.0.1:{port}"
    log_path = work / "server.log"

    step(1, f"Starting cargohold serve on {host} (data dir {work / 'data'})")
    server = start_server(work / "data", port, token, log_path)
    try:
        detail("healthy: GET /healthz -> 200")

        step(2, "Generating deterministic sample images with cargohold.sample")
        image = write_sample_image(work / "image", layers=3, layer_size=2 * MiB, seed=42)
        detail(f"image  {image.manifest.digest}  ({len(image.layers)} layers x 2 MiB, linux/amd64)")
        index = write_sample_index(work / "multi", layers=2, layer_size=1 * MiB, seed=42, attestations=True)
        detail(f"index  {index.index.digest}  (linux/amd64 + linux/arm64 + 2 attestation manifests)")

        step(3, "Pushing both into cargohold with skopeo (as a CI build job would)")
        t0 = time.monotonic()
        skopeo_copy(f"oci:{work / 'image'}:latest", f"docker://{host}/demo/app:build-1", token)
        skopeo_copy(f"oci:{work / 'multi'}:latest", f"docker://{host}/demo/multi:build-1", token, "--all")
        detail(f"pushed demo/app:build-1 and demo/multi:build-1 in {time.monotonic() - t0:.1f}s")

        step(4, "Pulling them back out into fresh OCI layouts (as matrix test jobs would)")
        skopeo_copy(f"docker://{host}/demo/app:build-1", f"oci:{work / 'pulled-app'}:pulled", token)
        skopeo_copy(f"docker://{host}/demo/multi:build-1", f"oci:{work / 'pulled-multi'}:pulled", token, "--all")
        detail("pulled both")

        step(5, "Comparing digests: what came out must be byte-identical to what went in")
        for what, expected, layout_dir in [
            ("image", image.manifest.digest, work / "pulled-app"),
            ("index", index.index.digest, work / "pulled-multi"),
        ]:
            got = pulled_ref_digest(layout_dir, "pulled")
            if got != expected:
                raise DemoFailure(f"{what}: pulled manifest digest {got} != pushed {expected}")
            detail(f"{what}: manifest digest matches {expected}")
        compare("image", image.digests, work / "pulled-app")
        compare("index", index.digests, work / "pulled-multi")

        step(6, "Unpacking the pulled image with umoci (rootless) and reading a file from a layer")
        bundle = work / "bundle"
        run("umoci", "unpack", "--rootless", "--image", f"{work / 'pulled-app'}:pulled", str(bundle))
        for path, content in image.info_files.items():
            actual = (bundle / "rootfs" / path).read_bytes()
            if actual != content:
                raise DemoFailure(f"unpacked {path} has unexpected content: {actual!r}")
        first = next(iter(image.info_files))
        detail(f"rootfs/{first}: {image.info_files[first].decode().splitlines()[0]!r} ... as generated")
    finally:
        stop_server(server)
        print(f"\n    server stopped (exit code {server.returncode})", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cargohold-demo-") as tmp:
        try:
            demo(Path(tmp))
        except DemoFailure as exc:
            print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
            log = Path(tmp) / "server.log"
            if log.exists():
                print(f"--- last lines of the server log ---\n{log.read_text(errors='replace')[-3000:]}",
                      file=sys.stderr)
            return 1
    print("\nDEMO OK: pushed, pulled, verified byte-identical and unpacked; no Docker, no network.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
