"""Inline SVG charts for the status page, drawn by the backend (no JavaScript).

Each function takes points of a :meth:`History.view
<inginious_tx.backend.timeseries.History.view>` (None where there is no
data) and returns an ``<svg>`` element as text.  Every label may come from a
peer (environment, agent, result names): all of them go through
:func:`html.escape`; numbers are formatted here.
"""

from __future__ import annotations

import math
from html import escape
from typing import List, Optional, Sequence, Tuple

__all__ = [
    "line_chart",
    "heatmap",
    "legend",
    "PALETTE",
    "RESULT_COLORS",
    "nice_ceiling",
    "nice_step",
    "format_number",
    "format_duration",
]

#: Colours of series in order (colour-blind friendly, Okabe-Ito then greys).
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000", "#999999")
#: Fixed colours of result types, so that a colour means the same everywhere.
RESULT_COLORS = {
    "success": "#009e73",
    "failed": "#e69f00",
    "error": "#d55e00",
    "crash": "#a50026",
    "timeout": "#cc79a7",
    "overflow": "#56b4e9",
    "killed": "#999999",
    "other": "#f0e442",
    "dropped": "#0072b2",
}

WIDTH, HEIGHT = 620, 210
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 10, 26, 22

Line = Tuple[str, str, Sequence[Optional[float]]]
#: Grid lines of a logarithmic time axis, in seconds.
_LOG_TICKS = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 36000.0)


def format_number(value: Optional[float], unit: str = "") -> str:
    """Short human text for an axis or legend value."""
    if value is None:
        return "-"
    if unit == "s":
        if value >= 3600:
            return f"{value / 3600:.3g} h"
        if value >= 60:
            return f"{value / 60:.3g} min"
        if value < 1:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def format_duration(value: Optional[float]) -> str:
    """A duration from the histograms: what falls in their first bucket is "<= 10 ms"
    (the buckets cannot tell more; an estimate inside it would be made up)."""
    if value is not None and value <= _LOG_TICKS[0]:
        return "\u2264 " + format_number(_LOG_TICKS[0], "s")
    return format_number(value, "s")


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= ``value`` (> 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= value * (1 - 1e-9):
            return m * power
    return 10 * power


def _x(i: int, n: int) -> float:
    return _LEFT + (i + 0.5) * (WIDTH - _LEFT - _RIGHT) / max(n, 1)


def _frame(title: str, seconds: float, n: int, ticks: List[Tuple[float, str]]) -> List[str]:
    """The title, the y grid with its labels and the time axis."""
    bottom = HEIGHT - _BOTTOM
    parts = [
        f'<text x="{_LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{_LEFT}" y1="{bottom}" x2="{WIDTH - _RIGHT}" y2="{bottom}" stroke="#888"/>',
    ]
    for y, label in ticks:
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{escape(label)}</text>')
    minutes = seconds / 60
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = _LEFT + frac * (WIDTH - _LEFT - _RIGHT)
        ago = minutes * (1 - frac)
        label = "now" if frac == 1.0 else (f"-{ago:.0f} min" if minutes >= 4 else f"-{ago * 60:.0f} s")
        anchor = "end" if frac == 1.0 else ("start" if frac == 0.0 else "middle")
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 6}" font-size="10" text-anchor="{anchor}">{label}</text>')
    return parts


def _open(title: str, height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" font-family="sans-serif">'
        f"<title>{escape(title)}</title>"
    )


