"""Storage faults: recognising a full or failing disk in any exception, and saying so in one sentence.

A failed ``write(2)``, ``fsync(2)``, ``rename(2)`` or SQLite commit can surface as an ``OSError``, as
``sqlite3.OperationalError("database or disk is full")``, or wrapped in SQLAlchemy's ``OperationalError``.
:func:`classify` looks through all of them (and their causes) for what happened to the storage:

* ``full`` — ENOSPC, EDQUOT, SQLITE_FULL. Answered with HTTP 507: the client must not retry blindly, an
  admin (or the server's own eviction) has to free space first.
* ``io`` — EIO, EROFS (ext4 remounts read-only after errors), ESTALE, SQLITE_IOERR, SQLITE_READONLY,
  SQLITE_CORRUPT and the like. Answered with HTTP 500 ``UNKNOWN``: the disk is failing, and a retry may
  or may not help; an admin must look at the disk.

Anything else is not a storage fault (a bug keeps its traceback in the log). The S3 store raises
``OSError``s itself (:class:`cargohold.storage.s3.ObjectStoreError`): ``EDQUOT`` for quota refusals, ``EIO``
for everything else the store or the network fails with.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from typing import Literal

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
IO_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.ESTALE, errno.ENXIO, errno.ENODEV, errno.EUCLEAN, errno.EREMOTEIO})
_SQLITE_FULL = 13
_SQLITE_IO = frozenset({10, 8, 11, 26})  # SQLITE_IOERR, SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_NOTADB

Kind = Literal["full", "io"]


@dataclass(frozen=True, slots=True)
class StorageFault:
    kind: Kind
    name: str
    """``ENOSPC``, ``EIO``, ``SQLITE_FULL``…: what the log line and the message call it."""
    cause: BaseException

    @property
    def full(self) -> bool:
        return self.kind == "full"

    def describe(self) -> str:
        """The error in a few words: ``No space left on device (ENOSPC)``."""
        if isinstance(self.cause, OSError) and self.cause.errno is not None:
            return f"{os.strerror(self.cause.errno)} ({self.name})"
        return f"{self.cause} ({self.name})"


def classify(exc: BaseException) -> StorageFault | None:
    """The storage fault behind ``exc`` (searching its SQLAlchemy ``orig``, cause and context), if any."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found = _direct(current)
        if found is not None:
            return found
        pending.extend([getattr(current, "orig", None), current.__cause__, current.__context__])
    return None


def _direct(exc: BaseException) -> StorageFault | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        if exc.errno in FULL_ERRNOS:
            return StorageFault("full", name, exc)
        if exc.errno in IO_ERRNOS:
            return StorageFault("io", name, exc)
        return None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        name = getattr(exc, "sqlite_errorname", None) or f"SQLITE error {code}"
        if code & 0xFF == _SQLITE_FULL:
            return StorageFault("full", name, exc)
        if code & 0xFF in _SQLITE_IO:
            return StorageFault("io", name, exc)
    return None
