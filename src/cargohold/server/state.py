"""Everything a request handler needs, built once per server process: settings, the stores, the access policy,
the thread pool, and the domain services handlers call (:mod:`cargohold.domain`)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from aiohttp import web

from cargohold.config import ServerSettings
from cargohold.domain.builds import Builds
from cargohold.domain.manifests import Manifests
from cargohold.domain.space import SpaceMonitor
from cargohold.domain.uploads import UploadLimits, UploadSessions
from cargohold.metadata.control import ControlStore
from cargohold.metadata.store import MetadataStore
from cargohold.server.auth.access import AccessPolicy
from cargohold.storage.base import BlobStore

if TYPE_CHECKING:
    from cargohold.server.auth.oidc_exchange import OidcExchange
    from cargohold.server.auth.policy import TokenAccess

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class RegistryState:
    settings: ServerSettings
    metadata: MetadataStore
    blobs: BlobStore
    access: AccessPolicy
    executor: ThreadPoolExecutor
    control: ControlStore | None = None
    auth: TokenAccess | None = None
    oidc: OidcExchange | None = None
    space: SpaceMonitor | None = None
    """Free space, upload admission and the reserve file (see cargohold.domain.space)."""
    background_jobs: bool = True
    """Whether this process runs the server's background jobs (stale-upload purges, retention sweeps, garbage
    collection, evicting for space): with ``--workers N`` only the first worker does (cargohold.server.workers)."""
    uploads: UploadSessions = field(init=False)
    """Every upload session of this process (see cargohold.domain.uploads)."""
    manifests: Manifests = field(init=False)
    """Manifest put/get/delete with their invariants (see cargohold.domain.manifests)."""
    builds: Builds = field(init=False)
    """Builds: create, save, evict, ... (see cargohold.domain.builds); only with a control store."""

    def __post_init__(self) -> None:
        settings = self.settings
        limits = UploadLimits(settings.max_blob_size, settings.max_uploads_per_credential, settings.upload_ttl)
        self.uploads = UploadSessions(self.blobs, self.metadata, self.run, limits, space=self.space)
        self.manifests = Manifests(self.metadata, self.run)
        if self.control is not None:
            self.builds = Builds(self.control, self.metadata, self.blobs, self.run, space=self.space)

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking work (database, file system, hashing) off the event loop."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the request ID and client address reach logs and audit entries
        return await loop.run_in_executor(self.executor, functools.partial(context.run, func, *args, **kwargs))


STATE_KEY = web.AppKey("cargohold_state", RegistryState)


def state_of(request: web.Request) -> RegistryState:
    return request.app[STATE_KEY]
