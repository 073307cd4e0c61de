"""The data directory belongs to the server's user alone: directory 0700, files 0600, whatever the umask.

It holds token hashes, manifests, provenance and the blobs themselves. Modes are set explicitly (``os.open``
and ``mkdir`` with a mode, then ``chmod`` where a umask could have widened nothing but an existing
directory is loose), so a service started with ``umask 000`` or ``022`` creates the same private files.

A data directory created by an older version (0755, a 0644 ``metadata.db``) is tightened on start, with
one warning naming what changed. The directory's own mode is what keeps other users out: blobs inside a
0700 directory are unreachable whatever their own modes, so start-up never walks the blob tree. A
directory that is not ours or is shared (sticky bit, like ``/tmp``) is never changed: the server warns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def create_private_file(path: Path) -> None:
    """Create an empty file readable and writable by this user only; ``FileExistsError`` if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # exactly 0600: a umask such as 0277 would leave it unwritable
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` with every directory it creates at 0700 (pathlib gives parents the umask's mode)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process won the race
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask; 000 or 077 both end at 0700


def secure_data_dir(data_dir: Path, database_url: str) -> None:
    """Create or tighten ``data_dir`` (0700) and the SQLite database in it (0600, with its -wal/-shm)."""
    make_private_dir(data_dir)
    _tighten(data_dir, DIR_MODE)
    database = _sqlite_path(database_url)
    if database is None:
        return
    make_private_dir(database.parent)
    with contextlib.suppress(FileExistsError):
        create_private_file(database)  # SQLite gives its -wal and -shm files the database file's mode
    for suffix in SQLITE_SUFFIXES:
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            _tighten(companion, FILE_MODE)


def _sqlite_path(database_url: str) -> Path | None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _tighten(path: Path, wanted: int) -> None:
    """Remove group/other bits from ``path`` if it has any; warn instead when it is not ours to change."""
    info = path.lstat()
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if info.st_uid != os.geteuid() or mode & stat.S_ISVTX or stat.S_ISLNK(info.st_mode):
        log.warning(
            "%s is accessible by other users (mode %04o) and this server will not change it (not owned by this "
            "user, shared or a symlink); run 'chmod %o %s' or choose a private --data-dir",
            path,
            mode,
            wanted,
            path,
        )
        return
    os.chmod(path, mode & ~0o077)
    log.warning(
        "%s was accessible by other users (mode %04o); tightened to %04o (the data dir holds credentials and "
        "images: see docs/api.md, File permissions)",
        path,
        mode,
        mode & ~0o077,
    )
