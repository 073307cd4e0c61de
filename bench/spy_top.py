#!/usr/bin/env python3
"""The frames that take the most time in py-spy's collapsed stacks (``py-spy record --format raw``).

Usage: ``python bench/spy_top.py STACKS.txt [N] [FILTER]``: inclusive share of the N heaviest frames (a frame
counts once per sample however deep it recurs), optionally only frames whose text contains FILTER.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def main() -> int:
    path = Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    wanted = sys.argv[3] if len(sys.argv) > 3 else ""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        for frame in set(stack.split(";")):
            if wanted in frame:
                inclusive[frame] += count
    for frame, count in inclusive.most_common(top):
        print(f"{100 * count / total:5.1f}%  {frame[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
