"""Auth challenges, token scopes and caching, credential resolution; Basic auth against the real registry."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from cargohold.client.auth import RegistryAuth, merge_scopes, parse_challenges
from cargohold.client.credentials import (
    Credentials,
    CredentialsError,
    resolve_credentials,
)
from cargohold.client.errors import RegistryError
from cargohold.client.registry import RegistryClient, bytes_source
from cargohold.client.retry import RetryPolicy
from cargohold.oci.digest import Digest
from refregistry import RefRegistry, refregistry_auth_fixture  # noqa: F401 - fixtures

FAST = RetryPolicy(attempts=3, initial=0.001, maximum=0.01)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- challenge parsing ------------------------------------------------------------------------------


def test_parse_bearer_challenge_with_commas_in_quotes() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"'
    )
    [challenge] = parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push repository:c:pull",
        "error": "insufficient_scope",
    }


def test_parse_multiple_challenges_and_escapes() -> None:
    challenges = parse_challenges('Basic realm="say \\"hi\\", ok", Bearer realm=https://x/t , service=s')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params["realm"] == 'say "hi", ok'
    assert challenges[1].params == {"realm": "https://x/t", "service": "s"}


def test_merge_scopes_unions_actions_per_repository() -> None:
    assert merge_scopes(["repository:x:push", "repository:y:pull", "repository:x:pull"]) == (
        "repository:x:pull,push",
        "repository:y:pull",
    )
    assert merge_scopes(["repository:x:pull,push repository:x:delete"]) == ("repository:x:delete,pull,push",)


# -- bearer flow against a scripted registry + token service -------------------------------------------


class FakeTokenRegistry:
    """A registry demanding Bearer tokens whose scopes cover each request, plus its token service."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = users or {}
        self.token_calls: list[dict[str, list[str]]] = []
        self.token_auth: list[str | None] = []
        self.issued: dict[str, set[str]] = {}
        self.challenges = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.host == "auth.test":
            query = parse_qs(urlsplit(str(url)).query)
            self.token_calls.append(query)
            self.token_auth.append(request.headers.get("Authorization"))
            if self.users:
                expected = {"Basic " + b64(f"{u}:{p}") for u, p in self.users.items()}
                if request.headers.get("Authorization") not in expected:
                    return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]})
            token = f"tok{len(self.token_calls)}"
            self.issued[token] = set(merge_scopes(query.get("scope", [])))
            return httpx.Response(200, json={"token": token, "expires_in": 300})
        needed = request.extensions.get("test.needs") or self._needed(request)
        header = request.headers.get("Authorization", "")
        granted = self.issued.get(header.removeprefix("Bearer "), set())
        if not set(merge_scopes([*granted, *needed])) <= granted or not header.startswith("Bearer "):
            challenge = f'Bearer realm="http://auth.test/token",service="reg.test",scope="{needed[0]}"'
            self.challenges += 1
            return httpx.Response(
                401,
                headers={"WWW-Authenticate": challenge},
                json={"errors": [{"code": "UNAUTHORIZED", "message": "auth required"}]},
            )
        if request.method == "POST" and "mount" in url.params:
            return httpx.Response(201, headers={"Docker-Content-Digest": url.params["mount"]})
        return httpx.Response(200, json={"tags": ["a"], "name": "x"})

    @staticmethod
    def _needed(request: httpx.Request) -> list[str]:
        parts = request.url.path.split("/")
        repo = "/".join(parts[2 : parts.index("tags") if "tags" in parts else parts.index("blobs")])
        if request.method == "POST":
            return [f"repository:{repo}:pull,push"] + (
                [f"repository:{request.url.params['from']}:pull"] if "from" in request.url.params else []
            )
        return [f"repository:{repo}:pull"]


def test_bearer_token_fetched_with_basic_creds_and_cached() -> None:
    fake = FakeTokenRegistry({"ci": "pw"})
    client = RegistryClient(
        "http://reg.test", credentials=Credentials("ci", "pw"), retry=FAST, transport=httpx.MockTransport(fake.handle)
    )
    with client:
        assert client.list_tags("team/app") == ["a"]
        assert client.list_tags("team/app") == ["a"]
    assert client.auth.token_requests == 1, "second request must reuse the cached token"
    assert fake.token_auth == ["Basic " + b64("ci:pw")]
    assert fake.token_calls[0]["service"] == ["reg.test"]
    assert fake.token_calls[0]["scope"] == ["repository:team/app:pull"]


