"""The comparison figures of a sweep summary: validation and training curves, best loss bars, wave ratio.

Each figure is drawn on its own Agg canvas (``monitoring.figures``), never through pyplot, so
building a summary inside a long-lived process (a notebook, the sweep driver) changes no global
matplotlib state. Runs of one ablation share a colour; seeds differ by line style.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from orchestrator.monitoring.figures import new_figure, save_png, series_from_rows, style_axes

SMOOTHING_WINDOW_MAX = 100
"""Longest moving-average window of the training-loss curves (the seed's window: len/10, at most 100)."""

_LINE_STYLES = ("-", "--", ":", "-.")

PlotRun = Mapping[str, Any]
"""One run as the plots see it: ``name``, ``ablation``, ``seed`` and ``rows`` (resolved metric rows)."""


def write_summary_plots(runs: Sequence[PlotRun], ablations: Sequence[Mapping[str, Any]],
                        plot_dir: Path) -> dict[str, Path]:
    """Draw every figure into ``plot_dir``; returns figure name -> PNG path (raises on a failed write)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    styles = _styles(runs)
    drawers: dict[str, Callable[[Figure], None]] = {
        "validation_curves": lambda fig: _draw_curves(fig, runs, styles, "val_loss", "Validation loss", 1),
        "training_curves": lambda fig: _draw_curves(fig, runs, styles, "loss", "Training loss (moving average)",
                                                    None),
        "best_val_loss": lambda fig: _draw_best_bars(fig, ablations),
        "wave_ratio": lambda fig: _draw_curves(fig, runs, styles, "wave_ratio", "Wave ratio", 1),
    }
    paths = {}
    for name, draw in drawers.items():
        fig = new_figure(10, 6)
        draw(fig)
        paths[name] = save_png(fig, plot_dir / f"{name}.png")
    return paths


def write_learning_curves(runs: Sequence[PlotRun], path: Path) -> Path:
    """Training CE (moving average) and validation loss of every run on one axes, for a head-to-head.

    The training curve is the cross-entropy part of the loss (``ce_loss``), not the total: a QFE run's
    total adds its coherence term (spec B13), and validation loss is cross-entropy too. A run's label
    is its ``label`` when given, else its ablation.
    """
    fig = new_figure(10, 6)
    ax = fig.subplots()
    styles = _styles(runs)
    for run in runs:
        series = series_from_rows(run["rows"])
        colour, label = styles[run["name"]][0], run.get("label", run["ablation"])
        if "ce_loss" in series:
            xs, ys = series["ce_loss"]
            size = min(SMOOTHING_WINDOW_MAX, max(1, len(ys) // 10))
            ax.plot(xs[size - 1:], _moving_average(ys, size), color=colour, alpha=0.8,
                    label=f"{label}: training loss (moving average)")
        if "val_loss" in series:
            ax.plot(*series["val_loss"], color=colour, linestyle="--", marker="o", markersize=4,
                    label=f"{label}: validation loss")
    if ax.has_data():
        ax.legend(fontsize=8)
    style_axes(ax, "Learning curves (cross-entropy)", ylabel="loss")
    return save_png(fig, path)


def _styles(runs: Sequence[PlotRun]) -> dict[str, tuple[str, str]]:
    """Run name -> (colour, line style): one colour per ablation, one style per seed of it."""
    colours: dict[str, str] = {}
    seen: dict[str, int] = {}
    styles = {}
    for run in runs:
        colour = colours.setdefault(run["ablation"], f"C{len(colours) % 10}")
        index = seen[run["ablation"]] = seen.get(run["ablation"], -1) + 1
        styles[run["name"]] = (colour, _LINE_STYLES[index % len(_LINE_STYLES)])
    return styles


def _draw_curves(fig: Figure, runs: Sequence[PlotRun], styles: Mapping[str, tuple[str, str]], key: str,
                 title: str, window: int | None) -> None:
    """``key`` against the step for every run that logged it; ``window=None`` smooths as the seed did."""
    ax = fig.subplots()
    for run in runs:
        series = series_from_rows(run["rows"]).get(key)
        if not series:
            continue
        xs, ys = series
        size = window or min(SMOOTHING_WINDOW_MAX, max(1, len(ys) // 10))
        colour, style = styles[run["name"]]
        ax.plot(xs[size - 1:], _moving_average(ys, size), color=colour, linestyle=style,
                marker="o" if size == 1 and len(xs) < 40 else None, markersize=3,
                label=f"{run['ablation']} (seed {run['seed']})")
    if ax.has_data():
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
    style_axes(ax, title, ylabel=key)


def _moving_average(values: Sequence[float], size: int) -> list[float]:
    total, out = 0.0, []
    for i, value in enumerate(values):
        total += value
        if i >= size:
            total -= values[i - size]
        if i >= size - 1:
            out.append(total / size)
    return out


def _draw_best_bars(fig: Figure, ablations: Sequence[Mapping[str, Any]]) -> None:
    """Mean best validation loss per ablation, the spread over seeds as error bars, best at the top."""
    ax = fig.subplots()
    scored = [a for a in ablations if _finite(a["best_val_loss_mean"])]
    scored.sort(key=lambda a: a["best_val_loss_mean"], reverse=True)
    means = [a["best_val_loss_mean"] for a in scored]
    spreads = [a["best_val_loss_std"] if _finite(a["best_val_loss_std"]) else 0.0 for a in scored]
    ax.barh(range(len(scored)), means, xerr=spreads, color=[f"C{i % 10}" for i in range(len(scored))],
            capsize=4)
    ax.set_yticks(range(len(scored)), [a["ablation"] for a in scored])
    for i, mean in enumerate(means):
        ax.annotate(f"{mean:.4f}", (mean, i), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)
    if means:
        low, high = min(means), max(m + s for m, s in zip(means, spreads, strict=True))
        pad = max((high - low) * 0.3, 0.01)
        ax.set_xlim(max(0.0, low - pad), high + pad)
    missing = [a["ablation"] for a in ablations if not _finite(a["best_val_loss_mean"])]
    if missing:
        ax.set_title(f"no validation loss: {', '.join(missing)}", fontsize=8, loc="right")
    style_axes(ax, "Best validation loss (mean over seeds, bars = std)", xlabel="validation loss")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
