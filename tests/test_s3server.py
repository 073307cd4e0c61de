"""Self-tests of the moto S3 server fixture (tests/s3server.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import boto3
import httpx
import psutil
import pytest
from botocore.config import Config

import s3server
from s3server import ACCESS_KEY, REGION, S3Bucket, S3Server


@pytest.fixture(name="polluted_aws_environment")
def polluted_aws_environment_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A developer's own AWS set-up, in place before the bucket fixture runs."""
    home = tmp_path_factory.mktemp("home")
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("[work]\naws_access_key_id = AKIAREALKEY\naws_secret_access_key = x\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_PROFILE", "work")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-real-session")


def test_an_sdk_finds_the_bucket_through_the_standard_environment(s3_bucket: S3Bucket) -> None:
    client = boto3.client("s3", config=Config(signature_version="s3v4"))  # nothing passed: env only
    assert client.meta.endpoint_url == s3_bucket.endpoint
    assert client.meta.region_name == REGION
    client.put_object(Bucket=s3_bucket.name, Key="blobs/one", Body=b"payload")
    assert client.get_object(Bucket=s3_bucket.name, Key="blobs/one")["Body"].read() == b"payload"
    url = client.generate_presigned_url("get_object", Params={"Bucket": s3_bucket.name, "Key": "blobs/one"})
    assert url.startswith(s3_bucket.endpoint) and "X-Amz-Signature=" in url
    assert httpx.get(url).content == b"payload"


def test_a_developers_aws_profile_is_not_used(polluted_aws_environment: None, s3_bucket: S3Bucket) -> None:
    credentials = boto3.Session().get_credentials()
    assert credentials is not None
    assert (credentials.access_key, credentials.token) == (ACCESS_KEY, None)


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_sees_only_its_own_empty_bucket(s3_bucket: S3Bucket, round_: int) -> None:
    """Run twice: the second run would see the first one's bucket and object without the reset."""
    client = boto3.client("s3")
    assert [bucket["Name"] for bucket in client.list_buckets()["Buckets"]] == [s3_bucket.name]
    assert client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount") == 0
    client.put_object(Bucket=s3_bucket.name, Key=f"left-behind-{round_}", Body=b"x")


def test_server_listens_on_loopback_only(s3_server: S3Server) -> None:
    assert s3_server.process is not None
    listening = [
        conn.laddr
        for conn in psutil.Process(s3_server.process.pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening


@pytest.fixture(name="separate_server")
def separate_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(base_dir=tmp_path_factory.mktemp("separate"))
    try:
        yield server
    finally:
        server.stop()


def test_server_is_stopped(separate_server: S3Server) -> None:
    separate_server.start()
    separate_server.stop()
    assert separate_server.process is not None and separate_server.process.poll() is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{separate_server.endpoint}/moto-api/", timeout=2)


@pytest.mark.parametrize(("required", "outcome"), [("1", pytest.fail.Exception), ("0", pytest.skip.Exception)])
def test_missing_moto_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CARGOHOLD_REQUIRE_TOOLS", required)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(outcome, match=r"moto\[server\]"):
        s3server.require_moto()
