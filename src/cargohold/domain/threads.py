"""How the domain layer runs blocking work (database, file system, hashing) without blocking the event loop.

The server hands every domain service one :class:`Runner`: its I/O thread pool
(:meth:`cargohold.server.state.RegistryState.run`). Each call is one *hop* to a thread and back, which costs
a context switch and a trip through the event loop, so the domain groups blocking steps that belong together
into one function and runs that once (an upload commit is one hop, see :mod:`cargohold.domain.uploads`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Runner(Protocol):
    """``await run(func, *args, **kwargs)``: call ``func`` on a worker thread and return its result."""

    async def __call__(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


__all__ = ["Runner"]
