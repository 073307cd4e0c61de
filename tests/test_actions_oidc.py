"""The actions' authentication (cargohold.actions.oidc): token precedence, the runner's ID-token protocol
against the loopback issuer, the exchange against a scripted fake and against a real ``cargohold serve``."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from cargohold.actions import oidc
from cargohold.actions.runtime import ActionError, ActionRuntime
from cargohold.client.retry import RetryPolicy
from control_helpers import api
from oidc_issuer import OWNER, REPO, LoopbackOidcIssuer, oidc_issuer_fixture  # noqa: F401 - fixtures
from processes import free_port
from servers import InProcessServer, running


class VirtualTime:
    """A clock that only sleeping moves: retries run through a whole budget instantly."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


def instant_retries(budget: float = 60.0) -> RetryPolicy:
    """The retry policy with its waits taken in virtual time (retries must not slow the suite)."""
    time = VirtualTime()
    return RetryPolicy(budget=budget, sleep=time.sleep, clock=time.clock, notify=lambda _message: None)


def runtime(tmp_path: Path, env: dict[str, str]) -> tuple[ActionRuntime, io.StringIO]:
    (tmp_path / "summary").write_text("")
    (tmp_path / "output").write_text("")
    environ = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
        **env,
    }
    stream = io.StringIO()
    return ActionRuntime(environ, stream), stream


def masks(stream: io.StringIO) -> list[str]:
    return [
        line.removeprefix("::add-mask::") for line in stream.getvalue().splitlines() if line.startswith("::add-mask::")
    ]


