"""Two replicas behave as one registry: two ``cargohold serve`` processes sharing one database and one blob
store, behind a round-robin nginx upstream (a private nginx on a free loopback port, config in a temp dir).

What is shown: skopeo pushes through the proxy and each replica serves the image by digest; a build saved
through one replica is pulled through the other with the CLI; an upload moves between replicas chunk by
chunk; a signing key rotated while both run is used and trusted by both without a restart; the GC race soak
runs with both replicas collecting and pushes spread over both; ``kill -9`` of the replica receiving a push
is ridden out by the client's retries through the survivor with nothing referenced lost; and a rolling
restart (SIGTERM one, start it, then the other) under a running pull loop fails no request (issue 19).

The shared backend today is one SQLite file (WAL) and one data dir on this host. ``REPLICA_BACKEND`` is the
one place to change for PostgreSQL + S3: the replicas take ``database_url`` / ``storage_url``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold.client.control import ControlClient
from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from cargohold.sample import write_sample_image
from fixtures_images import require_tools
from nginx import private_nginx
from pgcluster import server_database_url
from processes import free_port
from s3server import S3_MODE, registry_storage
from servers import InProcessServer, ServerProcess, new_admin_token, running
from test_gc_races import _gc_runs, _pull_all
from test_lifecycle_support import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST

pytestmark = [pytest.mark.slow, pytest.mark.tools]

MiB = 1 << 20
REPLICA_BACKEND: dict[str, str | None] = {"database_url": None, "storage_url": None}
"""The shared metadata database and blob store (None: SQLite and the filesystem in the shared data dir). The
test switches of the whole suite (``CARGOHOLD_TEST_DATABASE=postgresql``, ``CARGOHOLD_TEST_BLOB_STORE=s3``)
fill it in when the replicas start, so this module also runs on PostgreSQL + a bucket: the HA topology."""


@dataclass
class Replicas:
    servers: list[ServerProcess]
    proxy_port: int
    admin_token: str
    data_dir: Path
    work: Path

    @property
    def proxy(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy}"

    def proxy_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.proxy_url, auth=("x-token", self.admin_token), timeout=30, follow_redirects=S3_MODE
        )

    def served_by(self) -> list[int]:
        """How many requests each replica's access log shows (a replica's log outlives its restarts)."""
        return [server.log().count("method=") for server in self.servers]


def nginx_config(port: int, upstreams: list[int]) -> str:
    """A round-robin upstream over the replicas, streaming both ways as deploy/nginx/cargohold.conf does, and
    retrying a request on the next replica when one refuses the connection or answers 502/503 (draining)."""
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n" for p in upstreams)
    return (
        "  upstream cargohold {\n"
        + servers
        + "    keepalive 16;\n  }\n"
        + f"  server {{\n    listen 127.0.0.1:{port};\n"
        + "    client_max_body_size 0;\n    proxy_request_buffering off;\n    proxy_buffering off;\n"
        + '    proxy_http_version 1.1;\n    proxy_set_header Connection "";\n'
        + "    proxy_next_upstream error timeout http_502 http_503;\n    proxy_next_upstream_tries 3;\n"
        + "    location / {\n      proxy_pass http://cargohold;\n      proxy_set_header Host $http_host;\n"
        + "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        + "      proxy_set_header X-Forwarded-Proto $scheme;\n    }\n  }\n"
    )


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    require_tools("nginx", "skopeo")
    work = tmp_path_factory.mktemp("replicas")
    data_dir = work / "data"
    REPLICA_BACKEND["database_url"] = server_database_url(data_dir)
    REPLICA_BACKEND["storage_url"] = registry_storage(data_dir)[0]
    proxy_port = free_port()
    token = new_admin_token()
    servers = [
        ServerProcess(
            data_dir=data_dir,
            admin_token=token,
            **REPLICA_BACKEND,
            extra_args=[
                *("--public-url", f"http://127.0.0.1:{proxy_port}", "--trusted-proxy", "127.0.0.1/32"),
                *("--shutdown-timeout", "5s", "--key-reload-interval", "0.5s"),
            ],
        )
        for _ in range(2)
    ]
    # Both start at once: a first start on an empty database must still end with one signing key.
    starters = [threading.Thread(target=server.start) for server in servers]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    cluster = Replicas(servers, proxy_port, token, data_dir, work)
    try:
        assert all(server.process is not None and server.process.poll() is None for server in servers), [
            s.log()[-2000:] for s in servers
        ]
        with private_nginx(work, nginx_config(proxy_port, [s.port for s in servers]), f"{cluster.proxy_url}/healthz"):
            yield cluster
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.log(), server.log()[-4000:]


def skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"skopeo {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def cli(replicas: Replicas, registry: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "CARGOHOLD_REGISTRY": registry,
        "CARGOHOLD_TOKEN": replicas.admin_token,
        "CARGOHOLD_CONFIG": str(replicas.work / "no-login.json"),
        "CARGOHOLD_PROGRESS": "plain",
        "CARGOHOLD_RETRY_FOR": "30s",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cargohold", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def start_save(replicas: Replicas, registry: str, image_dir: Path, project: str) -> subprocess.Popen[str]:
    """``cargohold save --json`` of the sample layout's ``v1`` into ``project`` through ``registry``."""
    return cli(replicas, registry, "save", f"oci:{image_dir}:v1", "--json", env={"CARGOHOLD_PROJECT_ID": project})


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def new_project(url: str, token: str, name: str) -> str:
    with ControlClient(url, token) as control:
        return str(control.create_project(name).id)


