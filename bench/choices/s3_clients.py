"""Which S3 client for the blob store: obstore vs boto3 (sync, from threads) vs aiobotocore (async), measured.

One moto S3 server (tests/s3server.py) runs in its own process; each client runs in a fresh child process so
that its import time, its CPU (``getrusage(RUSAGE_SELF)``, every thread of the client process) and its peak
memory are its own. moto is slow, so wall times mostly measure moto; the comparison that matters for the
registry is the client's CPU per GB and per operation, and what each API can do at all.

Per client: a streaming multipart upload in ``--part-mb`` parts, hashed (SHA-256) as the parts are produced;
a streamed download, hashed; a ranged GET across a part boundary; HEAD, LIST and DELETE round trips;
``--presigns`` presigned SigV4 GET URLs (no network: pure client CPU); server-side copy; a multipart upload
begun in one process and finished in another (upload id persisted, parts listed with ListParts); and whether
an AWS profile in the config file (endpoint and keys) is honoured. A "hash only" row is the cost of SHA-256
over the same bytes, which every client pays equally.

    python bench/choices/s3_clients.py                 # 256 MiB per client, 8 MiB parts
    python bench/choices/s3_clients.py --size-mb 64    # quicker

It is a benchmark, not a test: it prints a table and exits 0 unless a client fails outright.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import MiB, cpu_seconds, footprint, peak_rss_mib, print_table

CLIENTS = ("obstore", "boto3", "boto3-no-crc", "aiobotocore")
PACKAGES = {"obstore": "obstore", "boto3": "boto3", "boto3-no-crc": "boto3", "aiobotocore": "aiobotocore"}


def _parts(size: int, part: int) -> Iterator[bytes]:
    """``size`` bytes in ``part``-sized chunks; one random chunk reused so the RNG is not measured."""
    chunk = os.urandom(part)
    sent = 0
    while sent < size:
        piece = chunk if size - sent >= part else chunk[: size - sent]
        sent += len(piece)
        yield piece


class Measure:
    """Wall and CPU seconds of a block of client work."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, float]] = {}

    def __call__(self, name: str) -> _Span:
        return _Span(self, name)


class _Span:
    def __init__(self, measure: Measure, name: str) -> None:
        self.measure, self.name = measure, name

    def __enter__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()

    def __exit__(self, *exc: object) -> None:
        self.measure.results[self.name] = {
            "wall": time.perf_counter() - self.wall,
            "cpu": cpu_seconds() - self.cpu,
        }


# --- the three clients, each doing the same work --------------------------------------------------------


def run_boto3(
    bucket: str, args: argparse.Namespace, measure: Measure, out: dict[str, Any], *, checksums: str = "when_supported"
) -> None:
    started = time.perf_counter()
    import boto3
    from botocore.config import Config

    out["import_s"] = time.perf_counter() - started
    # SigV4 must be asked for: boto3 presigns with the legacy SigV2 query string unless told otherwise.
    config = Config(
        signature_version="s3v4",
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
    )
    client = boto3.client("s3", config=config)
    size, part = args.size_mb * MiB, args.part_mb * MiB
    key = "big"
    hasher = hashlib.sha256()
    with measure("upload"):
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        etags = []
        for number, chunk in enumerate(_parts(size, part), start=1):
            hasher.update(chunk)
            response = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
            etags.append({"PartNumber": number, "ETag": response["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": etags})
    out["upload_sha256"] = hasher.hexdigest()
    hasher = hashlib.sha256()
    with measure("download"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(MiB):
            hasher.update(chunk)
    out["download_sha256"] = hasher.hexdigest()
    start = part - 10
    ranged = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + 19}")["Body"].read()
    out["range_ok"] = len(ranged) == 20
    with measure("head"):
        for _ in range(args.small_ops):
            client.head_object(Bucket=bucket, Key=key)
    with measure("put_small"):
        for number in range(args.small_ops):
            client.put_object(Bucket=bucket, Key=f"small/{number}", Body=b"x" * 100)
    with measure("list"):
        listed = sum(
            len(page.get("Contents", []))
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="small/")
        )
    out["list_ok"] = listed == args.small_ops
    with measure("delete"):
        for number in range(args.small_ops):
            client.delete_object(Bucket=bucket, Key=f"small/{number}")
    with measure("presign"):
        for number in range(args.presigns):
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": f"blob/{number}"}, ExpiresIn=300
            )
    out["presign_sigv4"] = "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key})
    out["copy_ok"] = client.head_object(Bucket=bucket, Key="copy")["ContentLength"] == size