class FakeRegistry:
    """Just the registry's discovery and exchange endpoints, verifying JWTs with the issuer's JWKS."""

    def __init__(self, issuer: LoopbackOidcIssuer) -> None:
        self.issuer = issuer
        self.audience = "https://cargohold.test/aud"
        self.failures_before_success = 0
        self.refuse: str | None = None
        self.requests: list[tuple[str, str]] = []
        self.received_jwts: list[str] = []
        self.rejected_jwts: list[str] = []
        """ID tokens answered with a 503 (a registry restarting)."""
        self.issued = "cho_" + "x" * 40
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path))
                if self.path == "/api/v1/oidc":
                    fake.send(
                        self,
                        200,
                        {
                            "audience": fake.audience,
                            "issuers": [fake.issuer.url],
                            "exchange_url": "https://elsewhere.invalid/steal",
                        },
                    )
                else:
                    fake.send(self, 404, {"error": "not found"})

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.failures_before_success > 0:
                    fake.failures_before_success -= 1
                    fake.rejected_jwts.append(body["token"])
                    fake.send(self, 503, {"ok": False, "error": "restarting"})
                    return
                fake.received_jwts.append(body["token"])
                if fake.refuse:
                    fake.send(self, 403, {"ok": False, "error": fake.refuse})
                    return
                keys = jwt.PyJWKSet.from_dict(fake.issuer.jwks())
                key = keys[jwt.get_unverified_header(body["token"])["kid"]]
                jwt.decode(body["token"], key, algorithms=["RS256"], audience=fake.audience, issuer=fake.issuer.url)
                fake.send(
                    self,
                    200,
                    {"ok": True, "token": fake.issued, "expires_at": "2030-01-01T00:00:00Z", "projects": ["p1"]},
                )

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @staticmethod
    def send(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


@pytest.fixture
def fake_registry(oidc_issuer: LoopbackOidcIssuer) -> Iterator[FakeRegistry]:
    fake = FakeRegistry(oidc_issuer)
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


# --- the audience parameter -----------------------------------------------------------------------------------


def test_audience_is_appended_to_a_url_that_already_has_a_query() -> None:
    url = oidc.audience_url("https://pipelines.example/idtoken/x?api-version=2.0", "https://cargo.example/a b&c")
    parts = urlsplit(url)
    assert parts.path == "/idtoken/x"
    assert parse_qs(parts.query) == {"api-version": ["2.0"], "audience": ["https://cargo.example/a b&c"]}


def test_audience_is_added_to_a_url_without_a_query_and_replaces_an_existing_one() -> None:
    assert oidc.audience_url("https://p.example/t", "aud") == "https://p.example/t?audience=aud"
    replaced = oidc.audience_url("https://p.example/t?audience=old&x=1", "new")
    assert parse_qs(urlsplit(replaced).query) == {"x": ["1"], "audience": ["new"]}


# --- precedence -----------------------------------------------------------------------------------------------


def test_token_input_wins_and_is_masked(tmp_path: Path) -> None:
    rt, stream = runtime(tmp_path, {"INPUT_TOKEN": "cho_input", "CARGOHOLD_TOKEN": "cho_env"})
    token = oidc.resolve_token(rt, "http://127.0.0.1:9")
    assert (token.token, token.source) == ("cho_input", "input")
    assert masks(stream) == ["cho_input"]
    assert "cho_input" not in repr(token)


def test_cargohold_token_env_is_used_without_oidc(tmp_path: Path) -> None:
    rt, stream = runtime(tmp_path, {"CARGOHOLD_TOKEN": "cho_env\n"})
    token = oidc.resolve_token(rt, "http://127.0.0.1:9")
    assert (token.token, token.source) == ("cho_env", "env")
    assert masks(stream) == ["cho_env"]


# --- requesting the ID token ------------------------------------------------------------------------------------


def test_missing_id_token_variables_say_how_to_fix_it(tmp_path: Path) -> None:
    rt, _ = runtime(tmp_path, {"INPUT_AUDIENCE": "aud"})
    with pytest.raises(ActionError) as caught:
        oidc.resolve_token(rt, "http://127.0.0.1:9")
    assert (
        "add `permissions: id-token: write` to the job, or this is a pull request from a fork "
        "(use a token for forks)" in caught.value.message
    )
    assert caught.value.message.count(". ") == 0  # one sentence


def test_missing_id_token_in_a_fork_pull_request_names_the_fork(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps(
            {
                "pull_request": {
                    "head": {"repo": {"full_name": "mallory/app"}},
                    "base": {"repo": {"full_name": "octo-org/app"}},
                }
            }
        )
    )
    rt, _ = runtime(
        tmp_path,
        {
            "INPUT_AUDIENCE": "aud",
            "GITHUB_EVENT_NAME": "pull_request",
            "GITHUB_EVENT_PATH": str(event),
            "ACTIONS_ID_TOKEN_REQUEST_URL": "http://x/?a=1",
        },
    )
    with pytest.raises(ActionError, match=r"pull request from the fork mallory/app\): add `permissions"):
        oidc.resolve_token(rt, "http://127.0.0.1:9")


def test_id_token_is_requested_with_the_bearer_request_token_and_audience(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer
) -> None:
    rt, stream = runtime(tmp_path, oidc_issuer.actions_env())
    with httpx.Client(timeout=10) as client:
        token = oidc.request_id_token(rt, client, "https://cargohold.test/a", retry=instant_retries())
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "https://cargohold.test/a"
    assert claims["iss"] == oidc_issuer.url
    assert masks(stream) == [oidc_issuer.request_token, token]


def test_wrong_request_token_is_a_clear_error(tmp_path: Path, oidc_issuer: LoopbackOidcIssuer) -> None:
    env = {**oidc_issuer.actions_env(), "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"}
    rt, _ = runtime(tmp_path, env)
    with httpx.Client(timeout=10) as client, pytest.raises(ActionError, match="GitHub refused to issue an OIDC token"):
        oidc.request_id_token(rt, client, "aud", retry=instant_retries())


# --- the exchange (fake registry) --------------------------------------------------------------------------------


def test_discovery_audience_exchange_and_masking(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    rt, stream = runtime(tmp_path, oidc_issuer.actions_env())
    token = oidc.resolve_token(rt, fake_registry.url, retry=instant_retries())
    assert (token.token, token.source, token.projects) == (fake_registry.issued, "oidc", ("p1",))
    assert token.expires_at == "2030-01-01T00:00:00Z"
    # The exchange goes to the registry the user named, never to the discovery document's exchange_url.
    assert fake_registry.requests == [("GET", "/api/v1/oidc"), ("POST", "/auth/oidc/github-actions")]
    [sent_jwt] = fake_registry.received_jwts
    assert masks(stream) == [oidc_issuer.request_token, sent_jwt, fake_registry.issued]


def test_audience_input_skips_discovery(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    rt, _ = runtime(tmp_path, {**oidc_issuer.actions_env(), "INPUT_AUDIENCE": fake_registry.audience})
    oidc.resolve_token(rt, fake_registry.url, retry=instant_retries())
    assert fake_registry.requests == [("POST", "/auth/oidc/github-actions")]


def test_server_errors_are_retried(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    fake_registry.failures_before_success = 2
    rt, _ = runtime(tmp_path, oidc_issuer.actions_env())
    assert oidc.resolve_token(rt, fake_registry.url, retry=instant_retries()).token == fake_registry.issued
    assert fake_registry.requests.count(("POST", "/auth/oidc/github-actions")) == 3


def test_persistent_server_errors_give_up_with_a_clear_error(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    fake_registry.failures_before_success = 100
    rt, _ = runtime(tmp_path, oidc_issuer.actions_env())
    with pytest.raises(ActionError, match=r"stayed unavailable for the whole retry budget of 1 min \(503\)"):
        oidc.resolve_token(rt, fake_registry.url, retry=instant_retries())
    # Retried until the budget was spent (in virtual time), each try with a freshly minted ID token.
    posts = fake_registry.requests.count(("POST", "/auth/oidc/github-actions"))
    assert posts > 10


def test_no_retry_budget_fails_at_the_first_error(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    fake_registry.failures_before_success = 1
    rt, _ = runtime(tmp_path, oidc_issuer.actions_env())
    with pytest.raises(ActionError, match=r"unavailable \(503\) and retries are off"):
        oidc.resolve_token(rt, fake_registry.url, retry=instant_retries(budget=0))
    assert fake_registry.requests.count(("POST", "/auth/oidc/github-actions")) == 1


def test_refusal_explains_and_puts_the_claims_in_the_summary(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    fake_registry.refuse = "no trust relationship for repository octo-org/app"
    rt, _ = runtime(tmp_path, oidc_issuer.actions_env())
    with pytest.raises(ActionError, match=r"refused the OIDC token \(no trust relationship .*\); add or fix"):
        oidc.resolve_token(rt, fake_registry.url, retry=instant_retries())
    summary = (tmp_path / "summary").read_text()
    assert "repository_owner_id" in summary and f"`{REPO}`" in summary
    assert fake_registry.received_jwts[0] not in summary


def test_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    rt, _ = runtime(tmp_path, {})
    with pytest.raises(
        ActionError, match=r"stayed unavailable for the whole retry budget of 1 min \(connection refused\)"
    ):
        oidc.resolve_token(rt, f"http://127.0.0.1:{free_port()}", retry=instant_retries())


def test_registry_without_oidc_support_says_to_use_a_token(tmp_path: Path, fake_registry: FakeRegistry) -> None:
    rt, _ = runtime(tmp_path, {})
    with pytest.raises(ActionError, match="does not support OIDC; pass a 'token' input"):
        oidc.resolve_token(rt, fake_registry.url + "/prefix", retry=instant_retries())


# --- the exchange (real server) ----------------------------------------------------------------------------------


@pytest.fixture
def oidc_server(tmp_path: Path, oidc_issuer: LoopbackOidcIssuer) -> Iterator[InProcessServer]:
    with running(InProcessServer(tmp_path / "data", {"oidc_issuers": (oidc_issuer.url,)})) as proc:
        assert isinstance(proc, InProcessServer)
        yield proc


def test_real_server_exchanges_a_trusted_repositorys_token(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, oidc_server: InProcessServer
) -> None:
    with api(oidc_server) as admin:
        project = admin.create_project("actions oidc").id
        admin.add_trust(project, repository=REPO)
    rt, stream = runtime(tmp_path, oidc_issuer.actions_env())
    token = oidc.resolve_token(rt, oidc_server.url, retry=instant_retries())
    assert token.source == "oidc" and token.projects == (project,)
    assert token.token in masks(stream)
    with api(oidc_server, token.token) as client:
        assert project in {p.id for p in client.list_projects()}


def test_real_server_refuses_an_untrusted_repository(
    tmp_path: Path, oidc_issuer: LoopbackOidcIssuer, oidc_server: InProcessServer
) -> None:
    with api(oidc_server) as admin:
        project = admin.create_project("someone else").id
        admin.add_trust(project, repository=f"{OWNER}/other")
    rt, _ = runtime(tmp_path, oidc_issuer.actions_env())
    with pytest.raises(ActionError, match="the registry refused the OIDC token"):
        oidc.resolve_token(rt, oidc_server.url, retry=instant_retries())
