"""Drawing without side effects: figures that never touch pyplot or matplotlib's global state.

The original set a global dark style when its plotter was built (spec 8), which changed every plot
of the caller's own session. Here each figure is a ``matplotlib.figure.Figure`` bound to its own Agg
canvas: no backend switch, no ``rcParams`` change, safe in a Ray actor or a notebook alike. PNGs are
written atomically, so a viewer never sees half an image.

Also here: turning metric rows (or the seed's ``loss_history`` + dict of lists) into per-metric
``(steps, values)`` series, because every plot puts the training step on the x axis (spec B19).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orchestrator.monitoring import atomic

DPI = 120
"""Resolution of saved PNGs: sharp on screen, small and quick to render."""

NON_METRIC_KEYS = frozenset({"step", "attempt", "timestamp", "nonfinite"})
"""Row keys that describe a row rather than measure training; never plotted."""

Series = dict[str, tuple[list[float], list[float]]]
"""Metric name -> (steps, values), finite points only, in step order."""


def new_figure(width: float, height: float) -> Figure:
    """A blank figure of ``width`` x ``height`` inches on a private Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style_axes(ax: Axes, title: str, xlabel: str = "step", ylabel: str = "", grid: bool = True) -> None:
    """The house look of one panel: title, labels and (except on images) a light dashed grid."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if grid:
        ax.grid(True, alpha=0.3, linestyle="--")


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically as PNG; raises ``OSError`` when the disk refuses."""
    atomic.write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    return path


def series_from_rows(rows: Sequence[Mapping[str, Any]]) -> Series:
    """Per-metric series from MetricsLogger rows (x = each row's ``step``)."""
    out: Series = {}
    for row in sorted(rows, key=lambda r: r["step"]):
        for key, value in row.items():
            if key not in NON_METRIC_KEYS and _finite_number(value):
                xs, ys = out.setdefault(key, ([], []))
                xs.append(float(row["step"]))
                ys.append(float(value))
    return out


def series_from_history(step: int, loss_history: Sequence[float],
                        metrics: Mapping[str, Sequence[float]] | None) -> Series:
    """Series from the seed's lists, each assumed evenly spaced over steps ``(0, step]``.

    The seed form carries no steps; spreading every list over the same step range keeps series of
    different cadence (per-step loss, per-evaluation perplexity) on one comparable x axis.
    """
    out: Series = {}
    for key, values in [("loss", loss_history), *(metrics or {}).items()]:
        n = len(values)
        points = [(step * (i + 1) / n, float(v)) for i, v in enumerate(values) if _finite_number(v)]
        if points:
            out[key] = ([p[0] for p in points], [p[1] for p in points])
    return out


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
