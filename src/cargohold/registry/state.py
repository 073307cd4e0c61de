"""Everything a request handler needs, built once per server process."""

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
from cargohold.metadata.control import ControlStore
from cargohold.metadata.store import MetadataStore
from cargohold.registry.access import AccessPolicy
from cargohold.registry.egress import EgressPolicy
from cargohold.registry.upload_progress import UploadTracker
from cargohold.storage.base import BlobStore

if TYPE_CHECKING:
    from cargohold.registry.auth import TokenAccess
    from cargohold.registry.oidc_exchange import OidcExchange
    from cargohold.registry.space import SpaceMonitor

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
    uploads: UploadTracker = field(default_factory=lambda: UploadTracker())
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    """Where server-side pushes may connect (see cargohold.registry.egress)."""
    push_executor: ThreadPoolExecutor | None = None
    """Threads for server-side pushes, apart from ``executor`` so long uploads never starve requests."""
    space: SpaceMonitor | None = None
    """Free space, upload admission and the reserve file (see cargohold.registry.space)."""

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking work (database, file system, hashing) off the event loop, in a copy of the caller's
        context (the request ID and client address reach log records and audit entries)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self.executor, functools.partial(context.run, func, *args, **kwargs))


STATE_KEY = web.AppKey("cargohold_state", RegistryState)


def state_of(request: web.Request) -> RegistryState:
    return request.app[STATE_KEY]
