"""Free space on the filesystems the server writes to: measuring it, admitting uploads, and a reserve.

**Why a watermark.** A registry that lets uploads take the last byte of its disk stops working as a whole:
SQLite needs room for its write-ahead log even to *delete* rows, so after the disk fills, pulls that mint a
token, garbage collection and eviction all fail, and nothing can free space any more. The server therefore
keeps ``--min-free-space`` free on every filesystem it writes to (the blob store's and, when it lives
elsewhere, the database's): an upload that would take free space below it is refused before any byte is
staged. The room left is what the database, its journal and housekeeping use.

**The default** is 5% of the filesystem, at most 2 GiB. The room the server needs for itself is bounded in
absolute terms (a few WAL batches of garbage collection, metadata growth, the reserve below, and what
concurrent uploads may overshoot between two checks), so a cap keeps a big disk from idling hundreds of
gigabytes; a percentage keeps a small disk (a 20 GB CI machine, a 40 MB test filesystem) usable.

**What counts as free** is ``f_bavail``: the space an unprivileged process may use. A server running as root
could also use the blocks ext4 reserves for root, so for it the measure is conservative.

**Checking without slowing uploads.** ``statvfs`` is one system call, but the upload path is hot too, so it is
made once per upload request (admission: free space minus the bytes the request announces, minus the bytes
other requests in this process announced and have not written yet, must stay above the minimum) and then
once every :meth:`SpaceGuard.check_every` bytes while a body streams in (a quarter of the minimum, between
1 MiB and 16 MiB). A stream without ``Content-Length`` claims that many bytes ahead each time, so it is
refused before it would cross the minimum, not after.

**The reserve** (:class:`SpaceReserve`) is a file of real blocks the server keeps next to its SQLite
database. If something else fills the disk anyway (another process on the same filesystem), deleting it
gives the database room to keep answering pulls and to run eviction and garbage collection, which is what
frees space. It is taken back as soon as twice its size is free again (below the minimum too, where
uploads are refused anyway), ready for the next time. With the minimum set to zero there is no reserve.

**Object storage** (:mod:`cargohold.storage.s3`) has no ``statvfs``: :meth:`BlobStore.filesystem_path` is None there,
so only the database's filesystem is watched; the bucket's quota errors are mapped like ENOSPC instead
(see :mod:`cargohold.storage.faults`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_FRACTION = 0.05
DEFAULT_CAP = 2 * GiB
MIN_CHECK_EVERY = 1 * MiB
MAX_CHECK_EVERY = 16 * MiB
RESERVE_MIN = 1 * MiB
RESERVE_MAX = 32 * MiB
RESERVE_NAME = "cargohold-reserved-space"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def format_bytes(size: float) -> str:
    """``12.0 MiB``: binary units, as ``--min-free-space`` is usually written."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class MinFreeSpace:
    """How much free space to keep: a fixed size, or a fraction of the filesystem (optionally capped)."""

    size: int | None = None
    fraction: float | None = None
    cap: int | None = None

    @classmethod
    def default(cls) -> MinFreeSpace:
        return cls(fraction=DEFAULT_FRACTION, cap=DEFAULT_CAP)

    @classmethod
    def parse(cls, text: str) -> MinFreeSpace:
        """``2GiB``, ``500MB``, ``1073741824`` or ``5%``; ``0`` turns the check off. Raises ValueError."""
        if match := _PERCENT_RE.match(text):
            percent = float(match.group(1))
            if not 0 <= percent < 100:
                raise ValueError(f"{text!r}: a percentage of free space to keep must be below 100%")
            return cls(fraction=percent / 100)
        match = _SIZE_RE.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a size or a percentage; use e.g. 2GiB, 500MB or 5%")
        value, unit = float(match.group(1)), (match.group(2) or "").lower()
        power = "bkmgt".index(unit[0]) if unit else 0
        base = 1024 if "i" in unit else 1000
        return cls(size=int(value * base**power))

    @property
    def disabled(self) -> bool:
        return (self.size or 0) == 0 and not self.fraction

    def bytes_for(self, total: int) -> int:
        """The minimum for a filesystem of ``total`` bytes."""
        if self.size is not None:
            return self.size
        wanted = int(total * (self.fraction or 0.0))
        return min(wanted, self.cap) if self.cap is not None else wanted

    def describe(self) -> str:
        if self.size is not None:
            return format_bytes(self.size)
        percent = f"{(self.fraction or 0) * 100:g}%"
        return f"{percent} of the filesystem, at most {format_bytes(self.cap)}" if self.cap else percent


@dataclass(frozen=True, slots=True)
class FilesystemSpace:
    """One filesystem at one moment."""

    role: str
    """What lives there: ``blob store``, ``database``, or ``blob store and database``."""
    path: str
    free: int
    total: int
    minimum: int
    holds_blobs: bool

    @property
    def low(self) -> bool:
        return self.free < self.minimum

    def to_json(self) -> dict[str, object]:
        return {
            "role": self.role,
            "path": self.path,
            "free_bytes": self.free,
            "total_bytes": self.total,
            "min_free_bytes": self.minimum,
            "low": self.low,
        }


