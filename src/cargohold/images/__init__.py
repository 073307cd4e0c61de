"""cargohold.images: save, build, pull and push whole images — the layer the CLI and the GitHub Actions share.

Each function takes a :class:`~cargohold.client.settings.Connection` (where Cargohold is, which project, which
token), does the whole job, and returns a result dataclass; progress goes to a
:class:`~cargohold.images.progress.Progress` chosen by the caller. Failures raise
:class:`~cargohold.images.common.ImageError` (or the client library's errors) with one-sentence messages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "pull_build": "actions_api",
    "push_build": "actions_api",
    "save_build": "actions_api",
    "BuildOptions": "build",
    "BuildResult": "build",
    "build_and_save": "build",
    "build_image": "build",
    "detect_builder": "build",
    "ImageError": "common",
    "DockerEngine": "docker",
    "DockerError": "docker",
    "host_platform_string": "docker",
    "PlainProgress": "progress",
    "Progress": "progress",
    "RichProgress": "progress",
    "make_progress": "progress",
    "PullResult": "pull",
    "parse_output": "pull",
    "pull_image": "pull",
    "PushResult": "push",
    "TagPush": "push",
    "push_image": "push",
    "SaveResult": "save",
    "save_image": "save",
    "save_opened": "save",
    "SourceError": "sources",
    "parse_source": "sources",
}
"""Where each re-exported name lives. Imported on first use (PEP 562), so ``cargohold save`` does not pay
for the build, Docker and Actions modules it never touches: every command is a fresh process, and start-up
time is part of what a CI step waits for."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from cargohold.images.actions_api import pull_build, push_build, save_build
    from cargohold.images.build import BuildOptions, BuildResult, build_and_save, build_image, detect_builder
    from cargohold.images.common import ImageError
    from cargohold.images.docker import DockerEngine, DockerError, host_platform_string
    from cargohold.images.progress import PlainProgress, Progress, RichProgress, make_progress
    from cargohold.images.pull import PullResult, parse_output, pull_image
    from cargohold.images.push import PushResult, TagPush, push_image
    from cargohold.images.save import SaveResult, save_image, save_opened
    from cargohold.images.sources import SourceError, parse_source

__all__ = [
    "BuildOptions",
    "BuildResult",
    "DockerEngine",
    "DockerError",
    "ImageError",
    "PlainProgress",
    "Progress",
    "PullResult",
    "PushResult",
    "RichProgress",
    "SaveResult",
    "SourceError",
    "TagPush",
    "build_and_save",
    "build_image",
    "detect_builder",
    "host_platform_string",
    "make_progress",
    "parse_output",
    "parse_source",
    "pull_build",
    "pull_image",
    "push_build",
    "push_image",
    "save_build",
    "save_image",
    "save_opened",
]
