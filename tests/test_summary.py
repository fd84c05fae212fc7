"""Sweep summaries from run folders on disk (no Ray): rows, means over seeds, files, plots, one HTML page.

Run folders are written the way a run writes them: ``config.json`` through ConfigTracker, metric rows
in the documented ``logs/metrics.jsonl`` format (with chosen timestamps, so wall times are exact),
attempts through MetricsLogger.begin_attempt, ``results.json`` through ConfigTracker.save_results.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.monitoring import ConfigTracker, MetricsLogger
from orchestrator.settings import build_run_settings
from orchestrator.summary import RUN_COLUMNS, SWEEP_FILE, discover_runs, load_run, run_row, write_summary
from spectral_gpt.model import build_model_from_config

T0 = datetime(2026, 1, 1, 10, 0, 0)


def _write_rows(run_dir: Path, rows: list[tuple[int, int, float, float | None, float]]) -> None:
    """Append (step, attempt, loss, val_loss, seconds after T0) rows as a run's logger writes them."""
    with open(run_dir / "logs" / "metrics.jsonl", "a") as fh:
        for step, attempt, loss, val, seconds in rows:
            row: dict = {"step": step, "timestamp": (T0 + timedelta(seconds=seconds)).isoformat(),
                         "attempt": attempt, "loss": loss, "tokens_per_sec": 1000.0, "wave_ratio": 0.5 + step / 1000}
            if val is not None and math.isnan(val):
                row.update(val_loss=None, nonfinite={"val_loss": "nan"})
            elif val is not None:
                row["val_loss"] = val
            fh.write(json.dumps(row) + "\n")


def _make_run(root: Path, name: str, *, ablation: str = "wave_baseline", seed: int = 1,
              vals: dict[int, float], steps: int = 40, status: str | None = "completed") -> Path:
    """A run logging every 10 steps, validating at the steps in ``vals``, one row per 2 s."""
    settings = build_run_settings(ablation=ablation, seed=seed, name=name, steps=steps, output=root)
    run_dir = root / name
    (run_dir / "logs").mkdir(parents=True)
    ConfigTracker(run_dir).save_config(settings.to_dict(), model=build_model_from_config(settings.spec.model),
                                       hardware={})
    logged = list(range(0, steps, 10)) + [steps - 1]
    _write_rows(run_dir, [(s, 1, 5.0 - s / 100, vals.get(s), 2.0 * i) for i, s in enumerate(logged)])
    if status is not None:
        last_val = vals[max(vals)]
        ConfigTracker(run_dir).save_results({"total_steps": steps, "val_loss": last_val, "tokens_per_second": 1234.5},
                                            status=status)
    return run_dir


@pytest.fixture
def two_ablations(tmp_path: Path) -> tuple[Path, list[Path]]:
    """wave_baseline with two seeds (one resumed) and standard_transformer with one."""
    root = tmp_path / "sweep"
    resumed = _make_run(root, "wave_baseline_seed1", seed=1, vals={20: 4.0, 39: 3.9}, status=None)
    MetricsLogger(resumed / "logs").begin_attempt(21)  # the driver died after the step-20 checkpoint
    _write_rows(resumed, [(21, 2, 4.7, None, 300.0), (30, 2, 4.6, 3.5, 310.0), (39, 2, 4.5, 3.6, 318.0)])
    ConfigTracker(resumed).save_results({"total_steps": 40, "val_loss": 3.6, "tokens_per_second": 999.0})
    runs = [resumed,
            _make_run(root, "wave_baseline_seed2", seed=2, vals={20: 4.2, 39: 3.8}),
            _make_run(root, "standard_transformer", ablation="standard_transformer", vals={20: 3.0, 39: 2.5})]
    return root, runs


def test_a_row_takes_best_and_final_validation_loss_from_the_resolved_rows(two_ablations):
    _, (resumed, *_) = two_ablations
    row = run_row(load_run(resumed))
    # The replayed attempt-1 rows past step 20 are hidden; the best is attempt 2's 3.5 at step 30.
    assert (row["best_val_loss"], row["best_step"], row["val_loss"]) == (3.5, 30, 3.6)
    assert row["perplexity"] == pytest.approx(math.exp(3.6))
    assert (row["steps"], row["status"], row["seed"], row["ablation"]) == (40, "completed", 1, "wave_baseline")
    assert row["tokens_per_sec"] == 999.0
    # attempt 1 kept steps 0..20 (rows at 0, 2, 4 s), attempt 2 ran from 300 s to 318 s
    assert row["wall_time_s"] == pytest.approx(4.0 + 18.0)
    config = json.loads((resumed / "config.json").read_text())
    assert row["params"] == config["model"]["num_parameters"] > 0


