"""The client's retry budget (cargohold.client.retry) in virtual time, what may be repeated, the actions'
``retry-for`` input, and the create-build ``Idempotency-Key`` against a real server.

Virtual time: the policy's clock only moves when it sleeps, so a whole 60 s budget runs in microseconds and
every wait it chose can be inspected.
"""

from __future__ import annotations

import io
import ssl
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from cargohold.actions import common
from cargohold.actions.runtime import ActionError, ActionRuntime
from cargohold.client.control import ControlClient, ControlError
from cargohold.client.errors import DigestMismatchError, RegistryError
from cargohold.client.retry import RetryPolicy, ServerUnavailable
from cargohold.client.settings import SettingsError, exchange_github_oidc
from oidc_issuer import LoopbackOidcIssuer, oidc_issuer_fixture
from servers import Server, module_server
from test_actions_oidc import FakeRegistry, fake_registry
from test_client_faults import Fault, FaultProxy

__all__ = ["fake_registry", "oidc_issuer_fixture"]

server = module_server()


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def virtual_policy(budget: float = 60.0, **options: object) -> tuple[RetryPolicy, VirtualTime, list[str]]:
    time_ = VirtualTime()
    notices: list[str] = []
    policy = RetryPolicy(budget=budget, sleep=time_.sleep, clock=time_.clock, notify=notices.append, **options)  # type: ignore[arg-type]
    return policy, time_, notices


def refused() -> None:
    raise httpx.ConnectError("[Errno 111] Connection refused")


def answered(status: int, retry_after: float | None = None) -> RegistryError:
    return RegistryError("probing", status=status, retry_after=retry_after)


def test_an_outage_is_retried_until_the_budget_is_spent_with_capped_jittered_waits() -> None:
    policy, clock, notices = virtual_policy()
    with pytest.raises(ServerUnavailable) as caught:
        policy.call(refused, host="cargohold.test")
    assert 55.0 <= clock.now <= 60.0, "retried for about the budget, and not past it"
    assert len(clock.waits) > 10, "not a fixed handful of tries"
    assert max(clock.waits) <= 5.0 and len(set(clock.waits)) > 3, "waits are capped and jittered"
    assert str(caught.value).startswith("cargohold.test stayed unavailable for the whole retry budget of 1 min")
    assert "--retry-for" in str(caught.value)
    assert notices == ["cargohold.test is unavailable (connection refused); retrying for up to 1 min"]


def test_requests_share_one_outage_clock_and_one_notice() -> None:
    policy, clock, notices = virtual_policy(budget=30)
    with pytest.raises(ServerUnavailable):
        policy.call(refused, host="cargohold.test")
    spent = clock.now
    tries: list[int] = []

    def count_and_refuse() -> None:
        tries.append(1)
        refused()

    # The next step (marking the build failed, say) gets what is left of the budget: nothing.
    with pytest.raises(ServerUnavailable):
        policy.call(count_and_refuse, host="cargohold.test")
    assert (len(tries), clock.now) == (1, spent)
    assert len(notices) == 1
    # Another host has an outage clock of its own.
    with pytest.raises(ServerUnavailable):
        policy.call(refused, host="destination.test")
    assert len(notices) == 2 and notices[1].startswith("destination.test is unavailable")


def test_an_outage_ends_with_a_success_and_the_next_one_is_announced_again() -> None:
    policy, _clock, notices = virtual_policy()
    results = iter([httpx.ConnectError("refused"), "ok", httpx.ReadError("reset"), "ok again"])

    def flaky() -> str:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    assert policy.call(flaky, host="h") == "ok"
    assert policy.call(flaky, host="h") == "ok again"
    assert [notice.split(" (")[1].split(")")[0] for notice in notices] == ["refused", "reset"]


def test_a_request_under_way_when_the_outage_began_does_not_end_it() -> None:
    policy, clock, notices = virtual_policy()
    long_download = policy.attempt("h")  # began before the server went away
    clock.now += 1
    upload = policy.attempt("h")
    upload.failed(httpx.ConnectError("refused"))  # the outage begins, announced
    long_download.succeeded()  # finished during the drain: says nothing about the server being back
    upload.failed(httpx.ConnectError("refused"))
    assert len(notices) == 1
    upload.succeeded()  # a try that began after the outage did: the server is back
    policy.attempt("h").failed(httpx.ConnectError("refused"))
    assert len(notices) == 2


