"""Hash state of in-progress uploads, kept across the requests of a chunked upload.

Digests are verified by hashing bytes as they stream to disk, so finishing an upload never re-reads it.
Python's hash objects cannot be serialised, so the running hash lives in this process's memory, keyed by
upload ID, next to the byte count it covers. If it is missing or stale (the server restarted, or a write
failed half-way) it is rebuilt once from the staged bytes: a recovery path, not the normal one.

The hash algorithm is sha256 unless the client said otherwise when it started the upload
(``?digest=sha512:…`` on a monolithic POST, or ``?digest-algorithm=sha512``); finishing with a digest of
another algorithm than the one hashed falls back to one pass over the staged file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cargohold.oci.digest import Hasher, new_hasher


@dataclass
class UploadProgress:
    algorithm: str
    hasher: Hasher
    offset: int = 0
    """Bytes covered by ``hasher``; equals the staged file's size when the state is current."""


@dataclass
class UploadTracker:
    _progress: dict[str, UploadProgress] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _algorithms: dict[str, str] = field(default_factory=dict)

    def lock(self, upload_id: str) -> asyncio.Lock:
        """One request at a time per upload session: concurrent PATCHes would interleave bytes."""
        return self._locks.setdefault(upload_id, asyncio.Lock())

    def start(self, upload_id: str, algorithm: str = "sha256") -> UploadProgress:
        progress = UploadProgress(algorithm, new_hasher(algorithm))
        self._progress[upload_id] = progress
        self._algorithms[upload_id] = algorithm
        return progress

    def get(self, upload_id: str, staged_size: int) -> UploadProgress | None:
        """The running hash, if it covers exactly the ``staged_size`` bytes on disk."""
        progress = self._progress.get(upload_id)
        if progress is None or progress.offset != staged_size:
            return None
        return progress

    def algorithm(self, upload_id: str) -> str:
        return self._algorithms.get(upload_id, "sha256")

    def forget(self, upload_id: str) -> None:
        self._progress.pop(upload_id, None)
        self._algorithms.pop(upload_id, None)
        lock = self._locks.get(upload_id)
        if lock is not None and not lock.locked():
            del self._locks[upload_id]
