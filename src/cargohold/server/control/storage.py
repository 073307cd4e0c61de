"""Server storage for admins: ``GET /api/v1/storage`` (free space, the minimum, degraded or not), and the same
numbers in ``cargohold usage`` (see :mod:`cargohold.domain.space`)."""

from __future__ import annotations

from aiohttp import web

from cargohold import schemas
from cargohold.server.control import render
from cargohold.server.control.common import api_error, authenticated
from cargohold.server.state import RegistryState


def server_storage(state: RegistryState) -> schemas.ServerStorage:
    """The server's free space, for admins (``cargohold usage``): each filesystem, the minimum, the reserve."""
    assert state.space is not None
    status = state.space.status()
    reserve = state.space.reserve
    return schemas.ServerStorage(
        status="degraded" if status.low else "ok",
        reason=status.reason(),
        filesystems=[schemas.Filesystem.from_json(fs.to_json()) for fs in status.filesystems],
        reserve_bytes=reserve.held() if reserve is not None else 0,
        evict_for_space=state.space.evict_for_space,
    )


async def storage_status(request: web.Request) -> web.Response:
    """``GET /api/v1/storage`` (admin): the server's free space, its minimum and whether it is degraded."""
    state, _control, identity = await authenticated(request)
    if not identity.is_admin:
        raise api_error(403, "DENIED", "only an admin token may read the server's storage status")
    if state.space is None or not state.space.guard.watching:
        raise api_error(404, "NOT_FOUND", "this server's storage has no filesystem to measure")
    return render.respond(await state.run(server_storage, state))