def test_retry_after_is_honoured_and_one_beyond_the_budget_ends_the_retries_at_once() -> None:
    policy, clock, _notices = virtual_policy()
    answers = iter([answered(429, retry_after=7), answered(503, retry_after=2)])

    def throttled() -> str:
        answer = next(answers, None)
        if answer is not None:
            raise answer
        return "ok"

    assert policy.call(throttled, host="h") == "ok"
    assert clock.waits == [7, 2]
    policy, clock, _notices = virtual_policy(budget=10)
    with pytest.raises(ServerUnavailable, match="asked to retry after 2 min"):
        policy.call(lambda: (_ for _ in ()).throw(answered(503, retry_after=120)), host="h")
    assert clock.waits == []


@pytest.mark.parametrize(
    "failure",
    [
        answered(400),
        answered(401),
        answered(403),
        answered(404),
        DigestMismatchError("blob sha256:… is corrupt"),
        httpx.ConnectError("certificate verify failed"),
    ],
    ids=["400", "401", "403", "404", "digest-mismatch", "untrusted-tls"],
)
def test_refusals_fail_at_once(failure: Exception) -> None:
    if "certificate" in str(failure):
        failure.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    policy, clock, notices = virtual_policy()
    tries: list[int] = []

    def fail() -> None:
        tries.append(1)
        raise failure

    with pytest.raises(type(failure)):
        policy.call(fail, host="h")
    assert (len(tries), clock.waits, notices) == (1, [], [])


def test_transient_server_errors_get_a_few_tries_not_the_whole_budget() -> None:
    policy, _clock, _notices = virtual_policy()
    tries: list[int] = []

    def broken() -> None:
        tries.append(1)
        raise answered(500)

    with pytest.raises(RegistryError):
        policy.call(broken, host="h")
    assert len(tries) == 3


@pytest.mark.parametrize(
    ("failure", "repeated"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("timed out"), True),
        (answered(503), True),
        (answered(429), True),
        (httpx.ReadError("connection reset"), False),
        (httpx.RemoteProtocolError("server disconnected"), False),
        (answered(502), False),
    ],
    ids=["refused", "connect-timeout", "503", "429", "reset", "disconnected", "502"],
)
def test_requests_that_are_not_idempotent_are_repeated_only_when_not_processed(
    failure: Exception, repeated: bool
) -> None:
    policy, _clock, _notices = virtual_policy()
    tries: list[int] = []

    def create() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise failure
        return "created"

    if repeated:
        assert policy.call(create, host="h", idempotent=False) == "created"
    else:
        with pytest.raises(type(failure)):
            policy.call(create, host="h", idempotent=False)
        assert len(tries) == 1


def test_waiting_ends_when_another_request_gets_through() -> None:
    policy = RetryPolicy(notify=lambda _message: None)  # real time; waits cut short by the outage's end
    stuck = policy.attempt("h")
    woke: list[float] = []

    def wait_out() -> None:
        started = time.monotonic()
        stuck.failed(answered(503, retry_after=5))  # would sleep 5 s
        woke.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait_out)
    waiter.start()
    time.sleep(0.2)
    assert not woke
    policy.call(lambda: "ok", host="h")  # another transfer gets through: the server is back
    waiter.join(timeout=5)
    assert woke and woke[0] < 1.5


def test_no_budget_means_no_retries() -> None:
    policy, clock, _notices = virtual_policy(budget=0)
    with pytest.raises(ServerUnavailable, match="retries are off"):
        policy.call(refused, host="h")
    assert clock.waits == []


# --- the actions' retry-for input ----------------------------------------------------------------------------


def _runtime(env: dict[str, str]) -> ActionRuntime:
    return ActionRuntime(env, io.StringIO())


def test_the_actions_retry_for_input_and_its_environment_variable() -> None:
    assert common.retry_policy(_runtime({})).budget == 60
    assert common.retry_policy(_runtime({"CARGOHOLD_RETRY_FOR": "90s"})).budget == 90
    assert common.retry_policy(_runtime({"INPUT_RETRY-FOR": "2m", "CARGOHOLD_RETRY_FOR": "90s"})).budget == 120
    assert common.retry_policy(_runtime({"INPUT_RETRY-FOR": "0"})).budget == 0
    with pytest.raises(ActionError, match="'retry-for' is 'soon'; use a duration such as 60s or 2m"):
        common.retry_policy(_runtime({"INPUT_RETRY-FOR": "soon"}))
    stream = io.StringIO()
    policy = common.retry_policy(ActionRuntime({}, stream))
    assert policy.notify is not None
    policy.notify("cargohold.test is unavailable (connection refused); retrying for up to 1 min")
    assert stream.getvalue().startswith("::warning title=Registry unavailable::cargohold.test is unavailable")


# --- create build: Idempotency-Key ---------------------------------------------------------------------------


