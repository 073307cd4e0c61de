"""cargohold.storage: blob stores behind :class:`cargohold.storage.base.BlobStore`, chosen by a storage URL."""

from __future__ import annotations

from pathlib import Path

from cargohold.storage.base import BlobStore


def open_blob_store(
    url: str | None,
    data_dir: Path,
    *,
    fsync: bool = True,
    redirect: bool = True,
    redirect_url: str | None = None,
) -> BlobStore:
    """The store a ``--storage-url`` names: none is the filesystem under ``data_dir``;
    ``s3://BUCKET[/PREFIX]`` a bucket, reached as the AWS tools would reach it (see cargohold.storage.s3).

    ``redirect``/``redirect_url`` only concern object stores: blob GETs answer 307 to a presigned URL (or to
    ``redirect_url`` + the object key, for a CDN in front of the bucket), or stream through the server.
    boto3 (the ``s3`` extra) is imported only for an ``s3://`` URL, so a filesystem server runs without it.
    """
    if not url:
        from cargohold.storage.filesystem import FilesystemBlobStore

        return FilesystemBlobStore(data_dir, fsync=fsync)
    if url.startswith("s3://"):
        from cargohold.storage.s3url import S3Location

        location = S3Location.parse(url)
        try:
            from cargohold.storage.s3 import S3BlobStore
        except ImportError as exc:
            raise ValueError(
                f"storage URL {url!r} needs boto3, which is not installed: pip install 'cargohold[server,s3]'"
            ) from exc
        return S3BlobStore(location, redirect=redirect, redirect_url=redirect_url)
    raise ValueError(
        f"storage URL {url!r} is not supported; use s3://BUCKET[/PREFIX], or leave it unset for the data dir"
    )


__all__ = ["open_blob_store"]
