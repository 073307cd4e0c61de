"""Bar charts drawn on the server as SVG geometry (no script, no inline style: the CSP allows neither)."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 600
HEIGHT = 200
MARGIN = 24


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value_text: str


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    bars: list[Bar]
    width: int = WIDTH
    height: int = HEIGHT
    baseline: float = HEIGHT - MARGIN


def bar_chart(title: str, points: list[tuple[str, float]], value_text: list[str]) -> Chart:
    """Bars for ``points`` (label, value) scaled to the tallest; ``value_text`` labels each for people."""
    if not points:
        return Chart(title, [])
    top = max(value for _, value in points) or 1.0
    slot = (WIDTH - 2 * MARGIN) / len(points)
    usable = HEIGHT - 2 * MARGIN
    bars = []
    for index, ((label, value), text) in enumerate(zip(points, value_text, strict=True)):
        height = max(0.0, value / top * usable)
        bars.append(
            Bar(
                x=round(MARGIN + index * slot + slot * 0.1, 1),
                y=round(HEIGHT - MARGIN - height, 1),
                width=round(slot * 0.8, 1),
                height=round(height, 1),
                label=label,
                value_text=text,
            )
        )
    return Chart(title, bars)
