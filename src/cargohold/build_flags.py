"""The build flags Cargohold passes through to the builders, and which builder takes which.

Kept apart from :mod:`cargohold.images.build` (and free of imports, outside the images package) so that the
CLI can declare one option per flag without importing the build machinery at start-up
(tests/test_cli_startup.py).
"""

from __future__ import annotations

from dataclasses import dataclass

BUILDERS = ("docker-buildx", "docker", "buildah")


@dataclass(frozen=True)
class BuilderFlag:
    """One pass-through build flag: the :class:`BuildOptions` field, the flag the builders take, the
    docker/build-push-action input it comes from, and the builders that understand it."""

    field: str
    flag: str
    input: str
    builders: frozenset[str]
    repeatable: bool = True


_ALL = frozenset(BUILDERS)
_BUILDX = frozenset({"docker-buildx"})
_BUILDX_BUILDAH = frozenset({"docker-buildx", "buildah"})
PASS_THROUGH: tuple[BuilderFlag, ...] = (
    BuilderFlag("build_contexts", "--build-context", "build-contexts", _BUILDX_BUILDAH),
    BuilderFlag("ssh", "--ssh", "ssh", _BUILDX_BUILDAH),
    BuilderFlag("cache_from", "--cache-from", "cache-from", _ALL),
    BuilderFlag("cache_to", "--cache-to", "cache-to", _BUILDX_BUILDAH),
    BuilderFlag("outputs", "--output", "outputs", _BUILDX),
    BuilderFlag("annotations", "--annotation", "annotations", _BUILDX_BUILDAH),
    BuilderFlag("attests", "--attest", "attests", _BUILDX),
    BuilderFlag("add_hosts", "--add-host", "add-hosts", _ALL),
    BuilderFlag("allow", "--allow", "allow", _BUILDX),
    BuilderFlag("no_cache_filters", "--no-cache-filter", "no-cache-filters", _BUILDX),
    BuilderFlag("network", "--network", "network", _ALL, repeatable=False),
    BuilderFlag("shm_size", "--shm-size", "shm-size", _ALL, repeatable=False),
    BuilderFlag("ulimits", "--ulimit", "ulimit", _ALL),
    BuilderFlag("cgroup_parent", "--cgroup-parent", "cgroup-parent", _ALL, repeatable=False),
    BuilderFlag("provenance", "--provenance", "provenance", _BUILDX, repeatable=False),
    BuilderFlag("sbom", "--sbom", "sbom", _BUILDX, repeatable=False),
)
"""What each builder accepts, checked against ``docker buildx build``, buildah 1.28 and the classic ``docker
build`` (the latter only when buildx is absent: with the plugin installed Cargohold uses buildx). A flag a
builder cannot apply is an error naming it, never silently dropped: a cache, secret or attestation that
quietly did not happen is worse than a failed build."""
