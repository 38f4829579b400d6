"""Charts as inline SVG, drawn on the server: no script, no chart library, nothing fetched.

Each chart is an ``<svg role="img">`` with a title and a text description for screen
readers; the page puts the numbers in a table beside it too. Colours come from CSS classes
(``ui.css``), so the charts follow the page's theme.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 640
HEIGHT = 200
# Room for the axis labels.
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 26


@dataclass(frozen=True, slots=True)
class Series:
    """One named row of values; ``css`` is the class that colours it."""

    label: str
    css: str
    values: Sequence[float | None]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value`` (> 0)."""
    if value <= 0:
        return 0.25
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    raise AssertionError("unreachable: 10 * power exceeds value")


def _number(value: float) -> str:
    """A tick label: no trailing zeros, thousands grouped."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _frame(
    chart_id: str,
    title: str,
    description: str,
    top_value: float,
    starts: Sequence[datetime.datetime],
    x_labels_every: int,
    unit: str,
) -> list[str]:
    """The svg element's opening, title, description, grid, y ticks and time labels."""
    plot_height = HEIGHT - TOP - BOTTOM
    parts = [
        # Inline in HTML, an svg element needs no namespace declaration (no URL on the page).
        f'<svg class="chart" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-labelledby="{chart_id}-title {chart_id}-desc">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>',
    ]
    for i in range(5):
        value = top_value * i / 4
        y = TOP + plot_height * (1 - i / 4)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_number(value))}{escape(unit) if i == 4 else ''}</text>"
        )
    step = (WIDTH - LEFT - RIGHT) / max(1, len(starts))
    for index in range(0, len(starts), x_labels_every):
        x = LEFT + step * index
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="start">'
            f"{starts[index]:%H:%M}</text>"
        )
    return parts


def stacked_bars(
    chart_id: str,
    title: str,
    starts: Sequence[datetime.datetime],
    series: Sequence[Series],
    *,
    x_labels_every: int,
    describe: Callable[[], str],
) -> Markup:
    """Bars per bucket, each stacked from ``series`` (values must be numbers >= 0)."""
    totals = [sum(s.values[i] or 0.0 for s in series) for i in range(len(starts))]
    top_value = 4 * nice_ceiling(max(totals, default=0.0) / 4)  # four round grid steps
    parts = _frame(chart_id, title, describe(), top_value, starts, x_labels_every, "/min")
    plot_height = HEIGHT - TOP - BOTTOM
    step = (WIDTH - LEFT - RIGHT) / max(1, len(starts))
    bar = max(1.0, step * 0.8)
    for index in range(len(starts)):
        base = 0.0
        for one in series:
            value = one.values[index] or 0.0
            if value <= 0:
                continue
            height = plot_height * value / top_value
            y = TOP + plot_height * (1 - (base + value) / top_value)
            parts.append(
                f'<rect class="{one.css}" x="{LEFT + step * index:.1f}" y="{y:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}"/>'
            )
            base += value
    parts.append("</svg>")
    # Every text in the parts went through escape(); the rest are numbers and our classes.
    return Markup("".join(parts))  # noqa: S704


def lines(
    chart_id: str,
    title: str,
    starts: Sequence[datetime.datetime],
    series: Sequence[Series],
    *,
    x_labels_every: int,
    unit: str,
    describe: Callable[[], str],
) -> Markup:
    """A line per series across the buckets; a bucket without a value breaks the line."""
    values = [v for s in series for v in s.values if v is not None]
    top_value = 4 * nice_ceiling(max(values, default=0.0) / 4)
    parts = _frame(chart_id, title, describe(), top_value, starts, x_labels_every, unit)
    plot_height = HEIGHT - TOP - BOTTOM
    step = (WIDTH - LEFT - RIGHT) / max(1, len(starts))
    for one in series:
        runs: list[list[str]] = [[]]
        for index, value in enumerate(one.values):
            if value is None:
                runs.append([])
                continue
            x = LEFT + step * (index + 0.5)
            y = TOP + plot_height * (1 - value / top_value)
            runs[-1].append(f"{x:.1f},{y:.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle class="{one.css}" cx="{cx}" cy="{cy}" r="2"/>')
            elif run:
                parts.append(f'<polyline class="{one.css}" points="{" ".join(run)}"/>')
    parts.append("</svg>")
    # Every text in the parts went through escape(); the rest are numbers and our classes.
    return Markup("".join(parts))  # noqa: S704