def test_mount_requests_union_of_scopes_in_one_token() -> None:
    fake = FakeTokenRegistry()
    client = RegistryClient("http://reg.test", retry=FAST, transport=httpx.MockTransport(fake.handle))
    digest = Digest.of(b"x")
    with client:
        assert client.mount_blob("dst/repo", digest, "src/repo") is None
    # The challenge only names dst; the token request must also carry the source pull scope.
    assert sorted(fake.token_calls[-1]["scope"]) == ["repository:dst/repo:pull,push", "repository:src/repo:pull"]
    assert fake.token_auth == [None], "anonymous token request when there are no credentials"


def test_known_realm_gets_token_before_sending() -> None:
    """Once the realm is known, new scopes are fetched up front: no 401 that would waste a streamed body."""
    fake = FakeTokenRegistry()
    client = RegistryClient("http://reg.test", retry=FAST, transport=httpx.MockTransport(fake.handle))
    with client:
        client.list_tags("first/repo")
        assert fake.challenges == 1
        client.list_tags("second/repo")
        client.mount_blob("third/repo", Digest.of(b"y"), "first/repo")
    assert fake.challenges == 1
    assert client.auth.token_requests == 3


def test_parallel_challenges_share_one_token_fetch() -> None:
    """Six blob HEADs meet the same 401 at once (a save's first step): one token request, not six, and
    it already carries push, so the uploads and the manifest PUT that follow need no second token."""
    fake = FakeTokenRegistry()
    all_challenged = threading.Barrier(6, timeout=10)
    handle = fake.handle

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            time.sleep(0.2)  # a realm slow enough that the other threads ask while the first fetch is out
        response = handle(request)
        if response.status_code == 401:
            all_challenged.wait()  # every thread holds its 401 before anyone asks for a token
        return response

    client = RegistryClient("http://reg.test", retry=FAST, transport=httpx.MockTransport(handler))
    digests = [Digest.of(str(i).encode()) for i in range(6)]
    with client, ThreadPoolExecutor(6) as pool:
        sizes = list(pool.map(lambda d: client.blob_exists("team/app", d, for_push=True), digests))
        client.mount_blob("team/app", digests[0], "team/app")  # a push-scoped request: cached token suffices
    assert all(size is not None for size in sizes)
    assert client.auth.token_requests == 1
    assert [call["scope"] for call in fake.token_calls] == [["repository:team/app:pull,push"]]


def test_bad_credentials_give_a_clear_error() -> None:
    fake = FakeTokenRegistry({"ci": "pw"})
    client = RegistryClient(
        "http://reg.test",
        credentials=Credentials("ci", "wrong"),
        retry=FAST,
        transport=httpx.MockTransport(fake.handle),
    )
    with client, pytest.raises(RegistryError) as info:
        client.list_tags("team/app")
    assert info.value.status == 401
    assert "getting a token as ci" in str(info.value) and "UNAUTHORIZED" in str(info.value)