def test_the_summary_has_one_row_per_run_and_a_mean_and_spread_per_ablation(two_ablations, tmp_path):
    root, runs = two_ablations
    summary = write_summary(discover_runs([root]), tmp_path / "out", title="Test sweep")
    assert [r["run"] for r in summary.rows] == sorted(p.name for p in runs)  # folder order
    assert [a["ablation"] for a in summary.ablations] == ["standard_transformer", "wave_baseline"]
    standard, wave = summary.ablations
    assert (wave["ablation"], wave["runs"], wave["seeds"]) == ("wave_baseline", 2, [1, 2])
    assert wave["best_val_loss_mean"] == pytest.approx(statistics.fmean([3.5, 3.8]))
    assert wave["best_val_loss_std"] == pytest.approx(statistics.stdev([3.5, 3.8]))
    assert (standard["runs"], standard["best_val_loss_mean"]) == (1, 2.5)
    assert math.isnan(standard["best_val_loss_std"])  # no spread from a single seed

    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(summary.rows))
    table = pq.read_table(tmp_path / "out" / "summary.parquet")
    assert table.column_names == list(RUN_COLUMNS)
    assert table.to_pylist() == saved["runs"]
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| wave_baseline | 2 |" in markdown and "3.6500 ± 0.2121" in markdown
    assert "| standard_transformer | 1 |" in markdown and "| 2.5000 |" in markdown


def test_the_html_page_is_self_contained_with_every_plot_inlined(two_ablations, tmp_path):
    root, _ = two_ablations
    summary = write_summary(discover_runs([root]), tmp_path / "out", title="Test <sweep>")
    page = (tmp_path / "out" / "summary.html").read_text()
    plots = sorted(p.stem for p in (tmp_path / "out" / "plots").glob("*.png"))
    assert plots == ["best_val_loss", "experiment_comparison", "training_curves", "validation_curves",
                     "wave_ratio"]
    for path in (tmp_path / "out" / "plots").glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count('src="data:image/png;base64,') == len(plots)
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything from outside"
    assert "Test &lt;sweep&gt;" in page and "wave_baseline_seed2" in page
    assert set(summary.files) >= {"parquet", "json", "markdown", "html"}


def test_a_diverged_run_is_reported_and_does_not_break_the_summary(tmp_path):
    """The seed lost every result when one run diverged (B9); here it is one failed row."""
    root = tmp_path / "runs"
    _make_run(root, "ok", vals={20: 3.0, 39: 2.9})
    bad = _make_run(root, "diverged", ablation="full_physics", vals={}, status=None)
    _write_rows(bad, [(20, 1, math.inf, math.nan, 60.0)])
    ConfigTracker(bad).save_results({"total_steps": 21}, status="failed", error="training diverged at step 21")
    summary = write_summary(discover_runs([root]), tmp_path / "out", title="with a failure")
    diverged = next(r for r in summary.rows if r["run"] == "diverged")
    assert diverged["status"] == "failed" and math.isnan(diverged["best_val_loss"])
    assert diverged["best_step"] is None
    assert next(a for a in summary.ablations if a["ablation"] == "full_physics")["statuses"] == ["failed"]
    assert (tmp_path / "out" / "plots" / "best_val_loss.png").stat().st_size > 0
    assert "| full_physics | 1 |" in (tmp_path / "out" / "summary.md").read_text()


