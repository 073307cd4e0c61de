"""What a caller may learn about builds that are gone: the reason only for those it may see.

The lifecycle audit log can say why a build or tag is missing ("deleted on … by admin:…"), which is what
people need when a pull fails. It is also information about a project: who deleted what, and when. So the
reason is given only to callers that may read the project the build belonged to (and, for a credential
limited to one build, only about that build). Everyone else gets the same plain not-found as for a build
that never existed.
"""

from __future__ import annotations

from cargohold.lifecycle import audit
from cargohold.server.auth.policy import Identity
from cargohold.server.state import RegistryState


async def explain_missing_build(state: RegistryState, identity: Identity, build_id: str) -> str | None:
    """Why build ``build_id`` is gone, if the caller may know; None means "say plainly it does not exist"."""
    if identity.is_admin:
        return await _explain(state, None, build_id)
    for project in sorted(identity.projects() or ()):
        if not identity.project_allows(project, "pull"):
            continue
        restricted = identity.build_restriction(project)
        if restricted is not None and restricted != build_id:
            continue
        explained = await _explain(state, project, build_id)
        if explained is not None:
            return explained
    return None


async def explain_missing_tag(state: RegistryState, identity: Identity, project_id: str, tag: str) -> str | None:
    """Why ``project_id:tag`` is gone, if the caller may read that project (and is not limited to another build)."""
    if not identity.project_allows(project_id, "pull"):
        return None
    restricted = identity.build_restriction(project_id)
    if restricted is not None and tag != restricted:
        return None
    return await _explain(state, project_id, tag)


async def _explain(state: RegistryState, project_id: str | None, reference: str) -> str | None:
    return await state.run(audit.explain_missing, state.metadata.db, project_id, reference)