def test_identity_token_uses_oauth_refresh_grant() -> None:
    seen: list[dict[str, list[str]]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            seen.append(parse_qs(request.content.decode()))
            return httpx.Response(200, json={"access_token": "at"})
        if request.headers.get("Authorization") != "Bearer at":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.test/t",service=s'})
        return httpx.Response(200, json={"tags": []})

    auth = RegistryAuth(Credentials(identity_token="refresh-me"))
    with httpx.Client(auth=auth, transport=httpx.MockTransport(handle)) as http:
        assert http.get("http://reg.test/v2/x/tags/list").status_code == 200
    assert seen[0]["grant_type"] == ["refresh_token"] and seen[0]["refresh_token"] == ["refresh-me"]


# -- credential resolution ----------------------------------------------------------------------------


def write_config(tmp_path: Path, config: dict[str, object]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_explicit_beats_env_beats_docker_config(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"auths": {"r.example": {"auth": b64("cfg:cfgpw")}}})
    env = {
        "DOCKER_CONFIG": str(cfg),
        "CARGOHOLD_PUSH_REGISTRY_USERNAME": "envu",
        "CARGOHOLD_PUSH_REGISTRY_PASSWORD": "envp",
    }
    prefix = "CARGOHOLD_PUSH_REGISTRY"
    assert resolve_credentials("r.example", username="u", password="p", env_prefix=prefix, environ=env) == Credentials(
        "u", "p", source="explicit"
    )
    creds = resolve_credentials("r.example", env_prefix=prefix, environ=env)
    assert creds is not None and (creds.username, creds.password) == ("envu", "envp")
    creds = resolve_credentials("r.example", environ=env)  # no prefix: env is not consulted
    assert creds is not None and (creds.username, creds.password) == ("cfg", "cfgpw")
    assert resolve_credentials("other.example", environ=env) is None
    only_auth = {"DOCKER_CONFIG": str(cfg), "CARGOHOLD_PUSH_REGISTRY_AUTH": b64("a:b:c")}
    creds = resolve_credentials("r.example", env_prefix=prefix, environ=only_auth)
    assert creds is not None and (creds.username, creds.password) == ("a", "b:c")
    with pytest.raises(CredentialsError, match="CARGOHOLD_PUSH_REGISTRY_AUTH"):
        resolve_credentials("r.example", env_prefix=prefix, environ={"CARGOHOLD_PUSH_REGISTRY_AUTH": b64("nocolon")})


def test_docker_hub_aliases_and_identity_token(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")},
                "https://ghcr.io": {"identitytoken": "idtok", "auth": b64("me:")},
            }
        },
    )
    env = {"DOCKER_CONFIG": str(cfg)}
    for alias in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        creds = resolve_credentials(alias, environ=env)
        assert creds is not None and creds.username == "hubuser"
    creds = resolve_credentials("ghcr.io", environ=env)
    assert creds is not None and creds.identity_token == "idtok" and creds.username == "me"
    assert "hubpw" not in repr(resolve_credentials("docker.io", environ=env))


def test_credential_helpers(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text(
        "#!/bin/sh\nread url\n"
        'case "$url" in\n'
        '  helper.example) echo \'{"ServerURL":"helper.example","Username":"hu","Secret":"hs"}\';;\n'
        '  token.example) echo \'{"ServerURL":"token.example","Username":"<token>","Secret":"idt"}\';;\n'
        '  *) echo "credentials not found in native keychain"; exit 1;;\n'
        "esac\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    cfg = write_config(
        tmp_path / "cfg",
        {
            "credHelpers": {"helper.example": "fake", "token.example": "fake"},
            "credsStore": "fake",
            "auths": {"inline.example": {"auth": b64("iu:ip")}},
        },
    )
    env = {"DOCKER_CONFIG": str(cfg), "PATH": f"{bindir}:{os.environ['PATH']}"}
    creds = resolve_credentials("helper.example", environ=env)
    assert creds is not None and (creds.username, creds.password) == ("hu", "hs")
    creds = resolve_credentials("token.example", environ=env)
    assert creds is not None and creds.identity_token == "idt"
    # credsStore has nothing for it: fall back to the inline entry
    creds = resolve_credentials("inline.example", environ=env)
    assert creds is not None and (creds.username, creds.password) == ("iu", "ip")
    env_missing = {**env, "PATH": "/nonexistent"}
    with pytest.raises(CredentialsError, match="docker-credential-fake"):
        resolve_credentials("helper.example", environ=env_missing)


# -- real registry with htpasswd ----------------------------------------------------------------------


@pytest.mark.tools
def test_basic_auth_via_docker_config(refregistry_auth: RefRegistry, tmp_path: Path) -> None:
    host = refregistry_auth.host
    anonymous = RegistryClient(host, retry=FAST)
    with anonymous, pytest.raises(RegistryError) as info:
        anonymous.ping()
    assert info.value.status == 401

    cfg = write_config(tmp_path / "docker", {"auths": {host: {"auth": b64("ci:s3cret-pass")}}})
    creds = resolve_credentials(host, environ={"DOCKER_CONFIG": str(cfg)})
    data = os.urandom(3 << 20)
    digest = Digest.of(data)
    with RegistryClient(host, credentials=creds, retry=FAST) as client:
        client.ping()
        assert client.upload_blob("auth/test", digest, len(data), bytes_source(data)) == "uploaded"
        assert client.blob_exists("auth/test", digest) == len(data)
        got = bytearray()
        client.download_blob("auth/test", digest, got.extend)
        assert bytes(got) == data

    wrong = RegistryClient(host, credentials=Credentials("ci", "nope"), retry=FAST)
    with wrong, pytest.raises(RegistryError) as info:
        wrong.blob_exists("auth/test", digest)
    assert info.value.status == 401