@dataclass(frozen=True, slots=True)
class SpaceStatus:
    filesystems: tuple[FilesystemSpace, ...]

    @property
    def low(self) -> list[FilesystemSpace]:
        return [fs for fs in self.filesystems if fs.low]

    @property
    def blobs(self) -> FilesystemSpace | None:
        return next((fs for fs in self.filesystems if fs.holds_blobs), None)

    def reason(self) -> str | None:
        """Why the server is degraded, in one sentence; None when every filesystem is above its minimum."""
        low = self.low
        if not low:
            return None
        parts = [
            f"{format_bytes(fs.free)} free on the {fs.role} filesystem ({fs.path}), below the minimum of "
            f"{format_bytes(fs.minimum)}"
            for fs in low
        ]
        return f"storage low: {'; '.join(parts)}; uploads are refused until space is freed"

    def deficit(self, target_factor: float = 1.0) -> int:
        """Bytes to free on the blob store's filesystem to be ``target_factor`` times its minimum free."""
        blobs = self.blobs
        if blobs is None:
            return 0
        return max(0, int(blobs.minimum * target_factor) - blobs.free)


class StorageFull(Exception):
    """An upload may not proceed: it would take a filesystem below its minimum free space."""

    def __init__(self, filesystem: FilesystemSpace, incoming: int) -> None:
        self.filesystem = filesystem
        self.incoming = incoming
        free, minimum = format_bytes(filesystem.free), format_bytes(filesystem.minimum)
        if incoming:
            why = f"this upload needs {format_bytes(incoming)} more, but the server keeps at least {minimum} free"
        elif filesystem.low:
            why = f"below the {minimum} the server keeps free"
        else:
            why = f"and this upload would take it below the {minimum} the server keeps free"
        super().__init__(
            f"Cargohold's storage is full: {free} free on the {filesystem.role} filesystem, {why} "
            "(--min-free-space); uploads are refused until builds expire or an admin frees space"
        )


@dataclass(frozen=True, slots=True)
class _Watched:
    role: str
    path: Path
    holds_blobs: bool


