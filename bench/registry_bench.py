#!/usr/bin/env python3
"""Cargohold vs the CNCF reference registry (and nginx as a sendfile ceiling), one run, one image.

Why this exists: Cargohold's pitch is "as fast as the reference registry for CI pulls, with less CPU and
a small memory footprint, and large blob GETs close to what a plain static file server can do". Numbers
for that are only meaningful when both registries see the *same* bytes on the *same* machine in the
*same* run, so this script generates one random image, pushes it into both registries with skopeo, pulls
it back (once, then N-way concurrently like a fleet of CI runners), and fetches the biggest blob with
curl from Cargohold and from nginx serving the identical file. For every phase it records wall time,
throughput, server CPU seconds and server peak RSS, then prints ratios and PASS/MISS against the targets.

This is a benchmark, not a test: it exits 0 when the targets are missed (unless ``--fail-on-miss``),
but it fails loudly (exit 2) when a pull does not return the manifest digest that was pushed, because
a fast wrong answer is worthless. See bench/README.md for the method and its caveats.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024
REPO = "bench/sample"
TAG = "latest"
TOKEN_USER = "x-token"
RSS_SAMPLE_INTERVAL = 0.02
"""20 ms: fine enough to catch a short allocation spike, coarse enough not to steal a shared core."""
RSS_LIMIT_MIB = 150.0
GET_RATIO_TARGET = 0.80


class BenchError(RuntimeError):
    """A correctness or infrastructure failure: the numbers of this run must not be trusted."""


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays a clean report (and can be piped or diffed)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (racy, but fine for a single-user bench)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status code of a GET to a loopback URL, or None when nothing answers yet (readiness polling)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=timeout)
    try:
        connection.request("GET", parsed.path or "/")
        response = connection.getresponse()
        response.read(1)
        return int(response.status)
    except OSError:
        return None
    finally:
        connection.close()


def http_request(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A small loopback HTTP call: status, lower-cased headers and body (fine for tokens, not blobs)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=30)
    try:
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        connection.request(method, target, headers=headers)
        response = connection.getresponse()
        body = response.read(1 << 20)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


# -- process accounting ---------------------------------------------------------------------------------


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """User+system CPU of a server and all its descendants, including children it has already reaped.

    Why children: nginx does the work in a worker process, and a Python server may fork helpers; a
    server that offloads work to a child must not look cheaper than one that does it in-process.
    """
    total = 0.0
    with contextlib.suppress(psutil.Error):
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    return total


def tree_rss_bytes(proc: psutil.Process) -> int:
    """Resident set size summed over the process tree (shared pages are counted once per process)."""
    total = 0
    with contextlib.suppress(psutil.Error):
        total += proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    return total


class RssSampler:
    """Background thread that tracks the peak tree RSS of one server while a phase runs.

    A single end-of-phase reading would miss the moment that matters (20 pulls in flight), so we sample
    every ~20 ms and keep the maximum. Listing a process's children scans all of /proc (~3 ms here), which
    at 50 Hz would steal a noticeable slice of a shared core from the thing being measured, so the child
    list is refreshed only every ``CHILD_REFRESH`` samples; reading a known process's RSS is ~50 us.
    """

    CHILD_REFRESH = 25

    def __init__(self, proc: psutil.Process, interval: float = RSS_SAMPLE_INTERVAL) -> None:
        self._proc = proc
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._members: list[psutil.Process] = [proc]
        self.peak = 0
        self.samples = 0

    def _sample(self) -> None:
        if self.samples % self.CHILD_REFRESH == 0:
            with contextlib.suppress(psutil.Error):
                self._members = [self._proc, *self._proc.children(recursive=True)]
        total = 0
        for member in self._members:
            with contextlib.suppress(psutil.Error):
                total += member.memory_info().rss
        self.peak = max(self.peak, total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(self._proc))


def client_cpu_seconds() -> float:
    """CPU of our reaped children (skopeo, curl): shows how much of the 2 shared cores the clients ate."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- servers --------------------------------------------------------------------------------------------


