"""How image transfers report what they are doing: rich bars for people, plain lines for CI, or nothing.

The library functions (:func:`~cargohold.images.save.save_image` and friends) only ever talk to a
:class:`Progress`; the CLI and the GitHub Actions choose the implementation. Why three: a terminal wants
live bars with bytes, speed and ETA; a CI log (``CI=true`` or no TTY) turns redrawn bars into thousands of
garbage lines, so it gets one line per step and per blob instead; ``quiet`` prints nothing at all (errors
are not progress: the caller still prints them).

Callbacks arrive from the copy's worker threads, so every implementation is thread-safe.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TextIO

from cargohold.clock import MonotonicClock, monotonic

if TYPE_CHECKING:  # rich is imported only when bars are drawn: CI and quiet runs skip its import cost
    from rich.console import Console
    from rich.progress import Progress as RichProgressBar
    from rich.progress import TaskID

    from cargohold.oci.descriptor import Descriptor

MODES = ("auto", "tty", "plain", "quiet")
PRESENT = ("skipped", "mounted")
"""How a blob "finished" when no byte of it moved: the destination had it, or mounted it from a sibling."""


def human_bytes(size: int | float | None) -> str:
    """``1.5 MB`` style (decimal units, like docker and skopeo print)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - loop always returns


def short_digest(digest: object) -> str:
    text = str(digest)
    algorithm, _, hexpart = text.partition(":")
    return f"{algorithm}:{hexpart[:12]}" if len(hexpart) > 12 else text


class Progress:
    """Quiet by default: the base class is the ``--progress quiet`` implementation.

    ``step`` announces a phase; ``transfer`` opens a byte counter for one phase (total may be unknown) and
    returns the callback handed to :func:`~cargohold.client.copy.copy_image`; ``blob`` is the copy's
    ``on_blob``; ``done`` closes the current transfer, ``abort`` closes it when the phase failed (so nothing
    claims "done" just before the error).

    The byte counter only ever receives bytes that really moved: a blob the other side already had
    (``skipped``, ``mounted``) is reported through ``blob`` and taken off the expected total instead.
    """

    def step(self, message: str) -> None:
        """A phase begins (``creating build``, ``pushing manifests``)."""

    def transfer(self, label: str, total: int | None) -> Callable[[int], object]:
        """Start counting bytes for ``label``; returns the byte-delta callback."""
        return _ignore

    def blob(self, descriptor: Descriptor, how: str) -> None:
        """One blob finished: ``uploaded``, ``downloaded``, ``mounted`` or ``skipped``."""

    def done(self) -> None:
        """The current transfer finished (bars are removed, totals printed)."""

    def abort(self) -> None:
        """The current transfer failed; the caller reports the error."""
        self.done()

    def close(self) -> None:
        """Release the terminal; safe to call more than once."""
        self.done()


def _ignore(_: int) -> None:
    return None


class PlainProgress(Progress):
    """One line per step and per blob, plus a total with the average speed: readable in CI logs."""

    def __init__(self, stream: TextIO | None = None, *, clock: MonotonicClock = monotonic) -> None:
        self.stream = stream or sys.stderr
        self._clock = clock
        self._lock = threading.Lock()
        self._label: str | None = None
        self._total: int | None = None
        self._moved = 0
        self._present = 0
        self._started = 0.0

    def _line(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def step(self, message: str) -> None:
        self._line(message)

    def transfer(self, label: str, total: int | None) -> Callable[[int], object]:
        self.done()
        self._label, self._total, self._moved, self._present = label, total, 0, 0
        self._started = self._clock()
        self._line(f"{label}: {human_bytes(total)}" if total is not None else f"{label}…")

        def advance(delta: int) -> None:
            with self._lock:
                self._moved += delta

        return advance

    def blob(self, descriptor: Descriptor, how: str) -> None:
        if how in PRESENT:
            with self._lock:
                self._present += descriptor.size
        self._line(f"  {how:<10} {short_digest(descriptor.digest)}  {human_bytes(descriptor.size)}")

    def done(self) -> None:
        if self._label is None:
            return
        elapsed = max(self._clock() - self._started, 1e-6)
        present = f", {human_bytes(self._present)} already there" if self._present else ""
        self._line(
            f"{self._label}: done, {human_bytes(self._moved)} in {elapsed:.1f}s "
            f"({human_bytes(self._moved / elapsed)}/s){present}"
        )
        self._label = None

    def abort(self) -> None:
        if self._label is None:
            return
        self._line(f"{self._label}: stopped after {human_bytes(self._moved)}")
        self._label = None


class RichProgress(Progress):
    """Live bars (bytes, speed, ETA) on a terminal; steps are printed above the bar."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self._bar: RichProgressBar | None = None
        self._task: TaskID | None = None

    def step(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def transfer(self, label: str, total: int | None) -> Callable[[int], object]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgressBar

        self.done()
        bar = RichProgressBar(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        bar.start()
        task = bar.add_task(label, total=total)
        self._bar, self._task = bar, task

        def advance(delta: int) -> None:
            bar.update(task, advance=delta)

        return advance

    def blob(self, descriptor: Descriptor, how: str) -> None:
        if how in PRESENT and self._bar is not None and self._task is not None:
            # Not transferred: shrink the expected total so the bar ends at what really moved.
            total = next((task.total for task in self._bar.tasks if task.id == self._task), None)
            if total is not None:
                self._bar.update(self._task, total=max(0, total - descriptor.size))
            self._bar.console.print(f"  {how} {short_digest(descriptor.digest)}", markup=False, highlight=False)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def make_progress(
    mode: str = "auto", *, env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> Progress:
    """The implementation for ``--progress MODE``: ``auto`` means bars on a TTY outside CI, else plain."""
    env = os.environ if env is None else env
    stream = stream or sys.stderr
    if mode not in MODES:
        raise ValueError(f"--progress must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "quiet":
        return Progress()
    if mode == "plain":
        return PlainProgress(stream)
    if mode == "tty":
        from rich.console import Console

        return RichProgress(Console(file=stream, force_terminal=True, highlight=False))
    in_ci = env.get("CI", "").lower() in ("true", "1", "yes")
    if not in_ci and stream.isatty():
        from rich.console import Console

        return RichProgress(Console(file=stream, highlight=False))
    return PlainProgress(stream)
