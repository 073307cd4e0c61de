"""The main job on the embedded default, end to end: serve, save, pull, push — with real clients only.

Run through scripts/demo.sh (which installs what is missing). Steps: start `cargohold serve` (SQLite + the
filesystem store) -> `cargohold login` and create a project -> generate a two-platform image with
attestations (standing in for `docker build`) -> `cargohold save` it under a build ID -> `cargohold pull` it
in three parallel "matrix jobs" and unpack one with umoci -> `cargohold push` it to a CNCF reference
registry standing in for the final registry, checked with skopeo -> re-save it and show nothing uploads ->
sign in to the web dashboard with a new project token and find the build. It ends by printing the dashboard's
URL and that token (``--keep-serving`` keeps the server up to browse it; Ctrl-C stops it).
Exits non-zero on any mismatch; servers are always stopped, the temporary directory always removed.
"""

from __future__ import annotations

import contextlib
import json
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
from cargohold.sample import write_sample_index

MiB = 1 << 20


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


def start_server(data_dir: Path, port: int, token: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CARGOHOLD_ADMIN_TOKEN": token}
    cmd = [
        sys.executable,
        "-m",
        "cargohold",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        # The demo's final registry listens on loopback; a real server reaches public registries by default.
        "--push-allow-network",
        "127.0.0.0/8",
    ]
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


def cargohold(*args: str, env: dict[str, str]) -> str:
    """Run the real ``cargohold`` CLI, exactly as a user or a CI job types it; echo the command."""
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    detail(f"$ cargohold {shown}")
    proc = subprocess.run(
        [sys.executable, "-m", "cargohold", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise DemoFailure(f"cargohold {args[0]} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def start_reference_registry(root: Path, port: int) -> subprocess.Popen[bytes]:
    """The CNCF reference registry stands in for the team's final registry (GHCR, ECR, Harbor...)."""
    root.mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(root / "registry.log", "ab") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(proc)
    raise DemoFailure("the reference registry (docker-registry) did not start")


def check_dashboard(url: str, token: str, build_id: str) -> None:
    """Sign in to the dashboard like a browser and find the build on its page."""
    with httpx.Client(base_url=url, timeout=30) as browser:
        signed_in = browser.post("/ui/sign-in", data={"token": token})
        if signed_in.status_code != 303 or "cargohold_session" not in browser.cookies:
            raise DemoFailure(f"signing in to the dashboard failed: HTTP {signed_in.status_code}")
        page = browser.get(f"/ui/builds/{build_id}")
        if page.status_code != 200 or f"cargohold pull {build_id}" not in page.text:
            raise DemoFailure(f"the dashboard does not show build {build_id}: HTTP {page.status_code}")


def demo(work: Path, keep_serving: bool = False) -> tuple[str, str]:
    """Run the demo; returns the dashboard's URL and a token to sign in with."""
    admin = secrets.token_urlsafe(24)
    port, final_port = free_port(), free_port()
    url, final = f"http://127.0.0.1:{port}", f"127.0.0.1:{final_port}"
    env = {**os.environ, "CARGOHOLD_CONFIG": str(work / "cli-config.json"), "CARGOHOLD_PROGRESS": "plain"}

    step(1, f"Starting cargohold serve on {url} (embedded SQLite + filesystem store in {work / 'data'})")
    server = start_server(work / "data", port, admin, work / "server.log")
    reference = None
    try:
        detail("healthy: GET /healthz -> 200")

        step(2, "Logging in and creating a project (an admin does this once)")
        proc = subprocess.run(
            [sys.executable, "-m", "cargohold", "login", url, "--password-stdin"],
            input=admin,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise DemoFailure(f"cargohold login failed: {proc.stderr.strip()}")
        detail(f"$ cargohold login {url} --password-stdin   ({proc.stdout.strip().splitlines()[-1]})")
        project = json.loads(cargohold("projects", "create", "demo-app", "--json", env=env))["id"]
        detail(f"project {project}: its registry is 127.0.0.1:{port}/{project}")
        env["CARGOHOLD_PROJECT_ID"] = project

        step(3, "Building an image (a generated two-platform image with attestations stands in for docker build)")
        index = write_sample_index(work / "built", layers=2, layer_size=2 * MiB, seed=42, attestations=True)
        detail(f"index {index.index.digest}: linux/amd64 + linux/arm64 + 2 attestation manifests")

        step(4, "Saving it once, under a build ID (the CI build job)")
        t0 = time.monotonic()
        saved = json.loads(
            cargohold(
                "save",
                f"oci:{work / 'built'}:latest",
                "--save-tag",
                "main",
                "--metadata-file",
                str(work / "build.json"),
                "--json",
                env=env,
            )
        )
        build_id = saved["build_id"]
        detail(
            f"build {build_id} -> {saved['reference']} in {time.monotonic() - t0:.1f}s, "
            f"{saved['uploaded_size']} bytes uploaded"
        )
        metadata = json.loads((work / "build.json").read_text())
        detail(
            f"build.json: containerimage.digest={metadata['containerimage.digest']}, "
            f"cargohold.build.buildID={metadata['cargohold.build']['buildID']}"
        )
        if saved["digest"] != str(index.index.digest):
            raise DemoFailure(f"saved digest {saved['digest']} != built {index.index.digest}")

        step(5, "Pulling that exact build in three 'matrix jobs' at once (no rebuild, no Docker)")
        detail(f"$ cargohold pull {build_id} --platform <os/arch> --output oci:<dir>   (3 jobs in parallel)")
        jobs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cargohold",
                    "pull",
                    build_id,
                    "--platform",
                    platform,
                    "--output",
                    f"oci:{work / f'job-{n}'}",
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for n, platform in enumerate(["linux/amd64", "linux/arm64", "linux/amd64"])
        ]
        for n, job in enumerate(jobs):
            out, err = job.communicate(timeout=300)
            if job.returncode != 0:
                raise DemoFailure(f"matrix job {n} failed: {err.strip()}")
            pulled = json.loads(out)
            detail(f"job {n}: {pulled['platform']} {pulled['digest']} verified")
        amd64 = next(image for image in index.images if image.platform == ("linux", "amd64"))
        compare("job 0 (linux/amd64)", amd64.digests, work / "job-0")
        bundle = work / "bundle"
        entry = OCILayout.open(work / "job-0").read_index()["manifests"][0]
        ref = entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        run("umoci", "unpack", "--rootless", "--image", f"{work / 'job-0'}:{ref}", str(bundle))
        detail(f"umoci unpacked it: rootfs/ holds {sorted(p.name for p in (bundle / 'rootfs').iterdir())}")

        step(6, "Tests passed: pushing the build to the final registry (no rebuild, no layers on disk)")
        reference = start_reference_registry(work / "final", final_port)
        detail(f"final registry: the CNCF reference registry on {final}")
        pushed = json.loads(cargohold("push", build_id, "-t", f"{final}/team/app:1.0", "--json", env=env))
        digest = pushed["digests"][f"{final}/team/app:1.0"]
        inspected = run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{final}/team/app:1.0")
        if Digest.of(inspected.encode()) != index.index.digest or digest != str(index.index.digest):
            raise DemoFailure(f"the final registry holds {Digest.of(inspected.encode())}, not {index.index.digest}")
        detail(f"skopeo inspect {final}/team/app:1.0 -> {digest}: identical to what was built")
        by_server = pushed["results"][0]["server_pushed"]
        detail(
            f"{by_server} of {pushed['results'][0]['uploaded']} blobs were uploaded by the Cargohold server "
            "itself: no layer byte passed through this job"
        )

        step(7, "Saving the unchanged image again: nothing but manifests travels")
        again = json.loads(cargohold("save", f"oci:{work / 'built'}:latest", "--json", env=env))
        detail(f"build {again['build_id']}: {again['uploaded_size']} layer bytes uploaded")
        if again["uploaded_size"] != 0:
            raise DemoFailure("an unchanged re-save uploaded layer bytes")

        step(8, "The web dashboard: the same builds, in a browser")
        created = json.loads(cargohold("tokens", "create", "--name", "dashboard", "--expires", "1d", "--json", env=env))
        check_dashboard(url, created["token"], build_id)
        detail(f"$ cargohold tokens create --name dashboard --expires 1d   (a project token: sees {project} only)")
        detail(f"signed in over HTTP and found build {build_id} on its page")
        dashboard = (url, created["token"])
        if keep_serving:
            print(f"\nDashboard: {url}/ui/\nSign in with: {created['token']}\n(Ctrl-C stops the server)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    finally:
        if reference is not None:
            stop_server(reference)
        stop_server(server)
        print(f"\n    servers stopped (cargohold exit code {server.returncode})", flush=True)
    return dashboard


def main() -> int:
    keep_serving = "--keep-serving" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="cargohold-demo-") as tmp:
        try:
            url, token = demo(Path(tmp), keep_serving)
        except DemoFailure as exc:
            print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
            log = Path(tmp) / "server.log"
            if log.exists():
                print(
                    f"--- last lines of the server log ---\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr
                )
            return 1
    print("\nDEMO OK: served, saved once, pulled three times, pushed; every digest identical. No Docker, no network.")
    print(f"Dashboard: {url}/ui/   sign in with: {token}")
    if not keep_serving:
        print("(the demo's server has stopped: run scripts/demo.sh --keep-serving to browse it afterwards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