# --------------------------------------------------------------------------------------------- tests


def test_skopeo_push_through_the_proxy_and_pull_by_digest_from_each_replica(replicas: Replicas, tmp_path: Path) -> None:
    image = write_sample_image(tmp_path / "image", layers=2, layer_size=2 * MiB, seed=1301, ref="v1")
    creds = f"x-token:{replicas.admin_token}"
    skopeo(
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        f"oci:{tmp_path / 'image'}:v1",
        f"docker://{replicas.proxy}/replicas/app:v1",
    )
    for index, server in enumerate(replicas.servers):
        # The token realm is the proxy: a token one replica signed is presented to this one.
        by_digest = f"docker://{server.host}/replicas/app@{image.manifest.digest}"
        raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, by_digest)
        assert Digest.of(raw.encode()) == image.manifest.digest
        out = tmp_path / f"pulled-{index}"
        skopeo("copy", "--preserve-digests", "--src-tls-verify=false", "--src-creds", creds, by_digest, f"oci:{out}:v1")
        layout = OCILayout.open(out)
        for descriptor in image.layers:
            assert sum(len(c) for c in layout.iter_blob(descriptor.digest, descriptor.size)) == descriptor.size
    access = (replicas.work / "nginx-access.log").read_text()
    assert '"PUT /v2/replicas/app/manifests/v1' in access
    assert all(count > 0 for count in replicas.served_by()), replicas.served_by()  # round robin reached both


def test_a_build_saved_through_one_replica_is_pulled_through_the_other(replicas: Replicas, tmp_path: Path) -> None:
    first, second = replicas.servers
    image = write_sample_image(tmp_path / "image", layers=2, layer_size=1 * MiB, seed=1302, ref="v1")
    project = new_project(first.url, replicas.admin_token, "saved-on-a")
    saved = json.loads(finish(start_save(replicas, first.url, tmp_path / "image", project)))
    assert saved["digest"] == str(image.manifest.digest)
    pulled = json.loads(
        finish(cli(replicas, second.url, "pull", saved["build_id"], "-o", f"oci:{tmp_path / 'out'}", "--json"))
    )
    assert pulled["digest"] == str(image.manifest.digest)
    layout = OCILayout.open(tmp_path / "out")
    for descriptor in image.blobs:
        assert sum(len(c) for c in layout.iter_blob(descriptor.digest, descriptor.size)) == descriptor.size