def test_discovery_reads_run_folders_sweeps_and_folders_of_both(tmp_path):
    outside = _make_run(tmp_path / "experiments", "single", vals={39: 3.0})
    sweep_dir = tmp_path / "experiments" / "sweep_x"
    in_sweep = _make_run(sweep_dir, "qfe_only", ablation="qfe_only", vals={39: 3.1}, status=None)
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(
        {"name": "sweep_x", "trials": [{"name": "qfe_only"}, {"name": "not_started"}]}))
    (sweep_dir / "plots").mkdir()  # a sweep's own folders are not runs
    assert [r.run_dir for r in discover_runs([tmp_path / "experiments"])] == [outside, in_sweep]
    assert [r.run_dir for r in discover_runs([sweep_dir, outside])] == [in_sweep, outside]
    assert load_run(in_sweep).status == "unfinished"
    assert discover_runs([tmp_path / "nothing_here"]) == []


def test_an_empty_selection_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        write_summary([], tmp_path / "out", title="empty")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", [
    lambda d: _edit_json(d / "config.json", lambda c: {**c, "config": ["not", "settings"]}),
    lambda d: _edit_json(d / "config.json", lambda c: {**c, "model": "a string"}),
    lambda d: _edit_json(d / "config.json", lambda c: {**c, "model": {"num_parameters": "many"}}),
    lambda d: _edit_json(d / "results.json", lambda r: {**r, "final_metrics": [1, 2]}),
    lambda d: _edit_json(d / "results.json", lambda r: {**r, "final_metrics": {"total_steps": 10**30}}),
    lambda d: (d / "logs" / "metrics.jsonl").write_text('{"step": 1e999, "attempt": 1}\n'),
    lambda d: (d / "logs" / "metrics.jsonl").write_text('{"step": 3, "attempt": "x"}\n'),
], ids=["config-a-list", "model-a-string", "params-text", "final-metrics-a-list", "steps-past-int64",
        "step-infinite", "attempt-text"])
def test_a_run_folder_with_malformed_files_is_skipped_with_a_warning_and_the_others_compared(damage, tmp_path,
                                                                                             caplog):
    """Hand-edited or foreign files: ``ls`` and ``compare`` crashed with a traceback (``compare`` after
    writing its plots); the folder is now skipped, said once, and the summary of the rest is whole."""
    good = _make_run(tmp_path / "runs", "good", vals={20: 4.0, 39: 3.9})
    bad = _make_run(tmp_path / "runs", "bad", vals={20: 4.1, 39: 4.0})
    damage(bad)
    records = discover_runs([tmp_path / "runs"])
    assert [r.run_dir for r in records] == [good]
    assert f"skipped {bad}: its files do not hold what a run writes" in caplog.text
    summary = write_summary(records, tmp_path / "cmp", title="t")
    assert [row["run"] for row in pq.read_table(summary.files["parquet"]).to_pylist()] == ["good"]


def test_a_sweep_record_with_malformed_trials_lists_only_the_trials_it_names(tmp_path):
    from orchestrator.sweep_cli import list_entries

    sweep = tmp_path / "sweep_1"
    good = _make_run(sweep, "good", vals={20: 4.0, 39: 3.9})
    (sweep / SWEEP_FILE).write_text(json.dumps({"status": 5, "trials": ["x", {}, {"name": 3}, {"name": "good"}]}))
    entries = list_entries(tmp_path)
    assert [(e["name"], e["kind"], e["status"], e["step"]) for e in entries] == [
        ("sweep_1", "sweep", "5", "1/1 runs"), ("good", "run", "completed", 40)]
    assert [r.run_dir for r in discover_runs([sweep])] == [good]


def _edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def test_a_run_named_twice_is_compared_once(tmp_path):
    """``compare runs runs/good`` would count the run twice in its ablation's mean and spread."""
    good = _make_run(tmp_path / "runs", "good", vals={20: 4.0, 39: 3.9})
    assert [r.run_dir for r in discover_runs([tmp_path / "runs", good, tmp_path / "runs" / ".." / "runs"])] == [good]



def test_reading_runs_for_ls_and_compare_creates_no_file_in_them(tmp_path):
    """A run killed before its first row has an empty ``logs/``: opening a MetricsLogger there made
    ``metrics.jsonl`` and ``training.log`` appear in the run a user only listed."""
    from orchestrator.sweep_cli import list_entries

    run = _make_run(tmp_path / "runs", "early", vals={20: 4.0}, status=None)
    (run / "logs" / "metrics.jsonl").unlink()
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert [r.run_dir for r in discover_runs([tmp_path / "runs"])] == [run]
    assert [e["name"] for e in list_entries(tmp_path / "runs")] == ["early"]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