def run_aiobotocore(bucket: str, args: argparse.Namespace, measure: Measure, out: dict[str, Any]) -> None:
    started = time.perf_counter()
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    out["import_s"] = time.perf_counter() - started

    async def work() -> None:
        async with get_session().create_client("s3", config=AioConfig(signature_version="s3v4")) as client:
            size, part = args.size_mb * MiB, args.part_mb * MiB
            key = "big"
            hasher = hashlib.sha256()
            with measure("upload"):
                upload_id = (await client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
                etags = []
                for number, chunk in enumerate(_parts(size, part), start=1):
                    hasher.update(chunk)
                    response = await client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    etags.append({"PartNumber": number, "ETag": response["ETag"]})
                await client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": etags}
                )
            out["upload_sha256"] = hasher.hexdigest()
            hasher = hashlib.sha256()
            with measure("download"):
                response = await client.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as body:
                    async for chunk in body.iter_chunks(MiB):
                        hasher.update(chunk)
            out["download_sha256"] = hasher.hexdigest()
            start = part - 10
            response = await client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + 19}")
            async with response["Body"] as body:
                out["range_ok"] = len(await body.read()) == 20
            with measure("head"):
                for _ in range(args.small_ops):
                    await client.head_object(Bucket=bucket, Key=key)
            with measure("put_small"):
                for number in range(args.small_ops):
                    await client.put_object(Bucket=bucket, Key=f"small/{number}", Body=b"x" * 100)
            with measure("list"):
                listed = 0
                async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="small/"):
                    listed += len(page.get("Contents", []))
            out["list_ok"] = listed == args.small_ops
            with measure("delete"):
                for number in range(args.small_ops):
                    await client.delete_object(Bucket=bucket, Key=f"small/{number}")
            with measure("presign"):
                for number in range(args.presigns):
                    url = await client.generate_presigned_url(
                        "get_object", Params={"Bucket": bucket, "Key": f"blob/{number}"}, ExpiresIn=300
                    )
            out["presign_sigv4"] = "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
            await client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key})
            out["copy_ok"] = (await client.head_object(Bucket=bucket, Key="copy"))["ContentLength"] == size

    asyncio.run(work())


def run_obstore(bucket: str, args: argparse.Namespace, measure: Measure, out: dict[str, Any]) -> None:
    started = time.perf_counter()
    import obstore
    from obstore.store import S3Store

    out["import_s"] = time.perf_counter() - started
    store = S3Store(bucket)  # endpoint, keys, region and allow-http from the AWS_* environment
    size, part = args.size_mb * MiB, args.part_mb * MiB
    key = "big"
    hasher = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in _parts(size, part):
            hasher.update(chunk)
            yield chunk

    with measure("upload"):
        # Iterable input always becomes a multipart upload; concurrency bounded so memory stays ~ parts x 2.
        obstore.put(store, key, hashed(), chunk_size=part, max_concurrency=2)
    out["upload_sha256"] = hasher.hexdigest()
    hasher = hashlib.sha256()
    with measure("download"):
        for chunk in obstore.get(store, key).stream(min_chunk_size=MiB):
            hasher.update(chunk)
    out["download_sha256"] = hasher.hexdigest()
    start = part - 10
    out["range_ok"] = len(obstore.get_range(store, key, start=start, length=20)) == 20
    with measure("head"):
        for _ in range(args.small_ops):
            obstore.head(store, key)
    with measure("put_small"):
        for number in range(args.small_ops):
            obstore.put(store, f"small/{number}", b"x" * 100)
    with measure("list"):
        listed = sum(len(batch) for batch in obstore.list(store, prefix="small/"))
    out["list_ok"] = listed == args.small_ops
    with measure("delete"):
        for number in range(args.small_ops):
            obstore.delete(store, f"small/{number}")
    with measure("presign"):
        for number in range(args.presigns):
            url = obstore.sign(store, "GET", f"blob/{number}", timedelta(minutes=5))
    out["presign_sigv4"] = "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    obstore.copy(store, key, "copy")
    out["copy_ok"] = obstore.head(store, "copy")["size"] == size


