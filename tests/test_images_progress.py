"""Progress displays count only the bytes that moved: a blob the other side had shrinks the expected total."""

from __future__ import annotations

import io

from rich.console import Console

from cargohold.images.progress import PlainProgress, RichProgress
from cargohold.oci.digest import Digest
from cargohold.oci.layout import Descriptor


def _blob(size: int, seed: str) -> Descriptor:
    return Descriptor("application/vnd.oci.image.layer.v1.tar", Digest.of(seed.encode()), size)


def test_the_bar_ends_at_what_moved_when_blobs_are_skipped() -> None:
    progress = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
    advance = progress.transfer("saving b1", 100)
    advance(30)
    progress.blob(_blob(30, "a"), "uploaded")
    progress.blob(_blob(70, "b"), "skipped")
    assert progress._bar is not None
    (task,) = progress._bar.tasks
    assert (task.completed, task.total) == (30, 30)
    progress.done()


def test_plain_lines_say_what_moved_and_what_was_there() -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream)
    advance = progress.transfer("pulling b1", 100)
    advance(30)
    progress.blob(_blob(30, "a"), "downloaded")
    progress.blob(_blob(70, "b"), "skipped")
    progress.done()
    lines = stream.getvalue().splitlines()
    assert lines[1].split()[0] == "downloaded" and lines[2].split()[0] == "skipped"
    assert ": done, 30 B in " in lines[-1] and lines[-1].endswith(", 70 B already there")
    failing = PlainProgress(stream := io.StringIO())
    failing.transfer("pulling b2", 100)
    failing.abort()
    assert stream.getvalue().splitlines()[-1] == "pulling b2: stopped after 0 B"
