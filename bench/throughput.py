#!/usr/bin/env python3
"""Small-request throughput: Cargohold vs the CNCF reference registry under ``wrk``, one run, one image.

Why this exists: every ``docker pull``, kubelet image check and CI job starts with small requests (manifest
HEAD/GET, blob HEAD, tag list, a token), and a registry that moves blob bytes at nginx speed can still be
the bottleneck on those. Numbers are only meaningful when both registries answer the same requests for the
same image on the same machine in the same run, so this script starts both servers on free loopback ports,
pushes one image into both with skopeo, and points ``wrk`` (64 connections by default) at each request kind
in turn. Cargohold is called the way Docker calls it, with a registry token (``Authorization: Bearer`` from
its ``/token`` endpoint); the reference registry runs without auth, as people run it behind a firewall.

For every request kind it prints requests/s, mean and p99 latency (``wrk --latency``), server CPU time per
request (user+system of the server process and all its workers, from /proc via psutil) and the ratio of
Cargohold's requests/s to the reference's. It also times a large blob GET from each server with curl, so a
change to the small-request path can show it left the hot blob path alone.

A run in which any request answers with a status other than 2xx is invalid (exit 2): a fast error is not a
result. This is a benchmark, not a test. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from registry_bench import (
    MIB,
    REPO,
    TAG,
    TOKEN_USER,
    BenchError,
    CargoholdServer,
    ReferenceRegistry,
    Server,
    Skopeo,
    generate_image,
    http_request,
    log,
    run_checked,
    tree_cpu_seconds,
    warm_page_cache,
)

ACCEPT = ",".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


@dataclass
class Kind:
    """One request kind: a method and a path under the server's URL."""

    name: str
    method: str
    path: str
    reference_too: bool = True


@dataclass
class Result:
    server: str
    kind: str
    requests: int
    seconds: float
    rps: float
    mean_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    cpu_s: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else 0.0


class BenchCargohold(CargoholdServer):
    """Cargohold with extra ``serve`` arguments (``--workers N`` and the like) from the command line."""

    def __init__(self, root: Path, extra: Sequence[str]) -> None:
        super().__init__(root)
        self.extra = list(extra)
        self.bearer = ""

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{TOKEN_USER}:{self.token}".encode()).decode()

    def fetch_registry_token(self) -> None:
        """A pull token for the bench repository, fetched as Docker does (outside the timed runs)."""
        query = urllib.parse.urlencode({"service": "cargohold", "scope": f"repository:{REPO}:pull"})
        status, _, body = http_request("GET", f"{self.url}/token?{query}", {"Authorization": self.basic()})
        if status != 200:
            raise BenchError(f"{self.url}/token answered HTTP {status}: {body[:300]!r}")
        self.bearer = "Bearer " + json.loads(body)["token"]


