"""cargohold.client: an httpx-based OCI registry client.

Layers, bottom up: :mod:`.credentials` (who we are), :mod:`.auth` (answering challenges),
:mod:`.retry` (when to try again), :mod:`.registry` (one method per API operation, resumable blob
transfers), :mod:`.copy` (whole images between registries and OCI layouts). The names re-exported here
are the supported surface for the CLI and the GitHub Actions code.
"""

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
from cargohold.client.registry import Manifest, RegistryClient, bytes_source, file_source
from cargohold.client.retry import RetryPolicy

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