class Server:
    """A server child process on 127.0.0.1 that is always stopped, with its log kept for post-mortems."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"{self.name}.log"
        self.ps: psutil.Process | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> Server:
        """Spawn and poll until ready; a server that dies or never answers aborts the run with its log."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        log(f"starting {self.name}: {' '.join(cmd)}")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(), stdin=subprocess.DEVNULL
            )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited early with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                log(f"{self.name} ready on {self.url} (pid {self.process.pid})")
                return self
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not become ready in {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s: never leave a listener behind on a shared machine."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # Per-registry client arguments; the base registry is anonymous.
    def skopeo_src_creds(self) -> list[str]:
        return []

    def skopeo_dest_creds(self) -> list[str]:
        return []

    def curl_auth(self) -> list[str]:
        return []

    def prepare_get(self, digest: str) -> None:
        """Hook to settle how curl authenticates before the timed GETs (nothing to do when anonymous)."""

    def blob_url(self, digest: str) -> str:
        return f"{self.url}/v2/{REPO}/blobs/{digest}"


class CargoholdServer(Server):
    """``python -m cargohold serve`` with a random admin token used as the ``x-token`` password."""

    name = "cargohold"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.token = secrets.token_urlsafe(24)
        self._curl_auth: list[str] = []
        self.data_dir = root / "data"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cargohold",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            # The destination registries of the push benchmarks listen on loopback too.
            "--push-allow-network",
            "127.0.0.0/8",
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, "CARGOHOLD_ADMIN_TOKEN": self.token}

    def ready(self) -> bool:
        return http_status(f"{self.url}/healthz") == 200

    def skopeo_src_creds(self) -> list[str]:
        return ["--src-creds", f"{TOKEN_USER}:{self.token}"]

    def skopeo_dest_creds(self) -> list[str]:
        return ["--dest-creds", f"{TOKEN_USER}:{self.token}"]

    def curl_auth(self) -> list[str]:
        return self._curl_auth or ["-u", f"{TOKEN_USER}:{self.token}"]

    def prepare_get(self, digest: str) -> None:
        """Use Basic auth if the registry takes it on the blob route, else do the Bearer token dance once.

        skopeo handles either transparently; curl does not, and the token exchange must stay outside the
        timed GETs anyway (CI clients cache their token across blob requests).
        """
        basic = "Basic " + base64.b64encode(f"{TOKEN_USER}:{self.token}".encode()).decode()
        status, headers, _ = http_request("HEAD", self.blob_url(digest), {"Authorization": basic})
        if status == 200:
            return
        challenge = headers.get("www-authenticate", "")
        if status != 401 or not challenge.lower().startswith("bearer "):
            raise BenchError(f"HEAD {self.blob_url(digest)} with x-token Basic auth gave HTTP {status} {challenge}")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": f"repository:{REPO}:pull"})
        status, _, body = http_request("GET", f"{params['realm']}?{query}", {"Authorization": basic})
        if status != 200:
            raise BenchError(f"token endpoint {params['realm']} answered HTTP {status}: {body[:300]!r}")
        payload = json.loads(body)
        self._curl_auth = ["-H", f"Authorization: Bearer {payload.get('token') or payload['access_token']}"]
        log("cargohold wants Bearer tokens on blob GETs; curl uses a token fetched before timing")

    def find_blob_file(self, hex_digest: str, size: int) -> Path | None:
        """The file Cargohold stores a blob in, found by name and size (its store layout is its business)."""
        for path in self.data_dir.rglob(f"*{hex_digest}*"):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and path.stat().st_size == size:
                    return path
        return None


class ReferenceRegistry(Server):
    """The CNCF distribution registry 2.8 with a generated config: filesystem storage, no auth.

    Its settings mirror the Debian example config (in-memory blob descriptor cache, delete enabled,
    default logging) so we compare against the registry as people actually run it, minus TLS/auth.
    """

    name = "reference"
    binary = "docker-registry"

    def command(self) -> list[str]:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n"
            "  level: info\n"
            "  fields:\n"
            "    service: registry\n"
            "storage:\n"
            "  cache:\n"
            "    blobdescriptor: inmemory\n"
            "  filesystem:\n"
            f"    rootdirectory: {storage}\n"
            "  delete:\n"
            "    enabled: true\n"
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            "  headers:\n"
            "    X-Content-Type-Options: [nosniff]\n"
        )
        return [self.binary, "serve", str(config)]

    def ready(self) -> bool:
        return http_status(f"{self.url}/v2/") == 200