def parse_duration_ms(text: str) -> float:
    """wrk prints latencies as ``123.45us``, ``12.3ms``, ``1.2s`` or ``2.00m``."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(
    server: Server, kind: Kind, headers: dict[str, str], args: argparse.Namespace, work: Path, label: str
) -> Result:
    """One ``wrk`` run against one URL; the server's CPU time is measured around it.

    wrk 4.1 cannot time HEAD requests (its parser waits for the body the ``Content-Length`` announces), so
    HEAD goes to ApacheBench (``ab -k -i``) with the same connection count: a single-threaded client, which
    the table marks.
    """
    if kind.method == "HEAD":
        return run_ab(server, kind, headers, args, work, label)
    script = work / f"{kind.method.lower()}.lua"
    script.write_text(f'wrk.method = "{kind.method}"\n')
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "--timeout",  # wrk's default (2 s) counts a slow answer as a socket error; its latency is the result
        "10s",
        "-s",
        str(script),
    ]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    cmd.append(server.url + kind.path)
    assert server.ps is not None
    cpu_before = tree_cpu_seconds(server.ps)
    with profiled(server, kind, args, label):
        completed = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    cpu = tree_cpu_seconds(server.ps) - cpu_before
    out = completed.stdout
    (work / f"wrk-{label}-{kind.name}.txt").write_text(out + completed.stderr)
    if completed.returncode != 0:
        raise BenchError(f"wrk failed (exit {completed.returncode}): {completed.stderr[-2000:]}")
    total = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m)", out)
    latency = re.search(r"^\s*Latency\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not (total and latency and p99 and rps):
        raise BenchError(f"cannot read wrk's output:\n{out}")
    errors_match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(g) for g in errors_match.groups()) if errors_match else 0
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(
        server=label,
        kind=kind.name,
        requests=int(total.group(1)),
        seconds=parse_duration_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(rps.group(1)),
        mean_ms=parse_duration_ms(latency.group(1)),
        p99_ms=parse_duration_ms(p99.group(1)),
        errors=errors,
        non_2xx=int(non_2xx_match.group(1)) if non_2xx_match else 0,
        cpu_s=cpu,
    )


@contextlib.contextmanager
def profiled(server: Server, kind: Kind, args: argparse.Namespace, label: str) -> Iterator[None]:
    """With ``--py-spy DIR``, record Cargohold (all workers) with py-spy while wrk runs: collapsed
    stacks per request kind (``flamegraph.pl`` or speedscope draw them; bench/spy_top.py lists the top frames)."""
    if args.py_spy is None or label != "cargohold" or server.process is None:
        yield
        return
    args.py_spy.mkdir(parents=True, exist_ok=True)
    out = args.py_spy / (re.sub(r"\W+", "-", kind.name) + ".txt")
    seconds = max(1, args.duration - 1)
    spy = subprocess.Popen(
        [
            *("py-spy", "record", "--subprocesses", "--nonblocking", "--format", "raw"),
            *("-d", str(seconds), "-o", str(out), "-p", str(server.process.pid)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.wait(timeout=60)
        log(f"py-spy stacks: {out}")


def run_ab(
    server: Server, kind: Kind, headers: dict[str, str], args: argparse.Namespace, work: Path, label: str
) -> Result:
    cmd = ["ab", "-q", "-k", "-i", "-c", str(args.connections), "-t", str(args.duration), "-n", "100000000"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    cmd.append(server.url + kind.path)
    assert server.ps is not None
    cpu_before = tree_cpu_seconds(server.ps)
    completed = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    cpu = tree_cpu_seconds(server.ps) - cpu_before
    out = completed.stdout
    (work / f"ab-{label}-{kind.name}.txt").write_text(out + completed.stderr)
    if completed.returncode != 0:
        raise BenchError(f"ab failed (exit {completed.returncode}): {completed.stderr[-2000:]}")
    total = re.search(r"^Complete requests:\s+(\d+)", out, re.M)
    seconds = re.search(r"^Time taken for tests:\s+([0-9.]+) seconds", out, re.M)
    rps = re.search(r"^Requests per second:\s+([0-9.]+)", out, re.M)
    mean = re.search(r"^Time per request:\s+([0-9.]+) \[ms\] \(mean\)$", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\d+)", out, re.M)
    if not (total and seconds and rps and mean and p99):
        raise BenchError(f"cannot read ab's output:\n{out}")
    failed = re.search(r"^Failed requests:\s+(\d+)", out, re.M)
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.M)
    return Result(
        server=label,
        kind=kind.name + " (ab)",
        requests=int(total.group(1)),
        seconds=float(seconds.group(1)),
        rps=float(rps.group(1)),
        mean_ms=float(mean.group(1)),
        p99_ms=float(p99.group(1)),
        errors=int(failed.group(1)) if failed else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        cpu_s=cpu,
    )


def check_answers(server: Server, kinds: list[Kind], headers: dict[str, str]) -> None:
    """Every request kind answers 200 before it is timed (so wrk measures answers, not refusals)."""
    for kind in kinds:
        status, _, body = http_request(kind.method, server.url + kind.path, headers)
        if status != 200:
            raise BenchError(f"{server.name} {kind.method} {kind.path} answered HTTP {status}: {body[:300]!r}")


def blob_get_mib_s(server: Server, digest: str, size: int, auth: list[str], repeats: int) -> float:
    """Median MiB/s of ``curl`` GETs of one blob (curl's own ``time_total``; one unmeasured warm-up)."""
    speeds = []
    for attempt in range(repeats + 1):
        completed = subprocess.run(
            [
                *("curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"),
                *auth,
                f"{server.url}/v2/{REPO}/blobs/{digest}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise BenchError(f"curl GET of the blob from {server.name} failed: {completed.stderr}")
        seconds, downloaded = completed.stdout.split()
        if int(downloaded) != size:
            raise BenchError(f"{server.name} sent {downloaded} bytes of a {size}-byte blob")
        if attempt:
            speeds.append(size / MIB / float(seconds))
    return statistics.median(speeds)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--blob-mb", type=int, default=100, help="size of the image's one layer (default 100)")
    parser.add_argument("--get-repeats", type=int, default=5, help="measured blob GETs per server (default 5)")
    parser.add_argument("--kinds", default="", help="comma-separated subset of request kinds to run")
    parser.add_argument(
        "--cargohold-arg",
        action="append",
        default=[],
        help="extra argument for `cargohold serve` (repeatable), e.g. --cargohold-arg=--workers=2",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--py-spy", type=Path, help="record Cargohold with py-spy during each wrk run, into this dir")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs, wrk output)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> int:
    for tool in ("wrk", "ab", "skopeo", "curl", "docker-registry"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed; run scripts/bootstrap.sh")
    image = generate_image(work / "layout", layers=1, layer_mb=args.blob_mb, seed=1)
    warm_page_cache(image.layout)
    cargohold = BenchCargohold(work / "cargohold", args.cargohold_arg)
    reference = ReferenceRegistry(work / "reference")
    skopeo = Skopeo(work)
    results: list[Result] = []
    try:
        for server in (cargohold, reference):
            server.start()
            home = work / f"skopeo-{server.name}"
            run_checked(
                skopeo.command(home, skopeo.push_args(image, server, work / f"{server.name}.digest")),
                skopeo.private_env(home),
                work / f"push-{server.name}.log",
                f"push to {server.name}",
            )
            pushed = (work / f"{server.name}.digest").read_text().strip()
            if pushed != image.manifest_digest:
                raise BenchError(f"{server.name} stored manifest {pushed}, the image is {image.manifest_digest}")
        cargohold.fetch_registry_token()
        layer = image.largest_layer
        kinds = [
            Kind("manifest GET tag", "GET", f"/v2/{REPO}/manifests/{TAG}"),
            Kind("manifest GET digest", "GET", f"/v2/{REPO}/manifests/{image.manifest_digest}"),
            Kind("manifest HEAD", "HEAD", f"/v2/{REPO}/manifests/{TAG}"),
            Kind("blob HEAD", "HEAD", f"/v2/{REPO}/blobs/{layer['digest']}"),
            Kind("tag list", "GET", f"/v2/{REPO}/tags/list"),
            Kind(
                "token",
                "GET",
                "/token?" + urllib.parse.urlencode({"service": "cargohold", "scope": f"repository:{REPO}:pull"}),
                reference_too=False,
            ),
        ]
        if args.kinds:
            wanted = {name.strip() for name in args.kinds.split(",")}
            kinds = [kind for kind in kinds if kind.name in wanted]
        for kind in kinds:
            auth = cargohold.basic() if kind.name == "token" else cargohold.bearer
            headers = {"Accept": ACCEPT, "Authorization": auth}
            check_answers(cargohold, [kind], headers)
            log(f"wrk {kind.name} on cargohold")
            results.append(run_wrk(cargohold, kind, headers, args, work, "cargohold"))
            if kind.reference_too:
                check_answers(reference, [kind], {"Accept": ACCEPT})
                log(f"wrk {kind.name} on reference")
                results.append(run_wrk(reference, kind, {"Accept": ACCEPT}, args, work, "reference"))
        size = int(layer["size"])
        log(f"blob GET of {size / MIB:.0f} MiB, {args.get_repeats} times each")
        blob_cargohold = blob_get_mib_s(
            cargohold, layer["digest"], size, ["-H", f"Authorization: {cargohold.bearer}"], args.get_repeats
        )
        blob_reference = blob_get_mib_s(reference, layer["digest"], size, [], args.get_repeats)
    finally:
        cargohold.stop()
        reference.stop()
    invalid = [r for r in results if r.errors or r.non_2xx]
    print_table(results, blob_cargohold, blob_reference, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "config": {k: str(v) for k, v in vars(args).items()},
                    "results": [asdict(r) | {"cpu_us_per_request": r.cpu_us_per_request} for r in results],
                    "blob_get_mib_s": {"cargohold": blob_cargohold, "reference": blob_reference},
                },
                indent=2,
            )
        )
    if invalid:
        for r in invalid:
            log(f"INVALID: {r.server} {r.kind}: {r.non_2xx} non-2xx answers, {r.errors} socket errors")
        return 2
    return 0


def print_table(results: list[Result], blob_cargohold: float, blob_reference: float, args: argparse.Namespace) -> None:
    by_key = {(r.server, r.kind): r for r in results}
    print(f"\nwrk -c{args.connections} -t{args.threads} -d{args.duration}s, cargohold {' '.join(args.cargohold_arg)}")
    header = (
        "| request | server | req/s | mean ms | p99 ms | CPU us/req | ratio req/s | p99 vs ref |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    print(header)
    for r in results:
        ref = by_key.get(("reference", r.kind))
        ratio = f"{r.rps / ref.rps:.2f}x" if ref and r.server == "cargohold" and ref.rps else ""
        p99 = f"{r.p99_ms / ref.p99_ms:.2f}x" if ref and r.server == "cargohold" and ref.p99_ms else ""
        print(
            f"| {r.kind} | {r.server} | {r.rps:,.0f} | {r.mean_ms:.1f} | {r.p99_ms:.1f} | "
            f"{r.cpu_us_per_request:,.0f} | {ratio} | {p99} |"
        )
    print(
        f"| blob GET | cargohold | {blob_cargohold:,.0f} MiB/s | | | | "
        f"{blob_cargohold / blob_reference:.2f}x | |\n| blob GET | reference | {blob_reference:,.0f} MiB/s | | | | | |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cargohold-throughput-"))
    try:
        return run(args, work)
    except BenchError as exc:
        log(f"run invalid: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