def run_hash_only(bucket: str, args: argparse.Namespace, measure: Measure, out: dict[str, Any]) -> None:
    """The SHA-256 cost every client pays on both directions (subtract it to see the client's own work)."""
    out["import_s"] = 0.0
    for name in ("upload", "download"):
        hasher = hashlib.sha256()
        with measure(name):
            for chunk in _parts(args.size_mb * MiB, args.part_mb * MiB):
                hasher.update(chunk)


RUNNERS: dict[str, Callable[[str, argparse.Namespace, Measure, dict[str, Any]], None]] = {
    "obstore": run_obstore,
    "boto3": run_boto3,
    # The same without botocore's default CRC32 of every part and response (S3 still checks Content-Length,
    # and the registry verifies the SHA-256 digest itself): shows how much of boto3's CPU that costs.
    "boto3-no-crc": lambda *a: run_boto3(*a, checksums="when_required"),
    "aiobotocore": run_aiobotocore,
    "hash only": run_hash_only,
}


# --- capabilities that need more than one process or a config file -------------------------------------


def resume_step(client: str, bucket: str, step: str, state_file: Path) -> None:
    """One half of a multipart upload; the upload id and nothing else crosses the process boundary."""
    part = os.urandom(5 * MiB)
    if client.startswith("boto3"):
        import boto3

        s3 = boto3.client("s3")
        if step == "begin":
            upload_id = s3.create_multipart_upload(Bucket=bucket, Key="resumed")["UploadId"]
            s3.upload_part(Bucket=bucket, Key="resumed", UploadId=upload_id, PartNumber=1, Body=part)
            state_file.write_text(upload_id)
            return
        upload_id = state_file.read_text()
        parts = s3.list_parts(Bucket=bucket, Key="resumed", UploadId=upload_id)["Parts"]
        response = s3.upload_part(Bucket=bucket, Key="resumed", UploadId=upload_id, PartNumber=2, Body=b"tail")
        done = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
        done.append({"PartNumber": 2, "ETag": response["ETag"]})
        s3.complete_multipart_upload(Bucket=bucket, Key="resumed", UploadId=upload_id, MultipartUpload={"Parts": done})
        size = s3.head_object(Bucket=bucket, Key="resumed")["ContentLength"]
        if size != 5 * MiB + 4:
            raise SystemExit(f"resumed object has {size} bytes")
        return
    if client == "aiobotocore":
        from aiobotocore.session import get_session

        async def work() -> None:
            async with get_session().create_client("s3") as s3:
                if step == "begin":
                    upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key="resumed"))["UploadId"]
                    await s3.upload_part(Bucket=bucket, Key="resumed", UploadId=upload_id, PartNumber=1, Body=part)
                    state_file.write_text(upload_id)
                    return
                upload_id = state_file.read_text()
                parts = (await s3.list_parts(Bucket=bucket, Key="resumed", UploadId=upload_id))["Parts"]
                response = await s3.upload_part(
                    Bucket=bucket, Key="resumed", UploadId=upload_id, PartNumber=2, Body=b"tail"
                )
                done = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
                done.append({"PartNumber": 2, "ETag": response["ETag"]})
                await s3.complete_multipart_upload(
                    Bucket=bucket, Key="resumed", UploadId=upload_id, MultipartUpload={"Parts": done}
                )
                size = (await s3.head_object(Bucket=bucket, Key="resumed"))["ContentLength"]
                if size != 5 * MiB + 4:
                    raise SystemExit(f"resumed object has {size} bytes")

        asyncio.run(work())
        return
    # obstore exposes multipart only inside put()/open_writer(): no upload id to persist, no ListParts.
    import obstore

    missing = [name for name in ("create_multipart", "put_part", "complete_multipart") if not hasattr(obstore, name)]
    raise SystemExit(f"obstore {obstore.__version__} has no {', '.join(missing)}")


