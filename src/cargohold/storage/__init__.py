"""cargohold.storage: blob stores behind :class:`~cargohold.storage.base.BlobStore`, and the one way to open one
from a storage URL (:func:`open_blob_store`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from cargohold.storage.base import BlobStore


class StorageUrlError(ValueError):
    """A storage URL no store here understands; the message says which forms are."""


def open_blob_store(
    url: str | None,
    data_dir: Path,
    *,
    fsync: bool = True,
    redirect: bool = True,
    redirect_url: str | None = None,
) -> BlobStore:
    """The store a ``--storage-url`` names: none (or ``""``) is the filesystem under ``data_dir``; a path or
    ``file:///path`` the filesystem under that directory; ``s3://BUCKET[/PREFIX]`` a bucket, reached as the AWS
    tools would reach it (see cargohold.storage.s3).

    ``redirect``/``redirect_url`` only concern object stores: blob GETs answer 307 to a presigned URL (or to
    ``redirect_url`` + the object key, for a CDN in front of the bucket), or stream through the server.
    boto3 (the ``s3`` extra) is imported only for an ``s3://`` URL, so a filesystem server runs without it.
    """
    from cargohold.storage.filesystem import FilesystemBlobStore

    if not url:
        return FilesystemBlobStore(data_dir, fsync=fsync)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from cargohold.storage.s3url import S3Location

        location = S3Location.parse(url)
        try:
            from cargohold.storage.s3 import S3BlobStore
        except ImportError as exc:
            raise StorageUrlError(
                f"storage URL {url!r} needs boto3, which is not installed: pip install 'cargohold[server,s3]'"
            ) from exc
        return S3BlobStore(location, redirect=redirect, redirect_url=redirect_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageUrlError(f"{url!r}: a file:// URL names a local directory (file:///path)")
        return FilesystemBlobStore(Path(unquote(parsed.path)), fsync=fsync)
    if parsed.scheme == "" and url.startswith(("/", ".")):
        return FilesystemBlobStore(Path(url), fsync=fsync)
    raise StorageUrlError(
        f"storage URL {url!r} is not supported; use s3://BUCKET[/PREFIX], a directory (/path or file:///path), "
        "or leave it unset for the data dir"
    )


__all__ = ["BlobStore", "StorageUrlError", "open_blob_store"]