def test_one_upload_moves_between_replicas_chunk_by_chunk(replicas: Replicas) -> None:
    """POST on A, PATCH on B, PATCH on A, PUT on B: the session, its staged bytes and its running hash
    follow the upload, whichever replica a request reaches."""
    first, second = replicas.servers
    chunks = [os.urandom(300_000), os.urandom(200_000)]
    digest = "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()
    with first.client() as a, second.client() as b:
        started = a.post("/v2/replicas/chunked/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = httpx.URL(started.headers["Location"]).raw_path.decode()
        offset = 0
        for client, chunk in zip((b, a), chunks, strict=True):
            patched = client.patch(
                location,
                content=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
            )
            assert patched.status_code == 202, patched.text
            offset += len(chunk)
            assert patched.headers["Range"] == f"0-{offset - 1}"
            location = httpx.URL(patched.headers["Location"]).raw_path.decode()
        assert a.get(location).headers["Range"] == f"0-{offset - 1}"
        done = b.put(location, params={"digest": digest})
        assert done.status_code == 201, done.text
        for client in (a, b):
            blob = client.get(f"/v2/replicas/chunked/blobs/{digest}")
            assert blob.status_code == 200 and blob.content == b"".join(chunks)


@pytest.mark.skipif(S3_MODE, reason="the staged file and its flock are the filesystem store's (S3 assembles parts)")
def test_a_commit_on_one_replica_never_takes_bytes_another_is_still_writing(replicas: Replicas) -> None:
    """An attacker with push rights streams a PATCH to replica A and pauses; while A holds the staged file
    open, they commit the upload on replica B with the digest of the bytes staged so far (the digest of a
    blob another repository already has). Without a cross-replica lock B's commit renames the staged file
    over that blob and A's remaining bytes then land in it: every repository linking the digest serves wrong
    content. With the lock B waits for A's request and then finds the staged bytes no longer match."""
    first, second = replicas.servers
    content = os.urandom(3 * MiB)
    resume = threading.Event()

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < len(content):
            if sent == 5 * MiB // 2:
                resume.wait(30)
            piece = content[sent : sent + (64 << 10)]
            sent += len(piece)
            yield piece

    with first.client() as a, second.client() as b:
        started = a.post("/v2/replicas/attacker/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = httpx.URL(started.headers["Location"]).raw_path.decode()
        upload_id = location.rstrip("/").rsplit("/", 1)[-1]
        staged_file = replicas.data_dir / "uploads" / upload_id
        answers: dict[str, httpx.Response] = {}
        patch = threading.Thread(
            target=lambda: answers.update(
                patch=a.patch(location, content=body(), headers={"Content-Type": "application/octet-stream"})
            )
        )
        patch.start()
        try:
            _poll(lambda: staged_file.stat().st_size >= 2 * MiB, "replica A staged nothing")
            time.sleep(0.2)
            staged = staged_file.stat().st_size  # what A wrote so far; the rest of what it read is in its memory
            digest = "sha256:" + hashlib.sha256(content[:staged]).hexdigest()
            victim = a.post(
                "/v2/replicas/victim/blobs/uploads/",
                params={"digest": digest},
                content=content[:staged],
                headers={"Content-Type": "application/octet-stream"},
            )
            assert victim.status_code == 201, victim.text
            commit = threading.Thread(target=lambda: answers.update(put=b.put(location, params={"digest": digest})))
            commit.start()
            time.sleep(0.5)  # B's commit is waiting for A's request (or, unlocked, has renamed the file already)
        finally:
            resume.set()
            patch.join()
        commit.join()
        assert answers["patch"].status_code == 202, answers["patch"].text
        assert answers["put"].status_code in (400, 429), answers["put"].text  # DIGEST_INVALID, or still busy
        served = b.get(f"/v2/replicas/victim/blobs/{digest}")
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == digest.split(":")[1], "the victim's blob was poisoned"


def _kid(token: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"])


def _registry_token(server: ServerProcess, token: str) -> str:
    answer = httpx.get(
        f"{server.url}/token",
        params={"service": "cargohold", "scope": "repository:replicas/app:pull"},
        auth=("x-token", token),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def _poll(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _admin(replicas: Replicas, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``cargohold admin COMMAND`` on the replicas' shared database (options first, then ``args``)."""
    database = REPLICA_BACKEND["database_url"]
    options = ["--data-dir", str(replicas.data_dir), *(["--database-url", database] if database else [])]
    return subprocess.run(
        [sys.executable, "-m", "cargohold", "admin", command, *options, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_key_rotated_while_both_run_is_used_and_trusted_by_both(replicas: Replicas) -> None:
    first, second = replicas.servers
    old_token = _registry_token(first, replicas.admin_token)
    old = _kid(old_token)
    assert _kid(_registry_token(second, replicas.admin_token)) == old  # one key for both

    rotated = _admin(replicas, "rotate-signing-key")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.split()[3]
    # No restart: each replica signs with the new key within its --key-reload-interval (0.5 s here).
    for server in replicas.servers:
        _poll(
            lambda s=server: _kid(_registry_token(s, replicas.admin_token)) == new,
            f"{server.url} never signed with {new}",
        )
    new_token = _registry_token(first, replicas.admin_token)
    for server in replicas.servers:
        for token in (old_token, new_token):  # the old key still verifies until it is retired
            answer = httpx.get(f"{server.url}/v2/replicas/app/tags/list", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code in (200, 404), answer.text

    retired = _admin(replicas, "retire-signing-key", "--", old)  # "--": a key ID may begin with "-"
    assert retired.returncode == 0, retired.stderr
    for server in replicas.servers:

        def refused(s: ServerProcess = server) -> bool:
            answer = httpx.get(f"{s.url}/v2/replicas/app/tags/list", headers={"Authorization": f"Bearer {old_token}"})
            return answer.status_code == 401

        _poll(refused, f"{server.url} still trusts the retired key {old}")


def test_gc_race_soak_across_two_replicas(tmp_path: Path) -> None:
    """tests/test_gc_races.py's soak with two replicas collecting garbage every 0.25 s (1 s grace) on one
    database and data dir, and every push spread over both: blobs through one, the manifest through the
    other. In-process replicas: the soak is about the shared stores, not the processes."""
    # The grace window must outlast one push; pushes through moto take longer than through a local disk.
    grace = timedelta(seconds=3 if S3_MODE else 1)
    settings: dict[str, Any] = {"gc_interval": timedelta(seconds=0.25), "gc_grace": grace}
    if REPLICA_BACKEND["database_url"] is not None:
        settings["database_url"] = REPLICA_BACKEND["database_url"]
    token = new_admin_token()
    first = InProcessServer(tmp_path / "data", settings, admin_token=token)
    second = InProcessServer(tmp_path / "data", settings, admin_token=token)
    with running(first), running(second), first.client() as a0, second.client() as b0:
        shared = [b"shared-base-" + bytes([i]) * 2048 for i in range(3)]
        saved: list[tuple[str, str]] = []
        unexpected: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 6

        def push_blob(http: httpx.Client, repository: str, data: bytes) -> dict[str, object]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            started = http.post(f"/v2/{repository}/blobs/uploads/")
            assert started.status_code == 202, started.text
            done = http.put(
                httpx.URL(started.headers["Location"]).raw_path.decode(),
                params={"digest": digest},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert done.status_code == 201, done.text
            return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}

        def saver(worker: int) -> None:
            with first.client() as a, second.client() as b:
                blobs_via, manifest_via = (a, b) if worker % 2 else (b, a)
                repository, n = f"soak/w{worker}", 0
                while time.monotonic() < deadline or n < 6:  # a minimum of rounds, on a slow store too
                    n += 1
                    tag = f"t{n}"
                    for _attempt in range(3):
                        config = push_blob(blobs_via, repository, json.dumps({"salt": f"{worker}-{n}"}).encode())
                        config["mediaType"] = OCI_CONFIG
                        layers = [
                            push_blob(blobs_via, repository, layer) for layer in [*shared, f"{worker}-{n}".encode()]
                        ]
                        body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
                        response = manifest_via.put(
                            f"/v2/{repository}/manifests/{tag}",
                            content=json.dumps(body).encode(),
                            headers={"Content-Type": OCI_MANIFEST},
                        )
                        if response.status_code == 201:
                            with lock:
                                saved.append((repository, tag))
                            break
                        if response.json()["errors"][0]["code"] != "MANIFEST_BLOB_UNKNOWN":
                            with lock:
                                unexpected.append(response.text)
                            return
                    if n % 3 == 0:  # unreferenced images give GC real work
                        blobs_via.delete(f"/v2/{repository}/manifests/{tag}")
                        with lock:
                            saved.remove((repository, tag))
                    time.sleep(0.05)

        threads = [threading.Thread(target=saver, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert unexpected == []
        assert len(saved) > 10
        # Both replicas ran passes; two more passes each over the finished state, then everything is there.
        marks = [_gc_runs(a0), _gc_runs(b0)]
        assert all(mark > 0 for mark in marks), marks
        _poll(lambda: _gc_runs(a0) >= marks[0] + 2 and _gc_runs(b0) >= marks[1] + 2, "GC stopped running", 30)
        for repository, tag in saved:
            _pull_all(a0, repository, tag)
            _pull_all(b0, repository, tag)
    assert "Traceback" not in first.log() + second.log()


def _cpu_ticks(server: ServerProcess) -> int:
    """CPU time (user + system, in clock ticks) the replica's process has used so far."""
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def _staged_bytes(replicas: Replicas) -> Callable[[], int]:
    """A function answering how many bytes of uploads in progress the shared blob store holds beyond now's."""
    if S3_MODE:
        import boto3  # the s3 extra, installed with the test tools

        url = REPLICA_BACKEND["storage_url"]
        assert url is not None
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = boto3.client("s3")

        def sizes() -> dict[str, int]:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/uploads/".lstrip("/"))
            return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}

    else:
        uploads = replicas.data_dir / "uploads"

        def sizes() -> dict[str, int]:
            found = {}
            for path in uploads.iterdir():
                with contextlib.suppress(FileNotFoundError):  # committed meanwhile
                    found[str(path)] = path.stat().st_size
            return found

    earlier = set(sizes())
    return lambda: sum(size for key, size in sizes().items() if key not in earlier)


def test_kill_9_of_the_replica_receiving_a_push_is_ridden_out_through_the_survivor(
    replicas: Replicas, tmp_path: Path
) -> None:
    image = write_sample_image(tmp_path / "image", layers=3, layer_size=12 * MiB, seed=1303, ref="v1")
    project = new_project(replicas.proxy_url, replicas.admin_token, "kill-9")
    staged = _staged_bytes(replicas)

    save = start_save(replicas, replicas.proxy_url, tmp_path / "image", project)
    deadline = time.monotonic() + 60
    while staged() < 3 * MiB:
        assert save.poll() is None, save.communicate()
        assert time.monotonic() < deadline, "the push did not start"
        time.sleep(0.002)
    # The replica whose process is busy right now (hashing, storing) is the one receiving the layer.
    before = [_cpu_ticks(s) for s in replicas.servers]
    time.sleep(0.2)
    deltas = [_cpu_ticks(s) - b for s, b in zip(replicas.servers, before, strict=True)]
    victim, survivor = (
        (replicas.servers[0], replicas.servers[1])
        if deltas[0] >= deltas[1]
        else (replicas.servers[1], replicas.servers[0])
    )
    victim.stop(kill=True)
    try:
        saved = json.loads(finish(save))
        assert saved["digest"] == str(image.manifest.digest)
        with survivor.client() as http:
            gc = http.post("/api/v1/gc", json={})  # nothing the build references may go
            assert gc.status_code == 200 and gc.json()["completed"] is True, gc.text
            _pull_all(http, project, saved["build_id"])
    finally:
        victim.start()
    with victim.client() as http:  # and the restarted replica serves it too
        _pull_all(http, project, saved["build_id"])


def test_rolling_restart_under_pulls_and_saves_fails_nothing(replicas: Replicas, tmp_path: Path) -> None:
    write_sample_image(tmp_path / "image", layers=2, layer_size=1 * MiB, seed=1304, ref="v1")
    project = new_project(replicas.proxy_url, replicas.admin_token, "rolling")
    saved = json.loads(finish(start_save(replicas, replicas.proxy_url, tmp_path / "image", project)))
    repository, reference = project, saved["build_id"]
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def pull_loop() -> None:
        with replicas.proxy_client() as http:
            while not stop.is_set():
                try:
                    _pull_all(http, repository, reference)
                    done[0] += 1
                except (AssertionError, httpx.HTTPError) as exc:
                    failures.append(repr(exc))

    saves: list[subprocess.Popen[str]] = []

    def save_loop() -> None:  # concurrent saves through the proxy: the CLI's retries ride out the drains
        while not stop.is_set():
            save = start_save(replicas, replicas.proxy_url, tmp_path / "image", project)
            saves.append(save)
            out, err = save.communicate(timeout=120)
            if save.returncode != 0:
                failures.append(f"save: {err}")
            elif json.loads(out)["digest"] != saved["digest"]:
                failures.append(f"save: {out}")

    pullers = [threading.Thread(target=pull_loop) for _ in range(3)] + [threading.Thread(target=save_loop)]
    for puller in pullers:
        puller.start()
    try:
        for server in replicas.servers:  # one at a time, as a rolling upgrade does
            before = done[0]
            _poll(lambda b=before: done[0] > b + 3, "the pull loop is not running")
            server.stop()  # SIGTERM: drain, exit
            assert server.process is not None and server.process.returncode == 0, server.log()[-3000:]
            server.start()
            # As a rolling upgrade waits for the balancer to see the replica healthy before the next one:
            # requests through the proxy reach the restarted replica again.
            served = server.log().count("method=")
            _poll(lambda s=server, n=served: s.log().count("method=") > n + 3, "the proxy never routed to it again")
        after = done[0]
        _poll(lambda: done[0] > after + 3, "the pull loop stalled after the restarts")
    finally:
        stop.set()
        for puller in pullers:
            puller.join()
    assert failures == [], failures[:5]
    assert done[0] > 10 and len(saves) >= 2, (done, len(saves))