class NginxServer(Server):
    """nginx serving one directory with sendfile: the practical ceiling for a static blob GET."""

    name = "nginx"
    binary = "/usr/sbin/nginx"

    def __init__(self, root: Path, serve_dir: Path, probe_name: str) -> None:
        super().__init__(root)
        self.serve_dir = serve_dir
        self.probe_name = probe_name

    def command(self) -> list[str]:
        for sub in ("logs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # As root the workers would drop to "nobody", who cannot enter our 0700 temp dirs.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        tmp = self.root / "tmp"
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"{user}"
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {self.root / 'nginx.pid'};\n"
            f"error_log {self.root / 'logs' / 'error.log'} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "  default_type application/octet-stream;\n"
            "  access_log off;\n"
            "  sendfile on;\n"
            "  tcp_nopush on;\n"
            "  keepalive_timeout 5;\n"
            f"  client_body_temp_path {tmp}/body;\n"
            f"  proxy_temp_path {tmp}/proxy;\n"
            f"  fastcgi_temp_path {tmp}/fastcgi;\n"
            f"  uwsgi_temp_path {tmp}/uwsgi;\n"
            f"  scgi_temp_path {tmp}/scgi;\n"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            f"    root {self.serve_dir};\n"
            "  }\n"
            "}\n"
        )
        return [self.binary, "-p", str(self.root), "-c", str(conf)]

    def ready(self) -> bool:
        return http_status(f"{self.url}/{self.probe_name}") == 200

    def blob_url(self, digest: str) -> str:
        return f"{self.url}/{self.probe_name}"


# -- the image ------------------------------------------------------------------------------------------


@dataclass
class Image:
    """What was generated: enough to address it in skopeo and to check what comes back."""

    layout: Path
    ref_name: str | None
    manifest_digest: str
    total_bytes: int
    """Manifest + config + layers: the bytes a push or a pull must move."""
    layer_count: int
    largest_layer: dict[str, Any]


def image_from_layout(layout_dir: Path) -> Image:
    """Describe the single image in an OCI layout using Cargohold's own layout reader."""
    from cargohold.oci.layout import OCILayout

    layout = OCILayout.open(layout_dir)
    descriptor = layout.resolve(None)
    manifest = layout.read_json(descriptor.digest)
    layers = list(manifest.get("layers", []))
    if not layers:
        raise BenchError(f"the image in {layout_dir} has no layers")
    total = descriptor.size + int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in layers)
    return Image(
        layout=layout_dir,
        ref_name=descriptor.ref_name,
        manifest_digest=str(descriptor.digest),
        total_bytes=total,
        layer_count=len(layers),
        largest_layer=max(layers, key=lambda layer: int(layer["size"])),
    )


def generate_image(layout_dir: Path, layers: int, layer_mb: int, seed: int) -> Image:
    """Write the sample image with the project's generator (one source of truth for test/bench images)."""
    from cargohold.sample import write_sample_image

    log(f"generating {layers} x {layer_mb} MiB random layers into {layout_dir}")
    started = time.monotonic()
    write_sample_image(layout_dir, layers=layers, layer_size=layer_mb * MIB, seed=seed)
    log(f"image generated in {time.monotonic() - started:.1f}s")
    return image_from_layout(layout_dir)