def nice_step(value: float) -> int:
    """The smallest of 1, 2, 5 times a power of ten that is >= ``value``, at least 1 (whole ticks)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * power >= value * (1 - 1e-9):
            return int(m * power)
    return int(10 * power)


def line_chart(
    title: str,
    lines: Sequence[Line],
    seconds: float,
    unit: str = "",
    stacked: bool = False,
    log: bool = False,
    integer: bool = False,
) -> str:
    """Lines (or stacked areas) over time; ``lines``: (label, colour, points).

    ``log``: a logarithmic y axis (for durations from milliseconds to hours);
    its floor, 10 ms, is the first bucket of the histograms the durations
    come from, so it reads "<= 10 ms" and holds every value below.
    ``integer``: counts (jobs, slots), so the grid lines fall on whole numbers.
    """
    n = max((len(points) for _, _, points in lines), default=0)
    bottom, top = HEIGHT - _BOTTOM, _TOP
    series = [(label, color, list(points)) for label, color, points in lines]
    if stacked:
        running = [0.0] * n
        stacks = []
        for label, color, points in series:
            lower = list(running)
            for i, v in enumerate(points):
                if v is not None:
                    running[i] += v
            stacks.append((label, color, lower, list(running), points))
        highest = max(running, default=0.0)
    else:
        highest = max((v for _, _, pts in series for v in pts if v is not None), default=0.0)
    if log:
        # durations: 10 ms to the first of 1 s, 10 s, 1 min, 10 min, 1 h, 10 h above the data
        steps = [t for t in _LOG_TICKS if t <= 1] + [t for t in _LOG_TICKS if t > 1 and t < highest * 1.0001]
        if highest > 1:
            steps.append(next((t for t in _LOG_TICKS if t >= highest), _LOG_TICKS[-1]))
        low, high = math.log10(steps[0]), math.log10(steps[-1])

        def y_of(v: float) -> float:
            v = min(max(v, steps[0]), steps[-1])
            return bottom - (math.log10(v) - low) / (high - low) * (bottom - top)

        ticks = [(y_of(t), ("\u2264 " if t == steps[0] else "") + format_number(t, unit)) for t in steps]
    else:
        if integer:
            step = nice_step(highest / 4)
            ymax = 4.0 * step
        else:
            ymax = nice_ceiling(highest) if highest > 0 else 1.0

        def y_of(v: float) -> float:
            return bottom - v / ymax * (bottom - top)

        ticks = [(y_of(ymax * k / 4), format_number(ymax * k / 4, unit)) for k in range(5)]
    parts = [_open(title)]
    parts += _frame(title, seconds, n, ticks)
    if stacked:
        for label, color, lower, upper, points in stacks:
            for segment in _segments(points):
                up = " ".join(f"{_x(i, n):.1f},{y_of(upper[i]):.1f}" for i in segment)
                down = " ".join(f"{_x(i, n):.1f},{y_of(lower[i]):.1f}" for i in reversed(segment))
                parts.append(
                    f'<polygon points="{up} {down}" fill="{color}" fill-opacity="0.8" stroke="{color}">'
                    f"<title>{escape(label)}</title></polygon>"
                )
    else:
        for label, color, points in series:
            for segment in _segments(points):
                if len(segment) == 1:
                    i = segment[0]
                    parts.append(
                        f'<circle cx="{_x(i, n):.1f}" cy="{y_of(points[i]):.1f}" r="2" fill="{color}">'  # type: ignore[arg-type]
                        f"<title>{escape(label)}</title></circle>"
                    )
                    continue
                coords = " ".join(f"{_x(i, n):.1f},{y_of(points[i]):.1f}" for i in segment)  # type: ignore[arg-type]
                parts.append(
                    f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6">'
                    f"<title>{escape(label)}</title></polyline>"
                )
    if not any(v is not None for _, _, pts in series for v in pts):
        parts.append(
            f'<text x="{(WIDTH + _LEFT) / 2:.0f}" y="{(top + bottom) / 2:.0f}" font-size="12" fill="#888" '
            'text-anchor="middle">no data yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _segments(points: Sequence[Optional[float]]) -> List[List[int]]:
    """Runs of consecutive indices with a value."""
    runs: List[List[int]] = []
    current: List[int] = []
    for i, v in enumerate(points):
        if v is None:
            if current:
                runs.append(current)
                current = []
        else:
            current.append(i)
    if current:
        runs.append(current)
    return runs


#: Fill of a heat-map cell by busy fraction (0, up to 25, 50, 75, 100 %).
_HEAT = ("#eef3f8", "#c6dbef", "#6baed6", "#2171b5", "#08306b")
_HEAT_LABELS = ("idle", "\u2264 25 % busy", "\u2264 50 % busy", "\u2264 75 % busy", "\u2264 100 % busy")


def _heat(busy: float, slots: int) -> int:
    if busy <= 0 or slots <= 0:
        return 0
    return min(4, 1 + int(4 * min(busy, slots) / slots - 1e-9))


def heatmap(title: str, rows: Sequence[Tuple[str, int, Sequence[Optional[float]]]], seconds: float) -> str:
    """One row per agent, coloured by its busy slots over its slots (None: absent)."""
    row_h = 12
    label_w = 150
    strips_end = _TOP + max(1, len(rows)) * row_h
    height = strips_end + 40
    n = max((len(points) for _, _, points in rows), default=1)
    cell_w = (WIDTH - label_w - _RIGHT) / n
    parts = [
        _open(title, height),
        f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for r, (name, slots, points) in enumerate(rows):
        y = _TOP + r * row_h
        short = name if len(name) <= 22 else name[:21] + "\u2026"
        parts.append(
            f'<text x="{label_w - 4}" y="{y + row_h - 2}" font-size="10" text-anchor="end">{escape(short)}'
            f"<title>{escape(name)} ({slots} slots)</title></text>"
        )
        i = 0
        while i < n:
            v = points[i] if i < len(points) else None
            if v is None:
                i += 1
                continue
            level = _heat(v, slots)
            j = i + 1
            while j < n and j < len(points) and points[j] is not None and _heat(points[j], slots) == level:  # type: ignore[arg-type]
                j += 1
            parts.append(
                f'<rect x="{label_w + i * cell_w:.1f}" y="{y}" width="{(j - i) * cell_w:.1f}" '
                f'height="{row_h - 2}" fill="{_HEAT[level]}"/>'
            )
            i = j
    if not rows:
        parts.append(f'<text x="{label_w}" y="{_TOP + 10}" font-size="12" fill="#888">no agent yet</text>')
    # the time axis right under the strips, then the legend on a line of its own below it
    minutes = seconds / 60
    ago = f"-{minutes:.0f} min" if minutes >= 4 else f"-{seconds:.0f} s"
    parts.append(
        f'<text x="{label_w}" y="{strips_end + 10}" font-size="10">{ago}</text>'
        f'<text x="{WIDTH - _RIGHT}" y="{strips_end + 10}" font-size="10" text-anchor="end">now</text>'
    )
    base = height - 14
    x = float(label_w)
    for fill, text in zip(_HEAT, _HEAT_LABELS, strict=True):
        parts.append(f'<rect x="{x:.0f}" y="{base}" width="10" height="10" fill="{fill}" stroke="#aaa"/>')
        parts.append(f'<text x="{x + 14:.0f}" y="{base + 9}" font-size="10">{text}</text>')
        x += 14 + 6 * len(text) + 14  # about 6 px a character at 10 px
    parts.append("</svg>")
    return "".join(parts)


def legend(items: Sequence[Tuple[str, str, str]]) -> str:
    """An HTML legend: (label, colour, value text) per item, all escaped."""
    cells = "".join(
        f'<li><svg width="10" height="10"><rect width="10" height="10" fill="{escape(color)}"/></svg> '
        f"{escape(label)}: <b>{escape(value)}</b></li>"
        for label, color, value in items
    )
    return f'<ul class="legend">{cells}</ul>'
