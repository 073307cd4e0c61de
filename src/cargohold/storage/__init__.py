"""cargohold.storage: blob stores behind :class:`~cargohold.storage.base.BlobStore`, and the one way to open one
from a storage URL (:func:`open_blob_store`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from cargohold.storage.base import BlobStore


class StorageUrlError(ValueError):
    """A storage URL no store here understands; the message says which forms are."""


def open_blob_store(url: str | None, data_dir: Path, *, fsync: bool = True) -> BlobStore:
    """The blob store a storage URL names: None or ``""`` is the filesystem under ``data_dir`` (the default),
    a path or ``file:///path`` the filesystem under that directory. Other schemes (``s3://``) plug in here."""
    from cargohold.storage.filesystem import FilesystemBlobStore

    if not url:
        return FilesystemBlobStore(data_dir, fsync=fsync)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageUrlError(f"{url!r}: a file:// URL names a local directory (file:///path)")
        return FilesystemBlobStore(Path(unquote(parsed.path)), fsync=fsync)
    if parsed.scheme == "" and url.startswith(("/", ".")):
        return FilesystemBlobStore(Path(url), fsync=fsync)
    raise StorageUrlError(f"{url!r} is not a storage URL Cargohold knows; use a directory (/path or file:///path)")


__all__ = ["BlobStore", "StorageUrlError", "open_blob_store"]