def warm_page_cache(directory: Path) -> None:
    """Read every file once so neither push pays for cold disk reads the other one gets for free."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(8 * MIB):
                    pass


def pulled_manifest_digest(layout_dir: Path) -> str:
    """The manifest digest skopeo wrote into a pulled OCI layout, with all its blobs present and sized."""
    from cargohold.oci.layout import OCILayout

    layout = OCILayout.open(layout_dir)
    descriptor = layout.resolve(TAG)
    manifest = layout.read_json(descriptor.digest)
    for blob in [manifest["config"], *manifest.get("layers", [])]:
        path = layout.blob_path(blob["digest"])
        if not path.is_file() or path.stat().st_size != int(blob["size"]):
            raise BenchError(f"pulled layout {layout_dir} lacks or truncates blob {blob['digest']}")
    return str(descriptor.digest)


# -- skopeo ---------------------------------------------------------------------------------------------


class Skopeo:
    """Builds isolated skopeo invocations: one private HOME / blob-info cache / tmpdir per process.

    skopeo 1.9.3 (containers/image v5) keeps a BoltDB "blob info cache" that remembers which digests a
    registry already has and which compressed/uncompressed variants belong together. Run as root it is
    always /var/lib/containers/cache; for non-root it is $XDG_DATA_HOME/containers/cache. There is no
    CLI flag for it, but containers/image decides "root or not" from ``_CONTAINERS_ROOTLESS_UID`` when
    that is set, so setting it (plus a private XDG_DATA_HOME) gives each process its own empty cache.
    That matters twice: a shared cache would let one simulated CI runner benefit from another, and the
    BoltDB file lock would serialise 20 concurrent pulls on something that is not the registry.
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.policy = work / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.isolation_checked = False

    def private_env(self, home: Path) -> dict[str, str]:
        for sub in ("data", "config", "run", "tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("REGISTRY_AUTH", "DOCKER_", "CONTAINERS_"))
        }
        env.update(
            HOME=str(home),
            XDG_DATA_HOME=str(home / "data"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_RUNTIME_DIR=str(home / "run"),
            TMPDIR=str(home / "tmp"),
        )
        if os.geteuid() == 0:
            env["_CONTAINERS_ROOTLESS_UID"] = "65534"
        return env

    def command(self, home: Path, copy_args: Sequence[str]) -> list[str]:
        return [
            "skopeo",
            "--policy",
            str(self.policy),
            "--tmpdir",
            str(home / "tmp"),
            "copy",
            "--quiet",
            "--preserve-digests",
            *copy_args,
        ]

    def check_isolation(self, home: Path) -> None:
        """Prove (once per run) that the cache landed in the private dir and not in the shared one."""
        if self.isolation_checked:
            return
        caches = list((home / "data").rglob("blob-info-cache*"))
        if not caches:
            raise BenchError(
                f"skopeo did not create its blob-info cache under {home / 'data'}; per-process cache "
                "isolation does not work with this skopeo, so concurrent pulls would share a cache"
            )
        self.isolation_checked = True

    def push_args(self, image: Image, server: Server, digestfile: Path) -> list[str]:
        src = f"oci:{image.layout}:{image.ref_name}" if image.ref_name else f"oci:{image.layout}"
        return [
            "--dest-tls-verify=false",
            *server.skopeo_dest_creds(),
            "--digestfile",
            str(digestfile),
            src,
            f"docker://{server.host}/{REPO}:{TAG}",
        ]

    def pull_args(self, server: Server, dest: Path) -> list[str]:
        return [
            "--src-tls-verify=false",
            *server.skopeo_src_creds(),
            f"docker://{server.host}/{REPO}:{TAG}",
            f"oci:{dest}:{TAG}",
        ]


def run_checked(cmd: list[str], env: dict[str, str], log_path: Path, what: str) -> None:
    """Run a client command, keeping its output in a file; a failure aborts the benchmark with that output."""
    with open(log_path, "wb") as out:
        result = subprocess.run(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        )
    if result.returncode != 0:
        raise BenchError(
            f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{log_path.read_text(errors='replace')[-4000:]}"
        )


# -- measurements ---------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One timed phase against one server."""

    phase: str
    server: str
    wall_s: float
    bytes: int
    server_cpu_s: float
    server_peak_rss_mib: float
    client_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mib_s(self) -> float:
        return self.bytes / MIB / self.wall_s if self.wall_s > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return {**out, "mib_s": round(self.mib_s, 2)}


def measured(phase: str, server: Server, nbytes: int, action: Callable[[], dict[str, Any] | None]) -> Measurement:
    """Run ``action`` while accounting wall time, server CPU delta, server peak RSS and client CPU."""
    assert server.ps is not None
    cpu_before = tree_cpu_seconds(server.ps)
    client_before = client_cpu_seconds()
    with RssSampler(server.ps) as sampler:
        started = time.perf_counter()
        extra = action() or {}
        wall = time.perf_counter() - started
    if "transfer_s" in extra:
        # The client measured the transfer itself (curl's timer): use that, keep the outer time as a note.
        extra["process_wall_s"] = round(wall, 4)
        wall = float(extra.pop("transfer_s"))
    measurement = Measurement(
        phase=phase,
        server=server.name,
        wall_s=wall,
        bytes=nbytes,
        server_cpu_s=tree_cpu_seconds(server.ps) - cpu_before,
        server_peak_rss_mib=sampler.peak / MIB,
        client_cpu_s=client_cpu_seconds() - client_before,
        extra=extra,
    )
    print_row(measurement)
    return measurement


class Bench:
    """The phases, in an order that alternates which registry goes first."""

    def __init__(self, args: argparse.Namespace, work: Path, image: Image, registries: list[Server]) -> None:
        self.args = args
        self.work = work
        self.image = image
        self.registries = registries
        self.skopeo = Skopeo(work)
        self.pushed: dict[str, str] = {}
        self.results: list[Measurement] = []

    def order(self, phase_index: int) -> list[Server]:
        """Alternate the lead registry per phase so page-cache and CPU-frequency drift hit both equally."""
        return self.registries if phase_index % 2 == 0 else list(reversed(self.registries))

    def phase_dir(self, server: Server, phase: str) -> Path:
        path = self.work / "clients" / server.name / phase
        path.mkdir(parents=True, exist_ok=True)
        return path

    def push(self, server: Server) -> Measurement:
        base = self.phase_dir(server, "push")
        digestfile = base / "digest"
        env = self.skopeo.private_env(base / "home")
        cmd = self.skopeo.command(base / "home", self.skopeo.push_args(self.image, server, digestfile))

        def action() -> None:
            try:
                run_checked(cmd, env, base / "skopeo.log", f"push to {server.name}")
            except BenchError as exc:
                raise BenchError(f"{exc}\n--- {server.name} log tail ---\n{server.log_tail()}") from None

        measurement = measured("push", server, self.image.total_bytes, action)
        self.skopeo.check_isolation(base / "home")
        pushed = digestfile.read_text().strip()
        if pushed != self.image.manifest_digest:
            raise BenchError(
                f"push to {server.name} stored manifest {pushed}, "
                f"but the layout's manifest is {self.image.manifest_digest}"
            )
        self.pushed[server.name] = pushed
        return measurement

    def verify_pull(self, server: Server, dest: Path) -> None:
        from cargohold.oci.layout import LayoutError

        try:
            got = pulled_manifest_digest(dest)
        except (LayoutError, OSError, KeyError, ValueError) as exc:
            raise BenchError(f"pull from {server.name} left an unusable layout in {dest}: {exc}") from exc
        if got != self.pushed[server.name]:
            raise BenchError(
                f"pull from {server.name} into {dest} returned manifest {got}, pushed {self.pushed[server.name]}"
            )

    def pull(self, server: Server, count: int, round_no: int = 1) -> Measurement:
        """``count`` concurrent pulls, each a separate skopeo with its own cache and destination.

        Every round gets fresh directories: skopeo skips blobs already present in a destination layout,
        so reusing one (possible with ``--keep``) would silently turn a pull into a no-op.
        """
        phase = "pull1" if count == 1 else f"pull{count}"
        base = self.phase_dir(server, f"{phase}-r{round_no}")
        jobs = []
        for i in range(count):
            home = base / f"runner{i}" / "home"
            dest = base / f"runner{i}" / "layout"
            env = self.skopeo.private_env(home)
            jobs.append((home, dest, env, self.skopeo.command(home, self.skopeo.pull_args(server, dest))))
        procs: list[subprocess.Popen[bytes]] = []
        durations: list[float] = [0.0] * count

        def action() -> dict[str, Any]:
            threads = []
            try:
                for i, (home, _dest, env, cmd) in enumerate(jobs):
                    with open(home.parent / "skopeo.log", "wb") as out:
                        procs.append(
                            subprocess.Popen(
                                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                            )
                        )
                    started = time.perf_counter()

                    def waiter(index: int = i, begun: float = started) -> None:
                        procs[index].wait()
                        durations[index] = time.perf_counter() - begun

                    thread = threading.Thread(target=waiter, daemon=True)
                    thread.start()
                    threads.append(thread)
                for thread in threads:
                    thread.join()
            finally:
                for proc in procs:  # Ctrl-C or an exception mid-phase: no orphaned skopeo.
                    if proc.poll() is None:
                        proc.terminate()
                        proc.wait()
            return {
                "round": round_no,
                "pulls": count,
                "pull_s_min": round(min(durations), 3),
                "pull_s_median": round(statistics.median(durations), 3),
                "pull_s_max": round(max(durations), 3),
            }

        measurement = measured(phase, server, self.image.total_bytes * count, action)
        for (home, dest, _env, cmd), proc in zip(jobs, procs, strict=True):
            if proc.returncode != 0:
                output = (home.parent / "skopeo.log").read_text(errors="replace")[-4000:]
                raise BenchError(
                    f"pull from {server.name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}\n"
                    f"--- {server.name} log tail ---\n{server.log_tail()}"
                )
            self.verify_pull(server, dest)
        # 20 x image size adds up quickly; the layouts are verified, so free the disk right away.
        if not self.args.keep:
            shutil.rmtree(base, ignore_errors=True)
        return measurement

    def curl_get(self, server: Server, phase: str, digest: str, size: int) -> Measurement:
        """One GET of the big blob; throughput uses curl's own timer to exclude process start-up."""
        cmd = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            *server.curl_auth(),
            server.blob_url(digest),
        ]

        def action() -> dict[str, Any]:
            result = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                raise BenchError(f"curl against {server.name} failed: {result.stderr.strip()}")
            code, downloaded, total = result.stdout.split()
            if code != "200" or int(downloaded) != size:
                raise BenchError(
                    f"GET {server.blob_url(digest)} from {server.name} returned HTTP {code} "
                    f"with {downloaded} bytes, expected 200 with {size}"
                )
            # curl's own transfer time, not ours: a 100 MiB sendfile finishes in tens of milliseconds,
            # so fork+exec of curl would otherwise be a visible share of the number.
            return {"transfer_s": float(total)}

        return measured(phase, server, size, action)

    def blob_gets(self, targets: list[Server]) -> list[Measurement]:
        """Interleaved GET rounds (one unmeasured warm-up each), so drift affects every server alike."""
        layer = self.image.largest_layer
        digest, size = str(layer["digest"]), int(layer["size"])
        log(f"large-blob GET of {digest} ({size / MIB:.0f} MiB), {self.args.get_repeats} rounds")
        for server in targets:
            server.prepare_get(digest)
            self.curl_get_quiet(server, digest, size)
        out = []
        for round_index in range(self.args.get_repeats):
            ordered = targets if round_index % 2 == 0 else list(reversed(targets))
            for server in ordered:
                out.append(self.curl_get(server, "get", digest, size))
        return out

    def curl_get_quiet(self, server: Server, digest: str, size: int) -> None:
        cmd = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            *server.curl_auth(),
            server.blob_url(digest),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if result.returncode != 0 or result.stdout.split() != ["200", str(size)]:
            raise BenchError(
                f"warm-up GET {server.blob_url(digest)} from {server.name} failed: "
                f"{result.stdout.strip()} {result.stderr.strip()}"
            )


