"""VisualizationManager on real models and real PNG files; matplotlib's global state is left alone."""

from __future__ import annotations

import dataclasses
import errno
import logging
import sys
from pathlib import Path

import matplotlib
import pytest

from orchestrator.monitoring import VisualizationManager, atomic
from orchestrator.monitoring.figures import series_from_history, series_from_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL_PLOTS = {"frequencies", "phases", "harmonics", "wave_packets"}


def _model(ablation: str, **changes):
    from spectral_gpt.config import model_config_for
    from spectral_gpt.model import build_model_from_config

    cfg = dataclasses.replace(model_config_for("tiny", ablation, vocab_size=600), **changes)
    return build_model_from_config(cfg)


def _rows(n: int = 40) -> list[dict]:
    rows = []
    for i in range(n):
        step = 10 * i
        row = {"step": step, "attempt": 1, "timestamp": "t", "loss": 5.0 - i * 0.05, "learning_rate": 1e-3,
               "perplexity": 100.0 - i, "tokens_per_sec": 900.0 + i, "wave_ratio": 0.5 + i / 100,
               "grad_norm": 1.0, "memory_mb": 200.0}
        if step % 100 == 0:
            row |= {"val_loss": 4.9 - i * 0.05, "val_perplexity": 90.0 - i}
        rows.append(row)
    return rows


def _assert_png(path: Path | None) -> None:
    assert path is not None and path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000


@pytest.fixture
def untouched_matplotlib():
    before = matplotlib.rcParams.copy()
    pyplot_before = "matplotlib.pyplot" in sys.modules
    yield
    assert matplotlib.rcParams.copy() == before
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before


def test_should_visualize_follows_the_seed_cadence(tmp_path):
    viz = VisualizationManager(tmp_path, viz_interval=1000)
    assert [s for s in (0, 500, 1000, 1500, 2000) if viz.should_visualize(s)] == [1000, 2000]


def test_wave_model_gets_every_plot(tmp_path, untouched_matplotlib, caplog):
    viz = VisualizationManager(tmp_path, viz_interval=100)
    with caplog.at_level(logging.WARNING):
        training = viz.generate_training_plots(400, _rows())
        model_paths = viz.generate_model_plots(400, _model("wave_baseline"))
    assert training == tmp_path / "training_dynamics_step_400.png"
    _assert_png(training)
    assert {p.name for p in model_paths} == {f"{n}_step_400.png" for n in MODEL_PLOTS | {"attention_temps"}}
    for path in model_paths:
        _assert_png(path)
    assert not caplog.records
    assert not list(tmp_path.glob(f"*{atomic.TEMP_MARK}*"))


def test_physics_embedding_and_pure_wave_attention_get_model_plots(tmp_path, untouched_matplotlib):
    viz = VisualizationManager(tmp_path)
    paths = viz.generate_model_plots(7, _model("pure_wave", embedding="v2"))
    assert {p.name.replace("_step_7.png", "") for p in paths} == MODEL_PLOTS
    for path in paths:
        _assert_png(path)


def test_standard_model_gets_training_plots_and_a_note_instead_of_model_plots(tmp_path, caplog):
    viz = VisualizationManager(tmp_path)
    with caplog.at_level(logging.INFO, logger="orchestrator.monitoring"):
        assert viz.generate_model_plots(1000, _model("standard_transformer")) == []
        _assert_png(viz.generate_training_plots(1000, _rows()))
    notes = [r for r in caplog.records if r.name.startswith("orchestrator.monitoring")]
    assert [r.levelno for r in notes] == [logging.INFO] and "no wave embedding" in notes[0].getMessage()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_dynamics_step_1000.png"]


def test_seed_form_of_training_plots(tmp_path, untouched_matplotlib):
    viz = VisualizationManager(tmp_path)
    losses = [5.0 - 0.01 * i for i in range(300)]
    metrics = {"learning_rate": [1e-3] * 300, "perplexity": [50.0, 40.0, 30.0], "wave_ratio": [0.5, 0.6]}
    _assert_png(viz.generate_training_plots(300, losses, metrics))


def test_every_series_is_drawn_against_the_step():
    rows = _rows(5)
    series = series_from_rows(list(reversed(rows)))
    assert series["loss"][0] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert series["val_loss"][0] == [0.0] and "attempt" not in series and "timestamp" not in series
    spread = series_from_history(300, [3.0, 2.0, 1.0, float("nan")], {"perplexity": [9.0, 4.0]})
    assert spread["loss"] == ([75.0, 150.0, 225.0], [3.0, 2.0, 1.0])
    assert spread["perplexity"][0] == [150.0, 300.0]


def test_comparison_of_runs_in_both_forms(tmp_path, untouched_matplotlib):
    viz = VisualizationManager(tmp_path)
    experiments = [
        {"name": "wave_baseline", "rows": _rows()},
        {"name": "standard_transformer", "rows": [dict(r, loss=r["loss"] + 0.3) for r in _rows()]},
        {"name": "seed_style", "loss_history": [4.0, 3.5, 3.0], "metrics": {"learning_rate": [1e-3] * 3}},
    ]
    _assert_png(viz.generate_comparison_plots(experiments))
    assert (tmp_path / "experiment_comparison.png").is_file()
    custom = tmp_path / "sweep" / "compare.png"
    custom.parent.mkdir()
    _assert_png(viz.generate_comparison_plots(experiments, output_path=custom))


class _BrokenEmbedding:
    base_freqs = phases = harmonic_amps = None

    def __getattribute__(self, name):
        if name in ("base_freqs", "phases", "harmonic_amps"):
            raise RuntimeError("tables on another device")
        return object.__getattribute__(self, name)


class _BrokenModel:
    embedding = _BrokenEmbedding()


def test_plot_failures_are_warnings_not_exceptions(tmp_path, monkeypatch, caplog):
    viz = VisualizationManager(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert viz.generate_training_plots(10, [{"step": 0, "note": "text only"}]) is None
        assert viz.generate_model_plots(10, _BrokenModel()) == []
        assert viz.generate_comparison_plots([]) is None
    assert len(caplog.records) == 3 and all(r.levelno == logging.WARNING for r in caplog.records)

    def refuse(path, mode):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "open_output", refuse)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert viz.generate_training_plots(10, _rows()) is None
    assert "No space left on device" in caplog.text
    monkeypatch.undo()
    _assert_png(viz.generate_training_plots(10, _rows()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_dynamics_step_10.png"]
