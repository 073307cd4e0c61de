"""The control API's wire format, typed: one frozen dataclass per resource, shared by the server and the client.

Every answer of ``/api/v1`` (and of the OIDC exchange) has a schema here; :meth:`Schema.from_json` reads one
strictly (declared keys present, with their types) but keeps keys it does not know, so an older client keeps
working against a newer server, and :meth:`Schema.to_json` writes it back exactly. See :mod:`.wire` for the
rules and ``tests/test_schemas_contract.py`` for the proof, against a real server, that each schema describes
its route completely. Standard library only: the client-only install imports this package.
"""

from __future__ import annotations

from cargohold.schemas.auth import (
    OidcDiscovery,
    OidcExchange,
    Permission,
    Token,
    TokenCreated,
    TokenList,
    TokenRevoked,
    TrustList,
    TrustRelationship,
    TrustRemoved,
    Whoami,
)
from cargohold.schemas.builds import Build, BuildCreated, BuildPage, PullInfo
from cargohold.schemas.lifecycle import (
    BuildDeletion,
    Eviction,
    ExpiryReport,
    Filesystem,
    GcReport,
    History,
    HistoryEvent,
    ManifestCollection,
    ServerStorage,
    Tag,
    TagEviction,
    TagPage,
    Usage,
)
from cargohold.schemas.projects import Project, ProjectList
from cargohold.schemas.wire import Schema, SchemaError, optional_key

__all__ = [
    "Build",
    "BuildCreated",
    "BuildDeletion",
    "BuildPage",
    "Eviction",
    "ExpiryReport",
    "Filesystem",
    "GcReport",
    "History",
    "HistoryEvent",
    "ManifestCollection",
    "OidcDiscovery",
    "OidcExchange",
    "Permission",
    "Project",
    "ProjectList",
    "PullInfo",
    "Schema",
    "SchemaError",
    "ServerStorage",
    "Tag",
    "TagEviction",
    "TagPage",
    "Token",
    "TokenCreated",
    "TokenList",
    "TokenRevoked",
    "TrustList",
    "TrustRelationship",
    "TrustRemoved",
    "Usage",
    "Whoami",
    "optional_key",
]