def profile_step(client: str, bucket: str) -> None:
    """HEAD the bucket with endpoint and keys coming only from a named profile in AWS_CONFIG_FILE."""
    if client.startswith("boto3"):
        import boto3

        boto3.client("s3").head_bucket(Bucket=bucket)
    elif client == "aiobotocore":
        from aiobotocore.session import get_session

        async def work() -> None:
            async with get_session().create_client("s3") as s3:
                await s3.head_bucket(Bucket=bucket)

        asyncio.run(work())
    else:
        import obstore
        from obstore.store import S3Store

        obstore.list(S3Store(bucket), prefix="x").collect()


# --- orchestration --------------------------------------------------------------------------------------


def _child(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run this script in a fresh process whose only AWS settings are ``env``."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, __file__, *args],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _capabilities(server: Any, client: str, scratch: Path) -> dict[str, bool]:
    env = server.environment(scratch / "aws-env")
    bucket = f"caps-{client}"
    server.create_bucket(bucket)
    state = scratch / f"{client}.upload-id"
    begin = _child(["--resume", client, "begin", bucket, str(state)], env)
    finish = _child(["--resume", client, "finish", bucket, str(state)], env) if begin.returncode == 0 else begin
    resumable = begin.returncode == 0 and finish.returncode == 0
    if not resumable:
        print(f"  {client}: resumable multipart: {(finish.stderr or finish.stdout).strip().splitlines()[-1:]}")
    # A profile only: no endpoint or keys in the environment.
    config = scratch / f"{client}.aws-config"
    config.write_text(
        "[profile bench]\n"
        f"aws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
        f"region = {env['AWS_REGION']}\n"
        f"endpoint_url = {server.endpoint}\n"
    )
    profile_env = {name: value for name, value in env.items() if name in ("AWS_SHARED_CREDENTIALS_FILE",)}
    profile_env |= {"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "bench", "AWS_ALLOW_HTTP": "true"}
    profile = _child(["--profile", client, bucket], {**profile_env, "AWS_EC2_METADATA_DISABLED": "true"})
    return {"resumable": resumable, "profile": profile.returncode == 0}


def orchestrate(args: argparse.Namespace) -> int:
    from s3server import S3Server

    scratch = Path(tempfile.mkdtemp(prefix="cargohold-s3bench-"))
    server = S3Server(base_dir=scratch)
    started = time.perf_counter()
    server.start()
    print(f"moto server ready in {time.perf_counter() - started:.2f} s (subprocess)")
    results: dict[str, dict[str, Any]] = {}
    failed = False
    try:
        for client in [*args.clients, "hash only"]:
            bucket = f"bench-{client.replace(' ', '-')}"
            server.create_bucket(bucket)
            env = server.environment(scratch / "aws")
            proc = _child(["--worker", client, bucket, *sys.argv[1:]], env)
            server.reset()
            if proc.returncode != 0:
                print(f"{client} FAILED:\n{proc.stdout}\n{proc.stderr}")
                failed = True
                continue
            results[client] = json.loads(proc.stdout.strip().splitlines()[-1])
            if client != "hash only":
                results[client]["caps"] = _capabilities(server, client, scratch)
                server.reset()
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    _report(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 1 if failed else 0


def _report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    gib = args.size_mb / 1024
    baseline = results.get("hash only", {}).get("spans", {})
    rows = []
    for client, result in results.items():
        spans = result["spans"]
        up, down = spans["upload"], spans["download"]
        row: list[object] = [client]
        row.append(f"{up['cpu'] / gib:.2f}")
        row.append(f"{(up['cpu'] - baseline.get('upload', {}).get('cpu', 0)) / gib:.2f}" if baseline else "")
        row.append(f"{down['cpu'] / gib:.2f}")
        row.append(f"{(down['cpu'] - baseline.get('download', {}).get('cpu', 0)) / gib:.2f}" if baseline else "")
        row.append(f"{args.size_mb / up['wall']:.0f} / {args.size_mb / down['wall']:.0f}")
        if client == "hash only":
            rows.append([*row, "", "", "", f"{result['rss_mib']:.0f}", ""])
            continue
        ops = args.small_ops
        per_op = [spans[name]["cpu"] / ops * 1e3 for name in ("head", "put_small", "list", "delete")]
        row.append(" / ".join(f"{value:.2f}" for value in per_op[:2] + per_op[3:]))
        presign = spans["presign"]
        row.append(f"{args.presigns / presign['wall']:,.0f}")
        row.append(f"{result['import_s'] * 1e3:.0f}")
        row.append(f"{result['rss_mib']:.0f}")
        row.append("ok" if result["ok"] else "MISMATCH")
        rows.append(row)
    print(f"\n{args.size_mb} MiB object, {args.part_mb} MiB parts; CPU of the client process only (moto elsewhere)")
    print_table(
        [
            "client",
            "up CPU s/GiB",
            "up minus hash",
            "down CPU s/GiB",
            "down minus hash",
            "MiB/s up/down (moto-bound)",
            "CPU ms/op head/put/delete",
            "presigns/s",
            "import ms",
            "peak RSS MiB",
            "hashes, range, list, copy, SigV4",
        ],
        rows,
    )
    print()
    caps_rows = []
    for client, result in results.items():
        if client == "hash only":
            continue
        fp = footprint(PACKAGES[client])
        caps = result["caps"]
        caps_rows.append(
            [
                client,
                fp.version,
                fp.licence,
                f"{fp.own_mib:.1f}",
                f"{fp.added_mib:.1f} ({len(fp.added_packages)} pkgs)",
                "yes" if caps["resumable"] else "no",
                "yes" if caps["profile"] else "no",
            ]
        )
    print_table(
        [
            "client",
            "version",
            "licence",
            "installed MiB",
            "MiB added to cargohold",
            "multipart resumable across processes",
            "AWS profile honoured",
        ],
        caps_rows,
    )


def worker(client: str, bucket: str, args: argparse.Namespace) -> None:
    measure = Measure()
    out: dict[str, Any] = {}
    RUNNERS[client](bucket, args, measure, out)
    ok = client == "hash only" or (
        out["upload_sha256"] == out["download_sha256"]
        and all(out[name] for name in ("range_ok", "list_ok", "copy_ok", "presign_sigv4"))
    )
    print(json.dumps({"spans": measure.results, "import_s": out["import_s"], "rss_mib": peak_rss_mib(), "ok": ok}))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--resume":
        resume_step(sys.argv[2], sys.argv[4], sys.argv[3], Path(sys.argv[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--profile":
        profile_step(sys.argv[2], sys.argv[3])
        return 0
    worker_args: list[str] = []
    argv = sys.argv[1:]
    if argv and argv[0] == "--worker":
        worker_args, argv = argv[1:3], argv[3:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256, help="object size per client (MiB)")
    parser.add_argument("--part-mb", type=int, default=8, help="multipart part size (MiB, S3 minimum is 5)")
    parser.add_argument("--presigns", type=int, default=2000, help="presigned URLs to make per client")
    parser.add_argument("--small-ops", type=int, default=100, help="HEAD / small PUT / DELETE round trips")
    parser.add_argument("--clients", type=lambda text: text.split(","), default=list(CLIENTS))
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args(argv)
    if worker_args:
        worker(worker_args[0], worker_args[1], args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
