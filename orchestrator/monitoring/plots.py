"""``VisualizationManager``: the seed's plots of one run, drawn with the step on every x axis.

Files in ``visualizations/``: ``training_dynamics_step_<N>.png`` and, for wave models,
``frequencies_``/``phases_``/``harmonics_``/``wave_packets_step_<N>.png`` (+ ``attention_temps_``
when the model learns attention temperatures), and ``experiment_comparison.png``. A plot that fails
for any reason is a warning, never an exception: a picture must not stop training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from orchestrator.monitoring import atomic, model_plots
from orchestrator.monitoring.cadence import save_step
from orchestrator.monitoring.comparison import draw_comparison
from orchestrator.monitoring.figures import (
    Series,
    new_figure,
    save_png,
    series_from_history,
    series_from_rows,
    style_axes,
)

log = logging.getLogger(__name__)

PANEL_GROUPS = {"loss": ("loss", "val_loss"), "perplexity": ("perplexity", "val_perplexity")}
"""Metrics drawn together in one panel so train and validation curves can be compared."""


class VisualizationManager:
    """Renders the plots of one run into ``viz_dir`` every ``viz_interval`` steps."""

    def __init__(self, viz_dir: Path | str, viz_interval: int = 1000):
        if not isinstance(viz_interval, int) or viz_interval < 1:
            raise ValueError(f"viz_interval={viz_interval!r} must be an integer >= 1")
        self.viz_dir = Path(viz_dir)
        self.viz_interval = viz_interval
        self.viz_dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(self.viz_dir)

    def should_visualize(self, step: int) -> bool:
        """Whether ``step`` is a plotting step (never step 0: there is nothing to show yet)."""
        return save_step(step, self.viz_interval)

    def generate_training_plots(
        self,
        step: int,
        history: Sequence[Mapping[str, Any]] | Sequence[float],
        metrics: Mapping[str, Sequence[float]] | None = None,
    ) -> Path | None:
        """Draw every logged metric against the step; return the PNG path or ``None`` on failure.

        ``history`` is either MetricsLogger rows (dicts with ``step``) or, as in the seed, the loss
        list with ``metrics`` a dict of lists (then spread evenly over steps up to ``step``).
        """
        def draw(fig: Figure) -> None:
            rows = list(history)
            if rows and isinstance(rows[0], Mapping):
                series = series_from_rows(rows)
            else:
                series = series_from_history(step, rows, metrics)
            _draw_training(fig, step, series)

        return self._render(f"training_dynamics_step_{step}.png", draw, size=None)

    def generate_model_plots(self, step: int, model: Any) -> list[Path]:
        """Draw the embedding spectrum of a wave model; ``[]`` (with a note) for other models."""
        try:
            tables = model_plots.wave_tables(model)
            temps = model_plots.attention_temperatures(model)
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            log.warning("model plots at step %d failed reading the model (%s: %s)",
                        step, type(exc).__name__, exc)
            return []
        if tables is None:
            name = type(getattr(model, "module", model)).__name__
            log.info("%s has no wave embedding; model plots skipped", name)
            return []
        jobs: list[tuple[str, Callable[[Figure], None], tuple[float, float]]] = [
            ("frequencies", lambda fig: model_plots.draw_frequencies(fig, tables), (14, 5)),
            ("phases", lambda fig: model_plots.draw_phases(fig, tables), (14, 5)),
            ("harmonics", lambda fig: model_plots.draw_harmonics(fig, tables), (14, 5)),
            ("wave_packets", lambda fig: model_plots.draw_wave_packets(fig, tables), (15, 8)),
        ]
        if temps:
            num_waves = tables["base_freqs"].shape[1]
            jobs.append(("attention_temps",
                         lambda fig: model_plots.draw_attention_temperatures(fig, temps, num_waves), (8, 5)))
        paths = [self._render(f"{name}_step_{step}.png", draw, size=size) for name, draw, size in jobs]
        return [p for p in paths if p is not None]

    def generate_comparison_plots(
        self, experiments: Sequence[Mapping[str, Any]], output_path: Path | str | None = None
    ) -> Path | None:
        """Compare runs (``{name, rows}`` or the seed's ``{name, loss_history, metrics}``) in one figure."""
        target = Path(output_path) if output_path is not None else self.viz_dir / "experiment_comparison.png"
        return self._render(target, lambda fig: draw_comparison(fig, experiments), size=(14, 10))

    def _render(self, name: str | Path, draw: Callable[[Figure], None],
                size: tuple[float, float] | None) -> Path | None:
        path = self.viz_dir / name if isinstance(name, str) else name
        try:
            fig = new_figure(*(size or (14, 8)))
            draw(fig)
            return save_png(fig, path)
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            log.warning("plot %s not written (%s: %s)", path.name, type(exc).__name__, exc)
            return None


def _draw_training(fig: Figure, step: int, series: Series) -> None:
    panels = _panels(series)
    if not panels:
        raise ValueError("no numeric metrics to plot")
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig.set_size_inches(14, 4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, panels, strict=False):
        for key in keys:
            xs, ys = series[key]
            style = {"marker": "o", "markersize": 3} if key.startswith("val_") else {}
            ax.plot(xs, ys, label=key, **style)
        if title == "learning_rate" and all(y > 0 for k in keys for y in series[k][1]):
            ax.set_yscale("log")
        if len(keys) > 1:
            ax.legend()
        style_axes(ax, title.replace("_", " "))
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Training Dynamics - Step {step}", fontweight="bold")


def _panels(series: Series) -> list[tuple[str, list[str]]]:
    """Panel title -> metrics in it: grouped train/validation pairs first, then one per metric."""
    panels, used = [], set()
    for title, members in PANEL_GROUPS.items():
        present = [k for k in members if k in series]
        if present:
            panels.append((title, present))
            used.update(present)
    panels += [(key, [key]) for key in series if key not in used]
    return panels
