"""The root of every error the client side reports to people, and the content errors of the OCI layer.

:class:`CargoholdError` is what the CLI (:mod:`cargohold.cli.context`) and the GitHub Actions
(:mod:`cargohold.actions.common`) catch: every failure the client library means a person to read derives from
it, and ``str()`` of one is already a sentence that says what went wrong (and, where there is one, the fix).
Anything else reaching them is a bug and keeps its traceback.

It is defined here, in the lowest layer, so that this package's own errors (a broken OCI layout or docker
archive, a malformed reference, content that does not match its digest) can derive from it without ``oci/``
importing anything above it. Import it as ``cargohold.client.errors.CargoholdError``.
"""

from __future__ import annotations


class CargoholdError(Exception):
    """A failure to report as one sentence: ``str()`` says what went wrong and, where there is one, the fix."""


class DigestMismatchError(CargoholdError):
    """Content did not hash to the digest it was requested or announced under."""


class PlatformNotFoundError(CargoholdError, LookupError):
    """An index has no manifest for the requested platform; the message lists those it has."""


__all__ = ["CargoholdError", "DigestMismatchError", "PlatformNotFoundError"]