def _post_build(server: Server, project: str, key: str | None, token: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    with server.client(token) as http:
        return http.post(f"/api/v1/projects/{project}/builds", json={}, headers=headers)


def test_a_repeated_create_build_gets_the_build_its_first_request_created(server: Server) -> None:
    with ControlClient(server.url, server.admin_token) as admin:
        project = str(admin.create_project("idempotent builds").id)
        key = "c0ffee" * 5
        first, again = _post_build(server, project, key), _post_build(server, project, key)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["build_id"] == again.json()["build_id"]
        assert first.json()["token"] != again.json()["token"], "the repeated answer carries a token of its own"
        other = _post_build(server, project, "d00d" * 8)
        assert other.status_code == 201 and other.json()["build_id"] != first.json()["build_id"]
        assert len(admin.list_builds(project).builds) == 2
        bad = _post_build(server, project, "short")
        assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["errors"][0]["message"]
        someone_else = admin.create_token("project", "someone else", project_id=project).token
        stolen = _post_build(server, project, key, token=someone_else)
        assert stolen.status_code == 409


@pytest.fixture
def proxy(server: Server) -> Iterator[FaultProxy]:
    with FaultProxy(server.url) as p:
        yield p


def test_a_lost_answer_to_create_build_is_retried_into_the_same_build(server: Server, proxy: FaultProxy) -> None:
    with ControlClient(server.url, server.admin_token) as admin:
        project = str(admin.create_project("lost answers").id)
    proxy.faults.append(Fault("POST", f"/projects/{project}/builds", drop_response_after=1))
    with ControlClient(f"http://{proxy.host}", server.admin_token, retry=RetryPolicy(notify=lambda _m: None)) as client:
        build = client.create_build(project)
        assert len(client.list_builds(project).builds) == 1
    posts = [seen for seen in proxy.seen if seen.method == "POST"]
    assert len(posts) == 2 and posts[0].headers["Idempotency-Key"] == posts[1].headers["Idempotency-Key"]
    assert build.build_id


def test_a_lost_answer_to_create_token_is_not_repeated(server: Server, proxy: FaultProxy) -> None:
    proxy.faults.append(Fault("POST", "/api/v1/tokens", drop_response_after=1))
    with (
        ControlClient(f"http://{proxy.host}", server.admin_token, retry=RetryPolicy(notify=lambda _m: None)) as client,
        pytest.raises(ControlError),
    ):
        client.create_token("admin", "maybe created once")
    assert len([seen for seen in proxy.seen if seen.method == "POST"]) == 1


# --- the CLI's OIDC exchange (inside GitHub Actions, without a token) -------------------------------------------


def test_the_cli_repeats_an_oidc_exchange_with_a_fresh_id_token(
    oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    fake_registry.failures_before_success = 2  # a registry restarting: 503, 503, then the exchange works
    policy, _clock, notices = virtual_policy()
    token = exchange_github_oidc(fake_registry.url, oidc_issuer.actions_env(), retry=policy)
    assert token == fake_registry.issued
    assert fake_registry.requests.count(("POST", "/auth/oidc/github-actions")) == 3
    assert len(notices) == 1
    [accepted] = fake_registry.received_jwts
    assert accepted not in fake_registry.rejected_jwts, "each try sent an ID token of its own"
    assert len(set(fake_registry.rejected_jwts)) == 2


def test_the_cli_waits_out_githubs_token_service_like_the_actions_do(
    oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    """One exchange, one retry policy: the CLI's ID-token request is retried through an outage too."""
    oidc_issuer.actions_unavailable = 2
    policy, clock, notices = virtual_policy()
    token = exchange_github_oidc(fake_registry.url, oidc_issuer.actions_env(), retry=policy)
    assert token == fake_registry.issued
    assert oidc_issuer.requests["/actions-token"] == 3 and len(clock.waits) == 2
    assert notices == [f"{urlsplit(oidc_issuer.url).netloc} is unavailable (503); retrying for up to 1 min"]


def test_the_cli_words_a_refused_exchange_for_its_own_options(
    oidc_issuer: LoopbackOidcIssuer, fake_registry: FakeRegistry
) -> None:
    fake_registry.refuse = "no trust relationship for repository octo-org/app"
    policy, _clock, _notices = virtual_policy()
    with pytest.raises(SettingsError) as refused:
        exchange_github_oidc(fake_registry.url, oidc_issuer.actions_env(), retry=policy)
    assert str(refused.value) == (
        f"exchanging the GitHub OIDC token at {fake_registry.url} failed: "
        "no trust relationship for repository octo-org/app"
    )
    with pytest.raises(SettingsError, match=r"no GitHub OIDC token available: add `permissions: id-token: write`"):
        exchange_github_oidc(fake_registry.url, {}, retry=policy)
