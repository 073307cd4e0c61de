"""Client benchmark: cargohold save / pull / push / re-save against skopeo, on the same image, in one run.

Not a test. Each phase runs the cargohold CLI and its skopeo equivalent as subprocesses against fresh
servers (so neither side benefits from the other's uploads) and prints wall times and ratios against
targets: save, pull and push at least as fast as skopeo, push at least 1.5x faster, and a re-save of an
unchanged image under one second. ``cargohold push`` lets the Cargohold server upload the blobs itself
(server-side push, the default); the same push with ``--transfer client`` (every byte through the CLI,
as skopeo does it) is printed for comparison.

Servers, image generation and the isolated skopeo invocation are bench/registry_bench.py's helpers.

    python bench/client_bench.py --layers 5 --layer-mb 100     # the full run
    python bench/client_bench.py --layer-mb 10                  # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cargohold.client.control import ControlClient
from registry_bench import (
    BenchError,
    CargoholdServer,
    ReferenceRegistry,
    Server,
    Skopeo,
    generate_image,
    log,
    tree_cpu_seconds,
    warm_page_cache,
)

CPU: dict[str, tuple[float, float, float]] = {}
"""Per phase: CPU seconds of the tool itself, of the Cargohold server(s) and of the reference registry it
talked to (filled in by :func:`timed`)."""


def timed(cmd: list[str], env: dict[str, str], what: str, servers: Sequence[Server] = ()) -> tuple[float, str]:
    """Run ``cmd``; wall seconds and stdout. A failure aborts the run with the tool's output.

    Also records the CPU the tool used and the CPU ``servers`` used meanwhile: on a 2-core machine a
    phase is often bounded by total CPU (the destination registry hashes every byte), so where the CPU
    went explains a ratio better than wall time alone.

    Dirty pages from the previous phase are flushed first (``sync``): each phase writes ~0.5 GB, and its
    writeback would otherwise land in whichever command runs next, always the same one of each pair.
    """
    os.sync()
    before_tool = _children_cpu()
    before_servers = {id(srv): tree_cpu_seconds(srv.ps) for srv in servers if srv.ps is not None}
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, check=False)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise BenchError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    used = {id(srv): tree_cpu_seconds(srv.ps) - before_servers[id(srv)] for srv in servers if srv.ps is not None}
    reference = sum(used[id(srv)] for srv in servers if isinstance(srv, ReferenceRegistry) and id(srv) in used)
    CPU[what] = (_children_cpu() - before_tool, sum(used.values()) - reference, reference)
    return elapsed, proc.stdout


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cargohold_env(server: CargoholdServer, project: str, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "CARGOHOLD_REGISTRY": server.url,
        "CARGOHOLD_TOKEN": server.token,
        "CARGOHOLD_PROJECT_ID": project,
        "XDG_CONFIG_HOME": str(home),
        "DOCKER_CONFIG": str(home / "docker"),
        "CI": "true",
    }


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cargohold", *args, "--progress", "quiet"]


def run(args: argparse.Namespace, work: Path) -> int:
    layout = work / "image"
    image = generate_image(layout, args.layers, args.layer_mb, args.seed)
    warm_page_cache(layout)
    skopeo = Skopeo(work)
    with contextlib.ExitStack() as stack:
        servers = []
        for name, cls in (
            ("cargohold-skopeo", CargoholdServer),
            ("cargohold", CargoholdServer),
            ("ref-cargohold", ReferenceRegistry),
            ("ref-skopeo", ReferenceRegistry),
        ):
            server = cls(work / name)
            (work / name).mkdir(parents=True, exist_ok=True)
            server.start()
            stack.callback(server.stop)
            servers.append(server)
        ch_skopeo, ch, ref_ch, ref_skopeo = servers
        assert isinstance(ch, CargoholdServer) and isinstance(ch_skopeo, CargoholdServer)
        with ControlClient(ch.url, ch.token) as control:
            project = str(control.create_project("bench").id)
        with ControlClient(ch_skopeo.url, ch_skopeo.token) as control:
            skopeo_project = str(control.create_project("bench").id)
        env = cargohold_env(ch, project, work / "home-cargohold")
        results: dict[str, float] = {}

        def sk(name: str, copy_args: Sequence[str], servers: Sequence[Server]) -> float:
            home = work / f"skopeo-{name}"
            seconds, _ = timed(skopeo.command(home, copy_args), skopeo.private_env(home), f"skopeo {name}", servers)
            return seconds

        log("save: cargohold save vs skopeo copy oci: -> cargohold")
        results["skopeo save"] = sk(
            "save",
            [
                *ch_skopeo.skopeo_dest_creds(),
                "--dest-tls-verify=false",
                f"oci:{layout}",
                f"docker://{ch_skopeo.host}/{skopeo_project}:s1",
            ],
            [ch_skopeo],
        )
        results["cargohold save"], out = timed(cli("save", f"oci:{layout}", "--json"), env, "cargohold save", [ch])
        saved = json.loads(out)
        build_id = saved["build_id"]

        log("pull: cargohold pull --output oci: vs skopeo copy -> oci:")
        results["skopeo pull"] = sk(
            "pull",
            [
                *ch.skopeo_src_creds(),
                "--src-tls-verify=false",
                "--dest-oci-accept-uncompressed-layers",
                f"docker://{ch.host}/{project}:{build_id}",
                f"oci:{work / 'pull-skopeo'}:x",
            ],
            [ch],
        )
        results["cargohold pull"], _ = timed(
            cli("pull", build_id, "--output", f"oci:{work / 'pull-cargohold'}"), env, "cargohold pull", [ch]
        )

        log("push: cargohold push vs skopeo copy registry -> reference registry")
        results["skopeo push"] = sk(
            "push",
            [
                *ch.skopeo_src_creds(),
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{ch.host}/{project}:{build_id}",
                f"docker://{ref_skopeo.host}/bench/app:1",
            ],
            [ch, ref_skopeo],
        )
        results["cargohold push"], out = timed(
            cli("push", build_id, "-t", f"{ref_ch.host}/bench/app:1", "--json"), env, "cargohold push", [ch, ref_ch]
        )
        pushed = json.loads(out)["results"][0]
        log(f"cargohold push: {pushed['server_pushed']} of {pushed['uploaded']} blobs uploaded by the server")
        # Not a target: the same push with every byte through the client, for comparison.
        results["cargohold push --transfer client"], _ = timed(
            cli("push", build_id, "-t", f"{ref_ch.host}/bench/app-client:1", "--transfer", "client"),
            env,
            "cargohold push (client)",
            [ch, ref_ch],
        )

        log("re-save of the unchanged image")
        results["cargohold re-save"], out = timed(
            cli("save", f"oci:{layout}", "--json"), env, "cargohold re-save", [ch]
        )
        resaved = json.loads(out)
        if resaved["uploaded_size"] != 0:
            raise BenchError(f"the re-save uploaded {resaved['uploaded_size']} bytes; expected none")

    mb = image.total_bytes / 1e6
    print(f"\nimage: {args.layers} x {args.layer_mb} MiB layers ({mb:.0f} MB), jobs default")
    print(f"{'phase':<10} {'cargohold':>10} {'skopeo':>10} {'ratio':>7}  target")
    verdicts = []
    for phase, target in (("save", 1.0), ("pull", 1.0), ("push", 1.5)):
        ours, theirs = results[f"cargohold {phase}"], results[f"skopeo {phase}"]
        ratio = theirs / ours if ours else float("inf")
        ok = ratio >= target
        verdicts.append(ok)
        print(f"{phase:<10} {ours:>9.2f}s {theirs:>9.2f}s {ratio:>6.2f}x  >= {target:.1f}x {'PASS' if ok else 'MISS'}")
    through_client = results["cargohold push --transfer client"]
    print(
        f"{'push*':<10} {through_client:>9.2f}s {results['skopeo push']:>9.2f}s "
        f"{results['skopeo push'] / through_client:>6.2f}x  (*--transfer client: every byte through the CLI)"
    )
    resave = results["cargohold re-save"]
    verdicts.append(resave < 1.0)
    print(f"{'re-save':<10} {resave:>9.2f}s {'':>10} {'':>7}  < 1.0s {'PASS' if resave < 1.0 else 'MISS'}")
    print("(cargohold times include starting the CLI process, as a CI step would)")
    print(f"\n{'CPU seconds':<22} {'tool':>7} {'cargohold':>10} {'reference':>10}   (the servers it talked to)")
    for what, (tool_cpu, cargohold_cpu, reference_cpu) in CPU.items():
        print(f"{what:<22} {tool_cpu:>7.2f} {cargohold_cpu:>10.2f} {reference_cpu:>10.2f}")
    return 0 if all(verdicts) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cargohold-client-bench-"))
    try:
        return run(args, work)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