class SpaceGuard:
    """Measures the watched filesystems and admits uploads; thread-safe (uploads run on many threads)."""

    def __init__(self, minimum: MinFreeSpace, *, blobs: Path | None, database: Path | None) -> None:
        self.minimum = minimum
        self._watched = _group_by_device(blobs, database)
        self._lock = threading.Lock()
        self._claimed = 0
        self._last: SpaceStatus | None = None

    @property
    def watching(self) -> bool:
        """Whether any filesystem is watched (an object store and a database server have none here)."""
        return bool(self._watched)

    @property
    def enabled(self) -> bool:
        """Whether uploads are checked: a minimum is set and there is a filesystem to measure."""
        return not self.minimum.disabled and self.watching

    def measure(self) -> SpaceStatus:
        """A fresh ``statvfs`` of every watched filesystem."""
        filesystems = []
        for watched in self._watched:
            stats = os.statvfs(watched.path)
            total = stats.f_blocks * stats.f_frsize
            filesystems.append(
                FilesystemSpace(
                    role=watched.role,
                    path=str(watched.path),
                    free=stats.f_bavail * stats.f_frsize,
                    total=total,
                    minimum=self.minimum.bytes_for(total),
                    holds_blobs=watched.holds_blobs,
                )
            )
        status = SpaceStatus(tuple(filesystems))
        self._last = status
        return status

    def check_every(self) -> int:
        """Bytes an upload may write between two checks: a quarter of the blob store's minimum, clamped."""
        last = self._last or self.measure()
        blobs = last.blobs
        minimum = blobs.minimum if blobs is not None else 0
        return max(MIN_CHECK_EVERY, min(MAX_CHECK_EVERY, minimum // 4))

    def admit(self, incoming: int) -> Claim:
        """Admit an upload request announcing ``incoming`` bytes (0: unknown), or raise :class:`StorageFull`.

        A request of unknown length claims :meth:`check_every` bytes ahead and claims more as it writes,
        so it can never take free space below the minimum between two measurements either.
        """
        if not self.enabled:
            return Claim.unchecked()
        streamed = incoming <= 0
        amount = self.check_every() if streamed else incoming
        with self._lock:
            self._check(self.measure(), amount, announced=incoming)
            self._claimed += amount
        return Claim(self, amount, streamed=streamed)

    def _check(self, status: SpaceStatus, extra: int, *, announced: int) -> None:
        for fs in status.filesystems:
            pending = self._claimed + extra if fs.holds_blobs else 0
            if fs.free - pending < fs.minimum:
                raise StorageFull(fs, announced)

    def _extend(self, extra: int) -> None:
        with self._lock:
            self._check(self.measure(), extra, announced=0)
            self._claimed += extra

    def _recheck(self) -> None:
        with self._lock:
            self._check(self.measure(), 0, announced=0)

    def _release(self, amount: int) -> None:
        if amount:
            with self._lock:
                self._claimed -= amount


class Claim:
    """One admitted upload request: bytes it may still write count against free space until they land."""

    def __init__(self, guard: SpaceGuard | None, amount: int, *, streamed: bool = False) -> None:
        self._guard = guard
        self._remaining = amount
        self._streamed = streamed
        self._every = guard.check_every() if guard is not None else 0
        self._since_check = 0

    @classmethod
    def unchecked(cls) -> Claim:
        """For servers without a minimum: never measures, never refuses."""
        return cls(None, 0)

    def writing(self, count: int) -> None:
        """Call before writing ``count`` bytes; raises :class:`StorageFull` if they may not be written.

        A stream of unknown length claims the next :meth:`SpaceGuard.check_every` bytes (measuring again) once
        its claim is used up. An announced upload re-measures every as many bytes, in case something else is
        filling the disk meanwhile.
        """
        guard = self._guard
        if guard is None:
            return
        if self._streamed and count > self._remaining:
            extra = max(self._every, count) - self._remaining
            guard._extend(extra)
            self._remaining += extra
        settled = min(count, self._remaining)
        self._remaining -= settled
        guard._release(settled)
        self._since_check += count
        if not self._streamed and self._since_check >= self._every:
            self._since_check = 0
            guard._recheck()

    def release(self) -> None:
        """The request is over: what it claimed and did not write no longer counts."""
        remaining, self._remaining = self._remaining, 0
        if self._guard is not None:
            self._guard._release(remaining)


def _group_by_device(blobs: Path | None, database: Path | None) -> tuple[_Watched, ...]:
    """One entry per filesystem: the blob store and the database share one when they share a device."""
    watched: list[_Watched] = []
    devices: dict[int, int] = {}
    for role, path in (("blob store", blobs), ("database", database)):
        if path is None or not path.is_dir():  # a database directory that does not exist yet: SQLite says so
            continue
        device = os.stat(path).st_dev
        if device in devices:
            index = devices[device]
            previous = watched[index]
            watched[index] = _Watched(
                f"{previous.role} and {role}", previous.path, previous.holds_blobs or role == "blob store"
            )
            continue
        devices[device] = len(watched)
        watched.append(_Watched(role, path, role == "blob store"))
    return tuple(watched)


class SpaceReserve:
    """A file of allocated blocks next to the SQLite database, deleted to give it room on a full disk.

    Its size follows what the database could need for one write transaction: twice the database file
    (a transaction rewrites at most every page once into the WAL), at least :data:`RESERVE_MIN`, at most
    :data:`RESERVE_MAX` (garbage collection keeps its WAL below 16 MiB) and half the minimum free space.
    A new registry therefore holds a mebibyte, a big one 32 MiB.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.parent / RESERVE_NAME
        self._lock = threading.Lock()
        self._warned = False

    def wanted(self, minimum: int) -> int:
        """The size to hold on a filesystem whose minimum free space is ``minimum`` (0: hold none)."""
        try:
            database_bytes = self.database.stat().st_size
        except FileNotFoundError:
            database_bytes = 0
        return min(RESERVE_MAX, minimum // 2, max(RESERVE_MIN, 2 * database_bytes))

    def held(self) -> int:
        """Bytes held right now."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def ensure(self, size: int) -> bool:
        """Hold at least ``size`` bytes (allocating real blocks); True if they are held afterwards."""
        if size <= 0:
            return False
        with self._lock:
            if self.held() >= size:
                return True
            partial = self.path.with_name(self.path.name + ".new")
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    _allocate(fd, size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(partial, self.path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    partial.unlink()
                if not self._warned:  # once: the next checks would say the same every few seconds
                    self._warned = True
                    log.warning("could not create the %s reserve file %s: %s", format_bytes(size), self.path, exc)
                return False
            self._warned = False
            log.info("holding %s of reserved space for the database in %s", format_bytes(size), self.path)
            return True

    def release(self) -> bool:
        """Delete the reserve; True if it existed (and its space is free now)."""
        with self._lock:
            held = self.held()
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            log.warning(
                "released %s of reserved space (%s) so the database can keep working on a full disk",
                format_bytes(held),
                self.path,
            )
            return True


def _allocate(fd: int, size: int) -> None:
    """Real blocks, not a sparse file: ``posix_fallocate``, or zeros where the filesystem cannot allocate."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    zeros = bytes(MiB)
    written = 0
    while written < size:
        written += os.write(fd, zeros[: min(MiB, size - written)])
