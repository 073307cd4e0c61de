"""The backends the contract suites run against: ONE fixture per interface, parametrized over implementations.

A new backend plugs in by adding one parameter here (and nothing else): an object store to ``blob_store``
(S3 through the moto fixture, say), a database to ``metadata_db`` (PostgreSQL through the private cluster
fixture). Every test in ``test_blob_store_contract.py`` and ``test_metadata_contract.py`` then runs against it,
which is what "implements the interface" means for Cargohold (the model is CNCF distribution's
``registry/storage/driver/testsuites``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.metadata.db import Database, sqlite_url
from cargohold.storage.base import BlobStore
from cargohold.storage.filesystem import FilesystemBlobStore


@pytest.fixture(params=["filesystem", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """Every :class:`~cargohold.storage.base.BlobStore` implementation, empty, one per test.

    ``s3``: a fresh bucket on the session's moto server (tests/s3server.py), under a key prefix so that the
    prefix handling is exercised too.
    """
    if request.param == "filesystem":
        yield FilesystemBlobStore(tmp_path / "data", fsync=True)
    elif request.param == "s3":
        from cargohold.storage.s3 import S3BlobStore
        from cargohold.storage.s3url import S3Location

        bucket = request.getfixturevalue("s3_bucket")
        yield S3BlobStore(S3Location.parse(f"s3://{bucket.name}/contract/prefix"))
    else:  # pragma: no cover - a parameter without a backend is a mistake in this file
        raise AssertionError(f"no blob store {request.param!r}")


@pytest.fixture(params=["sqlite-file", "postgresql"])
def metadata_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Every metadata database the stores run on, migrated to head and empty, one per test.

    PostgreSQL: a fresh copy of the session's migrated template in the private test cluster (tests/pgcluster.py).
    """
    if request.param == "sqlite-file":
        database = Database(sqlite_url(tmp_path / "metadata.db"))
    elif request.param == "postgresql":
        database = Database(request.getfixturevalue("pg_migrated_url"))
    else:  # pragma: no cover
        raise AssertionError(f"no metadata database {request.param!r}")
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


__all__ = ["blob_store", "metadata_db"]
