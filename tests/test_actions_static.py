"""Static checks of the composite actions, the workflows and the action venv's lock file.

Schema validation (check-jsonschema's vendored GitHub schemas) and zizmor run offline; both are test extras.
The rest reads the YAML and checks what the schemas cannot: every input reaches Python through ``env:``
under its ``INPUT_*`` name, no ``${{ inputs.* }}`` sits inside a ``run:`` script, and the lock pins every
runtime dependency of pyproject.toml.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ruamel.yaml import YAML

from cargohold.actions import build, common
from cargohold.actions.runtime import ActionError, ActionRuntime

ROOT = Path(__file__).resolve().parent.parent
ACTIONS = {
    "build": ROOT / "action-build" / "action.yml",
    "pull": ROOT / "action-pull" / "action.yml",
    "push": ROOT / "action-push" / "action.yml",
}
CI_WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EXAMPLE_WORKFLOWS = sorted((ROOT / "examples" / "workflows").glob("*.yml"))
WORKFLOWS = CI_WORKFLOWS + EXAMPLE_WORKFLOWS
LOCK = ROOT / "actions-common" / "requirements.lock"


def load(path: Path) -> dict[str, Any]:
    return YAML(typ="safe").load(path.read_text())


def tool(name: str) -> str:
    """A console script of the test extras: next to this Python first, then on PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} is not installed; install the test extras (pip install -e '.[test]')"
    return found


# --- schemas and linters -----------------------------------------------------------------------------------


