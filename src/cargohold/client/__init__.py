"""cargohold.client: an httpx-based OCI registry client.

Layers, bottom up: :mod:`.credentials` (who we are), :mod:`.auth` (answering challenges),
:mod:`.retry` (when to try again, and for how long), :mod:`.registry` (one method per API operation,
resumable blob transfers), :mod:`.copy` (whole images between registries and OCI layouts). The names
re-exported here are the supported surface for the CLI and the GitHub Actions code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "RegistryAuth": "auth",
    "DEFAULT_JOBS": "copy",
    "CopyResult": "copy",
    "ImageSource": "copy",
    "ImageTarget": "copy",
    "LayoutStore": "copy",
    "RegistryRepo": "copy",
    "copy_image": "copy",
    "select_platform": "copy",
    "PUSH_ENV_PREFIX": "credentials",
    "Credentials": "credentials",
    "CredentialsError": "credentials",
    "resolve_credentials": "credentials",
    "DigestMismatchError": "errors",
    "PlatformNotFoundError": "errors",
    "RegistryError": "errors",
    "Manifest": "registry",  # defined in cargohold.oci.manifest; the registry client's methods return it
    "RegistryClient": "registry",
    "bytes_source": "registry",
    "file_source": "registry",
    "RetryPolicy": "retry",
}
"""Where each re-exported name lives. Imported on first use (PEP 562): the server imports a few client
modules (TLS settings, the retry policy), and restarting it should not wait for the rest."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from cargohold.client.auth import RegistryAuth
    from cargohold.client.copy import (
        DEFAULT_JOBS,
        CopyResult,
        ImageSource,
        ImageTarget,
        LayoutStore,
        RegistryRepo,
        copy_image,
        select_platform,
    )
    from cargohold.client.credentials import PUSH_ENV_PREFIX, Credentials, CredentialsError, resolve_credentials
    from cargohold.client.errors import DigestMismatchError, PlatformNotFoundError, RegistryError
    from cargohold.client.registry import RegistryClient, bytes_source, file_source
    from cargohold.client.retry import RetryPolicy
    from cargohold.oci.manifest import Manifest

__all__ = [
    "DEFAULT_JOBS",
    "PUSH_ENV_PREFIX",
    "CopyResult",
    "Credentials",
    "CredentialsError",
    "DigestMismatchError",
    "ImageSource",
    "ImageTarget",
    "LayoutStore",
    "Manifest",
    "PlatformNotFoundError",
    "RegistryAuth",
    "RegistryClient",
    "RegistryError",
    "RegistryRepo",
    "RetryPolicy",
    "bytes_source",
    "copy_image",
    "file_source",
    "resolve_credentials",
    "select_platform",
]
