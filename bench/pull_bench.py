"""``cargohold pull`` into a fresh Docker daemon against ``docker pull`` of the same image, in one run.

Not a test. One generated image (default 5 x 100 MiB of random bytes) is saved to a Cargohold server and
pushed to the CNCF reference registry (``docker-registry``); then, for every round, each variant pulls it
into a **fresh** private dockerd (its own data root, started and stopped around the pull, so no variant
finds a layer another one left):

* ``docker``: ``docker pull <reference registry>/bench/sample:latest`` (the yardstick);
* ``cargohold``: ``cargohold pull <build> -t bench/sample:ci`` (the daemon pulls from Cargohold itself);
* ``before`` (with ``--before REV``, default ``main``): the same command with that revision's client, which
  streamed a docker-archive into ``POST /images/load``.

The order of the variants alternates between rounds (a machine getting busier does not always hurt the same
one). Every pulled image is checked: its image ID must be the generated image's config digest. Prints one
line per pull and the medians with the ratio to ``docker pull`` (the issue's target: at most 1.05x).

    python bench/pull_bench.py                               # 5 x 100 MiB, 3 rounds
    python bench/pull_bench.py --layer-mb 10 --rounds 5      # small layers, more rounds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cargohold.client.control import ControlClient
from cargohold.images.docker import DockerEngine
from registry_bench import BenchError, CargoholdServer, ReferenceRegistry, Skopeo, generate_image, log, run_checked

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def fresh_dockerd(work: Path, storage_driver: str) -> Iterator[str]:
    """A private dockerd with an empty data root; yields its DOCKER_HOST. Always stopped and removed."""
    root = Path(tempfile.mkdtemp(prefix="chpb-", dir=work))
    host = f"unix://{root}/docker.sock"
    log_path = root / "dockerd.log"
    command = [
        "dockerd",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "-H",
        host,
        "--storage-driver",
        storage_driver,
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise BenchError(f"dockerd exited {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
            with DockerEngine(host) as engine:
                if engine.ping():
                    break
            if time.monotonic() > deadline:
                raise BenchError("dockerd did not answer within 60 s")
            time.sleep(0.1)
        yield host
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def image_id(host: str, name: str) -> str:
    with DockerEngine(host) as engine:
        inspected = engine.inspect_image(name)
    if inspected is None:
        raise BenchError(f"the daemon has no {name} after the pull")
    return str(inspected["Id"])


def old_client(revision: str, into: Path) -> Path:
    """``src/`` of ``revision``, to run that revision's ``cargohold pull`` with ``PYTHONPATH``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--storage-driver", default="overlay2")
    parser.add_argument("--before", default="main", help="revision whose client is the 'before' variant ('' skips)")
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    for tool in ("dockerd", "docker", "docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (scripts/bootstrap.sh installs it)")
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cargohold-pull-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        image = generate_image(work / "layout", args.layers, args.layer_mb, args.seed)
        config_digest = _config_digest(work / "layout")
        cargohold = CargoholdServer(work / "cargohold").start()
        reference = ReferenceRegistry(work / "reference").start()
        try:
            with ControlClient(cargohold.url, cargohold.token) as admin:
                project = str(admin.create_project("pull-bench").id)
            env = {
                **os.environ,
                "CARGOHOLD_REGISTRY": cargohold.url,
                "CARGOHOLD_TOKEN": cargohold.token,
                "CARGOHOLD_PROJECT_ID": project,
                "XDG_CONFIG_HOME": str(work / "xdg"),
            }
            saved = subprocess.run(
                [sys.executable, "-m", "cargohold", "save", f"oci:{image.layout}", "--json", "--progress", "quiet"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            build_id = json.loads(saved.stdout)["build_id"]
            skopeo = Skopeo(work)
            home = work / "skopeo-home"
            run_checked(
                skopeo.command(home, skopeo.push_args(image, reference, work / "digest")),
                skopeo.private_env(home),
                work / "skopeo-push.log",
                "pushing to the reference registry",
            )
            commands = {
                "docker": lambda host: (
                    ["docker", "-H", host, "pull", "--quiet", f"{reference.host}/bench/sample:latest"],
                    dict(os.environ),
                    f"{reference.host}/bench/sample:latest",
                ),
                "cargohold": lambda host: (
                    [
                        sys.executable,
                        "-m",
                        "cargohold",
                        "pull",
                        build_id,
                        "-t",
                        "bench/sample:ci",
                        "--progress",
                        "quiet",
                    ],
                    {**env, "DOCKER_HOST": host},
                    "bench/sample:ci",
                ),
            }
            if args.before:
                old_src = old_client(args.before, work / "before")
                commands["before"] = lambda host: (
                    [
                        sys.executable,
                        "-m",
                        "cargohold",
                        "pull",
                        build_id,
                        "-t",
                        "bench/sample:ci",
                        "--progress",
                        "quiet",
                    ],
                    {**env, "DOCKER_HOST": host, "PYTHONPATH": str(old_src)},
                    "bench/sample:ci",
                )
            variants = list(commands)
            log(
                f"image: {args.layers} x {args.layer_mb} MiB, config {config_digest}; "
                f"storage driver {args.storage_driver}"
            )
            for round_number in range(args.rounds):
                order = variants[round_number % len(variants) :] + variants[: round_number % len(variants)]
                for variant in order:
                    with fresh_dockerd(work, args.storage_driver) as host:
                        command, command_env, name = commands[variant](host)
                        os.sync()
                        started = time.monotonic()
                        result = subprocess.run(command, env=command_env, capture_output=True, text=True, check=False)
                        elapsed = time.monotonic() - started
                        if result.returncode != 0:
                            raise BenchError(f"{variant} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
                        pulled = image_id(host, name)
                        if pulled != config_digest:
                            raise BenchError(f"{variant} pulled {pulled}, not {config_digest}")
                    times.setdefault(variant, []).append(elapsed)
                    print(f"round {round_number + 1} {variant:<9} {elapsed:6.2f}s", flush=True)
        finally:
            cargohold.stop()
            reference.stop()
    base = statistics.median(times["docker"])
    print(f"\nmedians ({args.layers} x {args.layer_mb} MiB, {args.rounds} rounds, fresh daemon per pull):")
    for variant, values in times.items():
        median = statistics.median(values)
        print(
            f"  {variant:<9} {median:6.2f}s  {median / base:.2f}x of docker pull  "
            f"(all: {', '.join(f'{v:.2f}' for v in values)})"
        )
    return 0


def _config_digest(layout: Path) -> str:
    from cargohold.oci.layout import OCILayout

    opened = OCILayout.open(layout)
    manifest = opened.read_json(opened.resolve(None).digest)
    return str(manifest["config"]["digest"])


if __name__ == "__main__":
    sys.exit(main())
