"""Every action input that changes behaviour, one table row each, against a real ``cargohold serve``.

Each row runs an action's ``main`` in-process exactly as the runner would (``INPUT_*`` variables, real
``$GITHUB_OUTPUT`` and step-summary files, ``run_action`` turning failures into annotations) and then looks
at what really happened: the server's builds and save-tags, the pulled image's bytes, the destination
registry's manifest, the files a build put into its image. Builds use buildah with a private vfs store; the
``RUN`` rows copy the host's static busybox into a ``FROM scratch`` image, so no base image is pulled.

One server, project and saved build serve the whole module (the rows only read them or add builds).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cargohold.actions import build as build_action
from cargohold.actions import pull as pull_action
from cargohold.actions import push as push_action
from cargohold.actions.runtime import ActionRuntime, run_action
from cargohold.client.control import ControlClient
from cargohold.client.settings import Connection
from cargohold.images import pull_image, save_image
from cargohold.images.build import BuildOptions, pass_through_flags
from cargohold.images.common import ImageError
from cargohold.sample import SampleImage, SampleIndex, write_sample_image, write_sample_index
from refregistry import RefRegistry, refregistry_auth_fixture
from servers import InProcessServer
from test_actions_runtime import parse_outputs
from test_images_support import skopeo_raw

__all__ = ["refregistry_auth_fixture"]

BUSYBOX = "/bin/busybox"


@dataclass
class World:
    """The shared server, a project reached by a project token, and a saved multi-platform build with targets."""

    server: InProcessServer
    project: str
    token: str
    build_id: str
    index: SampleIndex
    app: SampleImage
    tests: SampleImage
    tmp: Path
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def amd64(self) -> str:
        return str(self.index.images[0].manifest.digest)

    @property
    def arm64(self) -> str:
        return str(self.index.images[1].manifest.digest)

    def connection(self) -> Connection:
        return Connection(self.server.url, self.token, "test", self.project)

    def fresh(self, name: str) -> Path:
        self.runs += 1
        path = self.tmp / f"{self.runs:03d}-{name}"
        path.mkdir()
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("inputs")
    server = InProcessServer(data_dir=tmp / "data").start()
    try:
        with ControlClient(server.url, server.admin_token) as admin:
            project = str(admin.create_project("inputs").id)
            token = str(admin.create_token("project", "inputs", project_id=project).token)
        index = write_sample_index(tmp / "index", layers=1, layer_size=16 << 10, seed=41, ref="v1")
        app = write_sample_image(tmp / "app", layers=1, layer_size=8 << 10, seed=42, ref="v1")
        tests = write_sample_image(tmp / "tests", layers=1, layer_size=8 << 10, seed=43, ref="v1")
        saved = save_image(
            Connection(server.url, token, "test", project),
            f"oci:{tmp / 'index'}:v1",
            save_tags=["main"],
            targets={"app": f"oci:{tmp / 'app'}:v1", "tests": f"oci:{tmp / 'tests'}:v1"},
        )
        yield World(server, project, token, saved.build_id, index, app, tests, tmp)
    finally:
        server.stop()


@pytest.fixture
def buildah_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private buildah store (the builder reads these from the process environment)."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (scripts/bootstrap.sh installs it)")
    storage = tmp_path / "containers-storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "graph"}"\nrunroot = "{tmp_path / "run"}"\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(storage))
    monkeypatch.setenv("BUILDAH_ISOLATION", "chroot")
    monkeypatch.setenv("STORAGE_DRIVER", "vfs")
    return tmp_path


@dataclass
class StepResult:
    code: int
    outputs: dict[str, str]
    log: str
    summary: str


def run_step(module: ModuleType, workdir: Path, inputs: dict[str, str], env: dict[str, str]) -> StepResult:
    (workdir / "output").write_text("")
    (workdir / "summary").write_text("")
    environ = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary"),
        **env,
        **{ActionRuntime.input_variable(name): value for name, value in inputs.items()},
    }
    stream = io.StringIO()
    code = run_action(module.main, name=module.ACTION_NAME, runtime=ActionRuntime(environ, stream))
    return StepResult(
        code, parse_outputs((workdir / "output").read_text()), stream.getvalue(), (workdir / "summary").read_text()
    )


def layer_files(world: World, build_id: str) -> dict[str, bytes]:
    """Every regular file in the saved build's layers (pulled through Cargohold into an OCI layout)."""
    layout = world.fresh("layout")
    pull_image(world.connection(), build_id, output=f"oci:{layout / 'img'}")
    index = json.loads((layout / "img" / "index.json").read_text())
    manifest = json.loads(_blob(layout / "img", index["manifests"][0]["digest"]))
    files: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(_blob(layout / "img", layer["digest"])), mode="r:*") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    files[member.name.lstrip("./")] = handle.read()
    return files


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


