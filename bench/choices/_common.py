"""Shared helpers of the library-choice benchmarks: package footprint and licence, tables, the test fixtures.

The benchmarks reuse the test suite's private servers (tests/pgcluster.py, tests/s3server.py) so that what is
measured is what the tests will run against.
"""

from __future__ import annotations

import re
import resource
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1 << 20


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads included (Rust and C worker threads too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        names.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    return names


def _closure(names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        pending += _requirement_names(dist)
    return seen


def _installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    return sum(file.size or 0 for file in dist.files or [])


@dataclass(frozen=True)
class Footprint:
    version: str
    licence: str
    own_mib: float
    """Installed size of the package itself."""
    added_mib: float
    """Installed size of the package plus the dependencies Cargohold does not already have."""
    added_packages: tuple[str, ...]


def footprint(name: str, *companions: str) -> Footprint:
    """Version, licence and installed size of ``name`` (and of what it would add to a Cargohold install).

    ``companions`` are distributions installed with it through an extra (``psycopg[binary]`` brings
    ``psycopg-binary``); their size counts as the package's own.
    """
    dist = metadata.distribution(name)
    already = _closure(_requirement_names(metadata.distribution("cargohold")))
    added = sorted(_closure([name, *companions]) - already)
    licence = dist.metadata.get("License-Expression") or ""
    if not licence:
        classifiers = [c.rsplit("::", 1)[-1].strip() for c in dist.metadata.get_all("Classifier") or []]
        licence = next((c for c in classifiers if "License" in c), dist.metadata.get("License") or "?")
    licence = licence.splitlines()[0].replace("GNU Library or Lesser General Public License (LGPL)", "LGPL")[:40]
    return Footprint(
        version=dist.version,
        licence=licence,
        own_mib=sum(_installed_bytes(package) for package in (name, *companions)) / MiB,
        added_mib=sum(_installed_bytes(package) for package in added) / MiB,
        added_packages=tuple(added),
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pasteable into bench/choices/README.md)."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
