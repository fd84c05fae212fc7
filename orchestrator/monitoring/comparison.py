"""One figure comparing finished runs: loss, learning rate, perplexity against step, and final loss.

Each run is ``{"name", "rows"}`` (MetricsLogger rows, the normal case) or the seed's
``{"name", "loss_history", "metrics"}`` (optionally with ``"step"``, the last step the lists reach).
Validation curves are preferred where a run has them, because they are what the runs are judged on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from orchestrator.monitoring.figures import Series, series_from_history, series_from_rows, style_axes


def experiment_series(experiment: Mapping[str, Any]) -> Series:
    """The per-metric series of one run, from its rows or from the seed's lists."""
    if experiment.get("rows") is not None:
        return series_from_rows(experiment["rows"])
    history = list(experiment.get("loss_history") or [])
    step = int(experiment.get("step") or len(history))
    return series_from_history(step, history, experiment.get("metrics"))


def draw_comparison(fig: Figure, experiments: Sequence[Mapping[str, Any]]) -> None:
    """Fill ``fig`` with a 2x2 comparison of ``experiments``."""
    if not experiments:
        raise ValueError("no experiments to compare")
    fig.set_size_inches(14, 10)
    (loss_ax, lr_ax), (ppl_ax, bar_ax) = fig.subplots(2, 2)
    finals: list[tuple[str, float, str]] = []
    for index, experiment in enumerate(experiments):
        name = str(experiment.get("name", f"run {index + 1}"))
        series = experiment_series(experiment)
        color = f"C{index % 10}"
        _plot(loss_ax, series, "loss", name, color, "-")
        _plot(loss_ax, series, "val_loss", f"{name} (val)", color, "--")
        _plot(lr_ax, series, "learning_rate", name, color, "-")
        ppl_key = "val_perplexity" if "val_perplexity" in series else "perplexity"
        _plot(ppl_ax, series, ppl_key, name, color, "-")
        final_key = "val_loss" if "val_loss" in series else "loss"
        if final_key in series:
            finals.append((name, series[final_key][1][-1], color))
    if lr_ax.has_data() and all(y > 0 for line in lr_ax.get_lines() for y in line.get_ydata()):
        lr_ax.set_yscale("log")
    for ax, title in ((loss_ax, "Loss"), (lr_ax, "Learning rate"), (ppl_ax, "Perplexity")):
        style_axes(ax, title)
        if ax.has_data():
            ax.legend(fontsize=8)
    bar_ax.bar(range(len(finals)), [f[1] for f in finals], color=[f[2] for f in finals])
    bar_ax.set_xticks(range(len(finals)), [f[0] for f in finals], rotation=20, ha="right")
    style_axes(bar_ax, "Final loss (validation where logged)", xlabel="")
    fig.suptitle("Experiment comparison", fontweight="bold")


def _plot(ax: Any, series: Series, key: str, label: str, color: str, linestyle: str) -> None:
    if key in series:
        xs, ys = series[key]
        ax.plot(xs, ys, label=label, color=color, linestyle=linestyle)