def context(world: World, dockerfile: str, files: dict[str, bytes] | None = None, *, busybox: bool = False) -> Path:
    directory = world.fresh("context")
    (directory / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (directory / name).write_bytes(content)
    if busybox:
        if not Path(BUSYBOX).is_file():
            pytest.skip("needs a static busybox (apt-get install busybox-static; scripts/bootstrap.sh does)")
        shutil.copy2(BUSYBOX, directory / "busybox")
    return directory


RUN_PREFIX = "FROM scratch\nCOPY busybox /bin/sh\nCOPY busybox /bin/busybox\n"
"""A shell for RUN without pulling a base image: busybox runs as ``sh`` when called so; other tools through it."""


# --- the table ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One input (or pair) of one action; ``prepare`` returns the inputs, ``check`` looks at the outcome."""

    action: ModuleType
    name: str
    prepare: Callable[[World], dict[str, str]]
    check: Callable[[World, StepResult], None]
    builds: bool = False


def _ok(result: StepResult) -> None:
    assert result.code == 0, result.log


def _error(result: StepResult, *phrases: str) -> None:
    errors = [line for line in result.log.splitlines() if line.startswith("::error")]
    assert result.code == 1 and len(errors) == 1, result.log
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def _pulled(expected: Callable[[World], str], image: Callable[[World, StepResult], str] | None = None) -> Any:
    def check(world: World, result: StepResult) -> None:
        _ok(result)
        assert result.outputs["digest"] == expected(world), result.log
        if image is not None:
            assert result.outputs["image"] == image(world, result)

    return check


def _pull_to(world: World, **inputs: str) -> dict[str, str]:
    return {"build-id": world.build_id, "output": f"oci:{world.fresh('pull') / 'layout'}", **inputs}


def _saved_tag_points_at_build(tag: str) -> Callable[[World, StepResult], None]:
    def check(world: World, result: StepResult) -> None:
        _ok(result)
        with ControlClient(world.server.url, world.token) as control:
            info = control.pull_info(f"{world.project}:{tag}")
        assert info.build_id == result.outputs["build-id"], (info, result.outputs)

    return check


def _image_has(path: str, content: bytes) -> Callable[[World, StepResult], None]:
    def check(world: World, result: StepResult) -> None:
        _ok(result)
        files = layer_files(world, result.outputs["build-id"])
        assert files.get(path) is not None, sorted(files)
        assert content in files[path], files[path][:400]

    return check


def _pushed(tags: Callable[[World], dict[str, str]]) -> Callable[[World, StepResult], None]:
    def check(world: World, result: StepResult) -> None:
        _ok(result)
        expected = tags(world)
        assert result.outputs["tags"].splitlines() == list(expected), result.outputs
        for tag, digest in expected.items():
            assert str(skopeo_raw(f"docker://{tag}", creds="ci:s3cret-pass")[1]) == digest, tag

    return check


def _dest(world: World, name: str) -> str:
    return f"{world.extra['refregistry'].host}/inputs/{name}"


def _project_chosen(world: World, result: StepResult) -> None:
    _ok(result)
    assert result.outputs["project-id"] == world.project
    assert "pass --project" not in result.log


def _saved_annotation(world: World, result: StepResult) -> None:
    _ok(result)
    raw, _ = skopeo_raw(
        f"docker://{world.server.host}/{world.project}:{result.outputs['build-id']}", creds=f"x-token:{world.token}"
    )
    assert json.loads(raw).get("annotations", {}).get("org.example.note") == "from-the-input", raw[:500]


def _image_input(world: World) -> dict[str, str]:
    return {"image": f"oci:{world.tmp / 'app'}:v1"}


CASES = [
    # action-pull
    Case(pull_action, "build-id", lambda w: _pull_to(w), _pulled(lambda w: w.amd64)),
    Case(
        pull_action,
        "build-id bare save-tag with project",
        lambda w: _pull_to(w, **{"build-id": "main", "project": w.project}),
        _pulled(lambda w: w.amd64),
    ),
    Case(
        pull_action,
        "build-id project:save-tag",
        lambda w: _pull_to(w, **{"build-id": f"{w.project}:main"}),
        _pulled(lambda w: w.amd64),
    ),
    Case(
        pull_action,
        "build-id bare save-tag without project",
        lambda w: _pull_to(w, **{"build-id": "main"}),
        lambda w, r: _error(r, "'main' is not a build ID", "the 'project' input"),
    ),
    Case(pull_action, "platform", lambda w: _pull_to(w, platform="linux/arm64"), _pulled(lambda w: w.arm64)),
    Case(
        pull_action,
        "tags",
        lambda w: _pull_to(w, tags="app:ci"),
        _pulled(lambda w: w.amd64, lambda w, r: "app:ci"),
    ),
    Case(
        pull_action,
        "output docker-archive",
        lambda w: {"build-id": w.build_id, "output": f"docker-archive:{w.fresh('pull') / 'image.tar'}"},
        _pulled(lambda w: w.amd64),
    ),
    Case(pull_action, "targets", lambda w: _pull_to(w, targets="app"), _pulled(lambda w: str(w.app.manifest.digest))),
    Case(
        pull_action,
        "targets unknown",
        lambda w: _pull_to(w, targets="nope"),
        lambda w, r: _error(r, "has no target 'nope'; its targets: app, tests"),
    ),
    # action-push
    Case(
        push_action,
        "tags",
        lambda w: {"build-id": w.build_id, "tags": _dest(w, "all:1")},
        _pushed(lambda w: {_dest(w, "all:1"): str(w.index.index.digest)}),
    ),
    Case(
        push_action,
        "platform",
        lambda w: {"build-id": "main", "project": w.project, "tags": _dest(w, "arm:1"), "platform": "linux/arm64"},
        _pushed(lambda w: {_dest(w, "arm:1"): w.arm64}),
    ),
    Case(
        push_action,
        "targets",
        lambda w: {"build-id": w.build_id, "tags": _dest(w, "bake:1"), "targets": "app\ntests"},
        _pushed(
            lambda w: {
                _dest(w, "bake:1-app"): str(w.app.manifest.digest),
                _dest(w, "bake:1-tests"): str(w.tests.manifest.digest),
            }
        ),
    ),
    Case(
        push_action,
        "username and password",
        lambda w: {"build-id": w.build_id, "tags": _dest(w, "creds:1"), "username": "ci", "password": "wrong"},
        lambda w, r: _error(r, "401"),
    ),
    # action-build, saving an image an earlier step made
    Case(build_action, "image", _image_input, lambda w, r: (_ok(r), None)[1]),
    Case(build_action, "save-tag", lambda w: {**_image_input(w), "save-tag": "rc"}, _saved_tag_points_at_build("rc")),
    Case(
        build_action,
        "save-tags and save-tag together",
        lambda w: {**_image_input(w), "save-tag": "one", "save-tags": "two"},
        lambda w, r: (_saved_tag_points_at_build("one")(w, r), _saved_tag_points_at_build("two")(w, r))[0],
    ),
    Case(build_action, "project omitted: the token's only project", _image_input, _project_chosen),
    Case(
        build_action,
        "provenance with image",
        lambda w: {**_image_input(w), "provenance": "mode=max"},
        lambda w, r: _error(r, "'image' saves an existing image", "'provenance'"),
    ),
    # action-build, building with buildah
    Case(
        build_action,
        "build-contexts",
        lambda w: {
            "context": str(context(w, "FROM scratch\nCOPY --from=extra extra.txt /from-extra.txt\n")),
            "build-contexts": f"extra={context(w, '', {'extra.txt': b'from the extra context'})}",
            "builder": "buildah",
        },
        _image_has("from-extra.txt", b"from the extra context"),
        builds=True,
    ),
    Case(
        build_action,
        "annotations",
        lambda w: {
            "context": str(context(w, "FROM scratch\nCOPY a.txt /\n", {"a.txt": b"a"})),
            "annotations": "org.example.note=from-the-input",
            "builder": "buildah",
        },
        _saved_annotation,
        builds=True,
    ),
    Case(
        build_action,
        "add-hosts",
        lambda w: {
            "context": str(context(w, RUN_PREFIX + "RUN /bin/busybox cat /etc/hosts > /hosts.txt\n", busybox=True)),
            "add-hosts": "cargohold-test.invalid:10.9.8.7",
            "builder": "buildah",
        },
        _image_has("hosts.txt", b"cargohold-test.invalid"),
        builds=True,
    ),
    Case(
        build_action,
        "secret-files",
        lambda w: {
            "context": str(
                context(
                    w,
                    RUN_PREFIX + "RUN --mount=type=secret,id=note /bin/busybox cat /run/secrets/note > /secret.txt\n",
                    busybox=True,
                )
            ),
            "secret-files": f"note={context(w, '', {'note': b'file-secret-value'}) / 'note'}",
            "builder": "buildah",
        },
        _image_has("secret.txt", b"file-secret-value"),
        builds=True,
    ),
    Case(
        build_action,
        "ulimit",
        lambda w: {
            "context": str(context(w, RUN_PREFIX + "RUN ulimit -n > /nofile.txt\n", busybox=True)),
            "ulimit": "nofile=321:321",
            "builder": "buildah",
        },
        _image_has("nofile.txt", b"321"),
        builds=True,
    ),
    Case(
        build_action,
        "attests with buildah",
        lambda w: {"context": str(context(w, "FROM scratch\n")), "attests": "type=sbom", "builder": "buildah"},
        lambda w, r: _error(r, "the buildah builder cannot apply --attest (input 'attests')", "docker-buildx"),
    ),
    Case(
        build_action,
        "provenance with buildah",
        lambda w: {"context": str(context(w, "FROM scratch\n")), "provenance": "mode=max", "builder": "buildah"},
        lambda w, r: _error(r, "cannot apply --provenance (input 'provenance')"),
    ),
    Case(
        build_action,
        "build-platform and buildx-fallback",
        lambda w: {"context": ".", "build-platform": "linux/arm64", "buildx-fallback": "true", "lint": "false"},
        lambda w, r: _error(r, "'build-platform', 'buildx-fallback' cannot apply", "runner"),
    ),
    Case(
        build_action,
        "secret-files naming no file",
        lambda w: {"context": ".", "secret-files": "note=/nonexistent/file"},
        lambda w, r: _error(r, "'secret-files' entry note names /nonexistent/file, which is not a file"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.action.__name__.rsplit('.', 1)[1]}: {c.name}")
def test_input(
    case: Case, world: World, refregistry_auth: RefRegistry, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    world.extra["refregistry"] = refregistry_auth
    if case.builds:
        request.getfixturevalue("buildah_store")
    inputs = {"registry": world.server.url, **case.prepare(world)}
    env = {"CARGOHOLD_TOKEN": world.token}
    if case.action is push_action and inputs.get("password") != "wrong":
        inputs.update(username="ci", password="s3cret-pass")
    result = run_step(case.action, tmp_path, inputs, env)
    case.check(world, result)


# --- save: false never contacts Cargohold -------------------------------------------------------------------


class Recorder:
    """A TCP listener that only counts who connected: the "registry" a fork pull request must never reach."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


def test_save_false_builds_without_contacting_any_server(
    world: World, buildah_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork pull request path: no token, no OIDC, a registry configured for the repository anyway. The build
    runs, the outputs are empty, and neither the registry nor the runner's ID-token service hears a thing."""
    recorder = Recorder()
    try:
        directory = context(world, "FROM scratch\nCOPY a.txt /\n", {"a.txt": b"fork"})
        env = {
            "CARGOHOLD_REGISTRY": recorder.url,
            "ACTIONS_ID_TOKEN_REQUEST_URL": recorder.url + "/token",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner-secret",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # also where the images layer could look
        monkeypatch.delenv("CARGOHOLD_TOKEN", raising=False)
        result = run_step(
            build_action,
            tmp_path,
            {"context": str(directory), "save": "false", "builder": "buildah", "tags": "fork:pr"},
            env,
        )
    finally:
        recorder.stop()
    assert result.code == 0, result.log
    assert recorder.connections == 0
    assert result.outputs["build-id"] == "" and result.outputs["digest"] == ""
    assert "Cargohold build finished" in result.summary


def test_pass_through_flags_follow_the_builders_table() -> None:
    options = BuildOptions(cache_from=["type=gha"], cache_to=["type=gha,mode=max"], network="host", ulimits=["a", "b"])
    assert pass_through_flags(options, "docker-buildx") == [
        "--cache-from",
        "type=gha",
        "--cache-to",
        "type=gha,mode=max",
        "--network",
        "host",
        "--ulimit",
        "a",
        "--ulimit",
        "b",
    ]
    with pytest.raises(ImageError, match=r"the docker builder cannot apply --cache-to \(input 'cache-to'\)"):
        pass_through_flags(options, "docker")