# -- reporting ------------------------------------------------------------------------------------------

HEADER = (
    f"{'phase':<8} {'server':<10} {'wall s':>9} {'MiB/s':>9} {'srv CPU s':>10} {'srv RSS MiB':>12} "
    f"{'cli CPU s':>10}  notes"
)


def print_row(m: Measurement) -> None:
    notes = " ".join(f"{k}={v}" for k, v in m.extra.items())
    print(
        f"{m.phase:<8} {m.server:<10} {m.wall_s:>9.3f} {m.mib_s:>9.1f} {m.server_cpu_s:>10.2f} "
        f"{m.server_peak_rss_mib:>12.1f} {m.client_cpu_s:>10.2f}  {notes}",
        flush=True,
    )


def pick(results: list[Measurement], phase: str, server: str) -> Measurement | None:
    """One phase/server result; with ``--rounds`` > 1, medians of wall and CPU and the max of peak RSS.

    Medians rather than bests: a single lucky round on a shared box should not decide a target.
    """
    runs = [m for m in results if m.phase == phase and m.server == server]
    if not runs:
        return None
    if len(runs) == 1:
        return runs[0]
    return Measurement(
        phase=phase,
        server=server,
        wall_s=statistics.median(m.wall_s for m in runs),
        bytes=runs[0].bytes,
        server_cpu_s=statistics.median(m.server_cpu_s for m in runs),
        server_peak_rss_mib=max(m.server_peak_rss_mib for m in runs),
        client_cpu_s=statistics.median(m.client_cpu_s for m in runs),
        extra={"rounds": len(runs)},
    )


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def evaluate(results: list[Measurement], pulls: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ratios cargohold/reference (and cargohold/nginx) plus PASS/MISS for each stated target."""
    ratios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    many = f"pull{pulls}"
    for phase in ("push", "pull1", many):
        cargo, ref = pick(results, phase, "cargohold"), pick(results, phase, "reference")
        if cargo is None or ref is None:
            continue
        time_ratio = ratio(cargo.wall_s, ref.wall_s)
        cpu_ratio = ratio(cargo.server_cpu_s, ref.server_cpu_s)
        ratios[phase] = {"time_cargohold_over_reference": time_ratio, "cpu_cargohold_over_reference": cpu_ratio}
        faster = cargo.wall_s <= ref.wall_s
        if phase == "push":
            targets.append(
                {
                    "target": "push at least as fast as reference",
                    "passed": faster,
                    "detail": f"time {fmt_ratio(time_ratio)} of reference",
                }
            )
        else:
            cheaper = cargo.server_cpu_s < ref.server_cpu_s
            targets.append(
                {
                    "target": f"{phase}: at least as fast as reference, with less server CPU",
                    "passed": faster and cheaper,
                    "detail": f"time {fmt_ratio(time_ratio)}, CPU {fmt_ratio(cpu_ratio)} of reference",
                }
            )
    cargo_many = pick(results, many, "cargohold")
    if cargo_many is not None:
        targets.append(
            {
                "target": f"cargohold peak RSS < {RSS_LIMIT_MIB:.0f} MiB during {many}",
                "passed": cargo_many.server_peak_rss_mib < RSS_LIMIT_MIB,
                "detail": f"{cargo_many.server_peak_rss_mib:.1f} MiB",
            }
        )
    gets: dict[str, list[float]] = {}
    for m in results:
        if m.phase == "get":
            gets.setdefault(m.server, []).append(m.mib_s)
    summary = {
        name: {"best_mib_s": max(v), "median_mib_s": statistics.median(v), "n": len(v)} for name, v in gets.items()
    }
    if summary:
        ratios["get"] = summary
    if "cargohold" in summary and "nginx" in summary:
        cargo_med, nginx_med = summary["cargohold"]["median_mib_s"], summary["nginx"]["median_mib_s"]
        cargo_best, nginx_best = summary["cargohold"]["best_mib_s"], summary["nginx"]["best_mib_s"]
        ratios["get"]["median_cargohold_over_nginx"] = ratio(cargo_med, nginx_med)
        ratios["get"]["best_cargohold_over_nginx"] = ratio(cargo_best, nginx_best)
        targets.append(
            {
                "target": f"large-blob GET >= {GET_RATIO_TARGET:.0%} of nginx (median)",
                "passed": cargo_med >= GET_RATIO_TARGET * nginx_med,
                "detail": f"median {cargo_med:.0f} vs {nginx_med:.0f} MiB/s "
                f"({fmt_ratio(ratio(cargo_med, nginx_med))}); best "
                f"{fmt_ratio(ratio(cargo_best, nginx_best))}",
            }
        )
    return ratios, targets


def print_summary(results: list[Measurement], ratios: dict[str, Any], targets: list[dict[str, Any]]) -> None:
    print()
    if any(phase != "get" for phase in ratios):
        print("== ratios (cargohold / reference; < 1.00x is better for time and CPU) ==")
    for phase, values in ratios.items():
        if phase == "get":
            continue
        print(
            f"  {phase:<8} time {fmt_ratio(values['time_cargohold_over_reference'])}   "
            f"server CPU {fmt_ratio(values['cpu_cargohold_over_reference'])}"
        )
    if "get" in ratios:
        print("== large-blob GET (MiB/s, curl transfer time) ==")
        for name, values in ratios["get"].items():
            if isinstance(values, dict):
                print(
                    f"  {name:<10} best {values['best_mib_s']:>8.0f}   median {values['median_mib_s']:>8.0f}"
                    f"   (n={values['n']})"
                )
        if "median_cargohold_over_nginx" in ratios["get"]:
            print(
                f"  cargohold/nginx: median {fmt_ratio(ratios['get']['median_cargohold_over_nginx'])}, "
                f"best {fmt_ratio(ratios['get']['best_cargohold_over_nginx'])}"
            )
    print("== targets ==")
    if not targets:
        print("  (none evaluated: cargohold was not part of this run)")
    for target in targets:
        print(f"  [{'PASS' if target['passed'] else 'MISS'}] {target['target']}: {target['detail']}")


def tool_versions() -> dict[str, str]:
    """Recorded in the JSON so numbers from different machines/tool versions are not mixed up."""
    versions: dict[str, str] = {"python": platform.python_version(), "cores": str(os.cpu_count())}
    for name, cmd in {
        "skopeo": ["skopeo", "--version"],
        "docker-registry": ["docker-registry", "--version"],
        "nginx": [NginxServer.binary, "-v"],
        "curl": ["curl", "--version"],
    }.items():
        with contextlib.suppress(OSError):
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            versions[name] = (result.stdout or result.stderr).strip().splitlines()[0]
    return versions


# -- main -----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=5, help="number of random layers")
    parser.add_argument("--layer-mb", type=int, default=100, help="size of each layer in MiB")
    parser.add_argument("--pulls", type=int, default=20, help="concurrent pulls in the fan-out phase")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the pull phases; targets use per-phase medians")
    parser.add_argument("--get-repeats", type=int, default=5, help="measured large-blob GETs per server")
    parser.add_argument("--seed", type=int, default=1, help="seed for the random layer content")
    parser.add_argument(
        "--only",
        choices=("auto", "both", "reference"),
        default="auto",
        help="'reference' skips Cargohold; 'auto' skips it (loudly) if its CLI is missing",
    )
    parser.add_argument(
        "--cargohold-first",
        action="store_true",
        help="let Cargohold lead the first phase instead of the reference",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="parent for the run's scratch directory (None: the system temp dir)"
    )
    parser.add_argument(
        "--layout", type=Path, default=None, help="reuse an existing single-image OCI layout instead of generating one"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, data)")
    parser.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if min(args.layers, args.layer_mb, args.get_repeats, args.rounds) < 1:
        parser.error("--layers, --layer-mb, --rounds and --get-repeats must be positive")
    if args.pulls < 2:
        parser.error("--pulls must be at least 2 (the single pull is its own phase)")
    return args


def want_cargohold(only: str) -> bool:
    """Decide whether Cargohold takes part; 'auto' says so loudly when it has to skip it."""
    if only == "reference":
        return False
    available = importlib.util.find_spec("cargohold.cli.main") is not None
    if only == "both" and not available:
        raise BenchError("cargohold.cli.main is not importable; use --only reference to skip Cargohold")
    if not available:
        log("WARNING: cargohold.cli.main is missing, running the reference registry and nginx only")
    return available


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    for binary in ("skopeo", ReferenceRegistry.binary, NginxServer.binary, "curl"):
        if shutil.which(binary) is None:
            raise BenchError(f"{binary} is not installed (scripts/bootstrap.sh installs the benchmark peers)")
    include_cargohold = want_cargohold(args.only)

    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cargohold-bench-", dir=args.work_dir))
    if args.keep:
        stack.callback(log, f"kept scratch directory {work}")
    else:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
    log(f"scratch directory {work}")

    from cargohold.oci.layout import LayoutError

    try:
        if args.layout is not None:
            image = image_from_layout(args.layout.resolve())
        else:
            image = generate_image(work / "layout", args.layers, args.layer_mb, args.seed)
    except LayoutError as exc:
        raise BenchError(f"unusable source image: {exc}") from exc
    log(f"image {image.manifest_digest}: {image.total_bytes / MIB:.1f} MiB total")
    warm_page_cache(image.layout)

    registries: list[Server] = []
    reference = ReferenceRegistry(work / "reference")
    stack.callback(reference.stop)
    reference.start()
    cargohold: CargoholdServer | None = None
    if include_cargohold:
        cargohold = CargoholdServer(work / "cargohold")
        stack.callback(cargohold.stop)
        cargohold.start()
        registries = [cargohold, reference] if args.cargohold_first else [reference, cargohold]
    else:
        registries = [reference]

    bench = Bench(args, work, image, registries)
    print(f"image: {image.layer_count} layers, {image.total_bytes / MIB:.1f} MiB, manifest {image.manifest_digest}")
    phases: list[tuple[str, Callable[[Server], Measurement]]] = [("push", bench.push)]
    for round_no in range(1, args.rounds + 1):
        phases += [
            ("pull1", lambda s, r=round_no: bench.pull(s, 1, r)),
            (f"pull{args.pulls}", lambda s, r=round_no: bench.pull(s, args.pulls, r)),
        ]
    print("lead per phase: " + ", ".join(f"{name}={bench.order(i)[0].name}" for i, (name, _) in enumerate(phases)))
    print(HEADER)
    for index, (name, phase) in enumerate(phases):
        for server in bench.order(index):
            log(f"{name} -> {server.name}")
            bench.results.append(phase(server))

    # The GET ceiling: nginx serves the very file Cargohold stores when we can find it (same inode, same
    # page-cache state); otherwise the identical bytes from the source layout.
    layer = image.largest_layer
    hex_digest, size = str(layer["digest"]).split(":", 1)[1], int(layer["size"])
    blob_file = cargohold.find_blob_file(hex_digest, size) if cargohold is not None else None
    if blob_file is None:
        blob_file = image.layout / "blobs" / "sha256" / hex_digest
        log(f"nginx serves the source layout's copy {blob_file}")
    else:
        log(f"nginx serves Cargohold's own blob file {blob_file}")
    nginx = NginxServer(work / "nginx", blob_file.parent, blob_file.name)
    stack.callback(nginx.stop)
    nginx.start()
    get_targets: list[Server] = [*([cargohold] if cargohold is not None else []), nginx, reference]
    bench.results.extend(bench.blob_gets(get_targets))

    ratios, targets = evaluate(bench.results, args.pulls)
    print_summary(bench.results, ratios, targets)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "config": {
                        "layers": args.layers,
                        "layer_mb": args.layer_mb,
                        "pulls": args.pulls,
                        "get_repeats": args.get_repeats,
                        "rounds": args.rounds,
                        "seed": args.seed,
                        "order": [s.name for s in registries],
                        "nginx_file": str(blob_file),
                    },
                    "image": {"manifest_digest": image.manifest_digest, "total_bytes": image.total_bytes},
                    "versions": tool_versions(),
                    "results": [m.as_dict() for m in bench.results],
                    "ratios": ratios,
                    "targets": targets,
                },
                indent=2,
            )
            + "\n"
        )
        log(f"wrote {args.json}")
    missed = [t for t in targets if not t["passed"]]
    return 1 if missed and args.fail_on_miss else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: everything started is registered on an ExitStack, so Ctrl-C and SIGTERM clean up."""
    args = parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with contextlib.ExitStack() as stack:
            return run(args, stack)
    except BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and scratch directory removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