def test_action_files_match_the_github_actions_schema() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-actions",
            *map(str, ACTIONS.values()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_match_the_github_workflows_schema() -> None:
    assert any(p.parent.name == "workflows" and p.parent.parent.name == "examples" for p in WORKFLOWS)
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def zizmor(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("zizmor"),
            "--offline",
            "--no-progress",
            "--config",
            str(ROOT / "examples" / "zizmor.yml"),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_zizmor_finds_nothing_in_the_actions_and_examples() -> None:
    result = zizmor([*ACTIONS.values(), *EXAMPLE_WORKFLOWS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_in_the_ci_workflows() -> None:
    result = zizmor(CI_WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the action files ----------------------------------------------------------------------------------------


def _run_steps(action: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from (step for step in action["runs"]["steps"] if "run" in step)


def _workflow_run_scripts(workflow: dict[str, Any]) -> Iterator[str]:
    for job in workflow.get("jobs", {}).values():
        for step in job.get("steps", []):
            if "run" in step:
                yield step["run"]


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_no_expression_is_interpolated_into_a_run_script(name: str) -> None:
    for step in _run_steps(load(ACTIONS[name])):
        assert "${{" not in step["run"], f"{name}: move the expression into env: ({step['run']!r})"


def test_example_workflows_keep_expressions_out_of_run_scripts() -> None:
    for path in WORKFLOWS:
        for script in _workflow_run_scripts(load(path)):
            assert "${{" not in script, f"{path.name}: move the expression into env: ({script!r})"


CACHE_PIN = "27d5ce7f107fe9357f9df03efb73ab90386fccae"  # actions/cache v5.0.5


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_the_venv_is_restored_and_saved_with_actions_cache_pinned_by_sha(name: str) -> None:
    steps = load(ACTIONS[name])["runs"]["steps"]
    assert [step.get("id") for step in steps] == ["plan", "restore", "setup", "save", "run"]
    plan, restore, setup, save = steps[:4]
    assert plan["run"] == 'python3 -I "$GITHUB_ACTION_PATH/../actions-common/bootstrap.py" plan'
    assert setup["run"] == 'python3 -I "$GITHUB_ACTION_PATH/../actions-common/bootstrap.py"'
    assert restore["uses"] == f"actions/cache/restore@{CACHE_PIN}" and save["uses"] == f"actions/cache/save@{CACHE_PIN}"
    assert restore["if"] == "steps.plan.outputs.ready != 'true'"
    assert save["if"] == "steps.setup.outputs.created == 'true'"
    for step in (restore, save):
        assert step["with"] == {"path": "${{ steps.plan.outputs.path }}", "key": "${{ steps.plan.outputs.key }}"}


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_input_reaches_python_under_its_input_name(name: str) -> None:
    action = load(ACTIONS[name])
    runs = list(_run_steps(action))
    assert runs[0]["run"].startswith('python3 -I "$GITHUB_ACTION_PATH/../actions-common/bootstrap.py"')
    run = runs[-1]
    assert run["id"] == "run"
    assert run["run"] == f'"$CARGOHOLD_ACTION_PYTHON" -X utf8 -I -m cargohold.actions.{name}'
    env = run["env"]
    assert env["CARGOHOLD_ACTION_PYTHON"] == "${{ steps.setup.outputs.python }}"
    expected = {ActionRuntime.input_variable(i): f"${{{{ inputs.{i} }}}}" for i in action["inputs"]}
    assert {k: v for k, v in env.items() if k.startswith("INPUT_")} == expected
    for output, spec in action["outputs"].items():
        assert spec["value"] == f"${{{{ steps.run.outputs.{output} }}}}"


def test_interfaces_match_the_issue() -> None:
    inputs = {name: set(load(path)["inputs"]) for name, path in ACTIONS.items()}
    outputs = {name: set(load(path)["outputs"]) for name, path in ACTIONS.items()}
    shared = {"registry", "project", "token", "audience", "retry-for", "ca-cert"}
    assert inputs["build"] == shared | {
        "context",
        "file",
        "tags",
        "labels",
        "build-args",
        "target",
        "platforms",
        "secrets",
        "no-cache",
        "pull",
        "push",
        "load",
        "provenance",
        "sbom",
        "builder",
        "save",
        "save-tags",
        "image",
        # Depot's build-push-action inputs: passed to the builder ...
        "save-tag",
        "secret-files",
        "build-contexts",
        "ssh",
        "cache-from",
        "cache-to",
        "outputs",
        "annotations",
        "attests",
        "add-hosts",
        "allow",
        "no-cache-filters",
        "network",
        "shm-size",
        "ulimit",
        "cgroup-parent",
        # ... or declared so that setting them fails with the reason instead of being dropped.
        "build-platform",
        "buildx-fallback",
        "lint",
        "lint-fail-on",
        "sbom-dir",
        "github-token",
    }
    assert inputs["pull"] == shared | {"build-id", "platform", "tags", "output", "targets"}
    assert inputs["push"] == shared | {"build-id", "tags", "platform", "username", "password", "transfer", "targets"}
    assert outputs == {
        "build": {"build-id", "project-id", "reference", "digest", "imageid", "metadata"},
        "pull": {"digest", "image"},
        "push": {"digest", "tags"},
    }
    assert load(ACTIONS["build"])["inputs"]["save"]["default"] == "true"


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers which variables the code looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_python_reads_only_declared_build_inputs() -> None:
    env = RecordingEnv({"INPUT_SAVE": "true", "INPUT_REGISTRY": "https://cargohold.example.com"})
    rt = ActionRuntime(env, io.StringIO())
    build.read_inputs(rt)
    common.registry_input(rt)
    common.project_input(rt)
    common.retry_policy(rt)
    common.trust_ca_cert(rt)
    declared = {ActionRuntime.input_variable(i) for i in load(ACTIONS["build"])["inputs"]}
    read = {name for name in env.read if name.startswith("INPUT_")}
    assert read <= declared, f"read but not declared in action.yml: {sorted(read - declared)}"
    assert declared - read <= {"INPUT_TOKEN", "INPUT_AUDIENCE"}  # read later, by authentication


@pytest.mark.parametrize("name", ["pull", "push"])
def test_python_reads_only_declared_inputs(name: str) -> None:
    module = importlib.import_module(f"cargohold.actions.{name}")
    env = RecordingEnv(
        {
            "INPUT_BUILD-ID": "abc",
            "INPUT_TAGS": "ghcr.io/o/app:1",
            "INPUT_REGISTRY": "http://127.0.0.1:9",
            "INPUT_AUDIENCE": "aud",
        }
    )
    rt = ActionRuntime(env, io.StringIO())
    with pytest.raises(ActionError, match="OIDC token"):  # stops at authentication: no ID-token variables
        module.main(rt)
    declared = {ActionRuntime.input_variable(i) for i in load(ACTIONS[name])["inputs"]}
    read = {n for n in env.read if n.startswith("INPUT_")}
    assert read <= declared, f"read but not declared in action.yml: {sorted(read - declared)}"
    assert read == declared, f"declared but never read: {sorted(declared - read)}"


# --- the lock file and the bootstrap ---------------------------------------------------------------------------


def _locked() -> dict[str, str]:
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", LOCK.read_text(), re.M))
    return {canonicalize_name(name): version for name, version in pins.items()}


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is missing from {LOCK.name}; run: bash actions-common/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} does not satisfy {text!r}; run: bash actions-common/lock.sh"
        )
    # The actions run the client only: none of the server extra (nor a build backend: cargohold is put on the
    # venv's path, not built) belongs in their virtualenv.
    server = {canonicalize_name(Requirement(text).name) for text in project["optional-dependencies"]["server"]}
    assert server and not (server | {"setuptools", "mako", "sqlalchemy"}) & set(locked), sorted(locked)
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n\n")[-1].strip())
    for entry in (e for e in entries if "==" in e):
        assert "--hash=sha256:" in entry, f"unhashed lock entry: {entry.splitlines()[0]}"


def _bootstrap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cargohold_bootstrap", ROOT / "actions-common" / "bootstrap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "actions-common").mkdir(parents=True)
    (root / "src" / "cargohold").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    (root / "actions-common" / "requirements.lock").write_text("x==1 --hash=sha256:00\n")
    (root / "actions-common" / "bootstrap.py").write_text("# bootstrap\n")
    (root / "src" / "cargohold" / "__init__.py").write_text("")
    return root


def test_venv_key_changes_with_sources_lock_and_interpreter(tmp_path: Path) -> None:
    bootstrap = _bootstrap()
    root = _fake_checkout(tmp_path)
    key = bootstrap.venv_key(root, sys.executable, "3.11.7")
    assert bootstrap.venv_key(root, sys.executable, "3.11.7") == key
    assert bootstrap.venv_key(root, sys.executable, "3.12.1") != key
    (root / "src" / "cargohold" / "__pycache__").mkdir()
    (root / "src" / "cargohold" / "__pycache__" / "x.pyc").write_bytes(b"noise")
    assert bootstrap.venv_key(root, sys.executable, "3.11.7") == key
    (root / "src" / "cargohold" / "__init__.py").write_text("# changed")
    changed = bootstrap.venv_key(root, sys.executable, "3.11.7")
    assert changed != key
    (root / "actions-common" / "requirements.lock").write_text("x==2 --hash=sha256:11\n")
    assert bootstrap.venv_key(root, sys.executable, "3.11.7") not in (key, changed)
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    assert bootstrap.venv_key(moved, sys.executable, "3.11.7") != bootstrap.venv_key(root, sys.executable, "3.11.7")


def test_cache_key_names_os_arch_python_and_the_venv_key() -> None:
    bootstrap = _bootstrap()
    key = bootstrap.cache_key("ab" * 32, {"RUNNER_OS": "Linux", "RUNNER_ARCH": "X64"})
    python = "py{}.{}.{}".format(*sys.version_info[:3])
    assert key == f"cargohold-venv-linux-x64-{python}-{'ab' * 16}"


def test_plan_reports_path_key_and_readiness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = _bootstrap()
    root = _fake_checkout(tmp_path)
    monkeypatch.setattr(bootstrap, "__file__", str(root / "actions-common" / "bootstrap.py"))
    output = tmp_path / "github_output"
    output.write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setattr(bootstrap, "install", lambda *a: pytest.fail("plan never installs"))
    assert bootstrap.main(["plan"]) == 0
    values = dict(line.split("=", 1) for line in output.read_text().splitlines())
    key = bootstrap.venv_key(root, sys.executable, sys.version)
    assert values == {
        "path": str(root / bootstrap.VENV_DIR / key[:20]),
        "key": bootstrap.cache_key(key, dict(os.environ)),
        "ready": "false",
    }
    assert bootstrap.main(["bogus"]) == 1 and "unknown arguments" in capsys.readouterr().out


def test_installer_prefers_uv_and_can_be_forced_to_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap = _bootstrap()
    (tmp_path / "uv").write_text("#!/bin/sh\n")
    (tmp_path / "uv").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bootstrap.installer({}) == "uv"
    assert bootstrap.installer({"CARGOHOLD_INSTALLER": "pip"}) == "pip"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert bootstrap.installer({}) == "pip"
    with pytest.raises(bootstrap.SetupError, match="no uv is on PATH"):
        bootstrap.installer({"CARGOHOLD_INSTALLER": "uv"})
    lock, python = tmp_path / "requirements.lock", tmp_path / "venv" / "bin" / "python"
    (uv_install,) = bootstrap.install_commands("uv", lock, python)
    assert uv_install[:3] == ["uv", "pip", "install"] and "--require-hashes" in uv_install and ":all:" in uv_install
    (pip_install,) = bootstrap.install_commands("pip", lock, python)
    assert "--require-hashes" in pip_install and "--only-binary=:all:" in pip_install


def test_bootstrap_reuses_a_complete_venv_and_reports_its_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = _bootstrap()
    root = _fake_checkout(tmp_path)
    monkeypatch.setattr(bootstrap, "__file__", str(root / "actions-common" / "bootstrap.py"))
    key = bootstrap.venv_key(root, sys.executable, sys.version)
    target = root / bootstrap.VENV_DIR / key[:20]
    (target / "bin").mkdir(parents=True)
    (target / "bin" / "python").write_text("")
    (target / bootstrap.COMPLETE_MARKER).write_text(key + "\n")
    output = tmp_path / "github_output"
    output.write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setattr(bootstrap, "install", lambda *a: pytest.fail("a complete venv must be reused"))
    assert bootstrap.main([]) == 0
    assert output.read_text() == f"python={target / 'bin' / 'python'}\ncreated=false\n"
    assert "Reusing the Cargohold virtualenv" in capsys.readouterr().out


def test_bootstrap_refuses_an_old_python_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = _bootstrap()
    monkeypatch.setattr(bootstrap, "MIN_PYTHON", (99, 0))
    assert bootstrap.main([]) == 1
    out = capsys.readouterr().out
    assert re.fullmatch(
        r"::error title=Python too old::Cargohold's actions need Python 99\.0 or newer but python3 "
        r"is [0-9.]+\S*; use a runner image with a newer python3 .*\n",
        out,
    )
