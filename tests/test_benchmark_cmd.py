"""``spectral-gpt benchmark`` and the seed's ``wave_benchmark.py``: one short real benchmark on real Ray
(both models, equal steps), whose comparison must match each run's own files and whose validation
loss must be the held-out split's (spec B13), its restore by the same command, and the entry script.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator.benchmark_cmd import (
    BENCHMARK_INTERVAL,
    BENCHMARK_MODELS,
    BENCHMARK_STEPS_DEFAULT,
    benchmark_settings_from_args,
    register_benchmark,
)
from orchestrator.monitoring import CheckpointManager, MetricsLogger
from spectral_gpt.config import ConfigError
from spectral_gpt.data import TokenDataset, validation_batches
from spectral_gpt.model import build_model, count_parameters
from spectral_gpt.training import RunSpec, TrainState, evaluate

SCRIPT = Path(__file__).resolve().parents[1] / "spectral_gpt" / "wave_benchmark.py"
"""The seed's command, the same as ``spectral-gpt benchmark``."""
STEPS = 20
FLAGS = ["--steps", str(STEPS), "--batch-size", "4", "--eval-interval", "5", "--checkpoint-interval", "10",
         "--log-interval", "2", "--viz-interval", "1000", "--seed", "3", "--name", "bench"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectral-gpt")
    register_benchmark(parser.add_subparsers(dest="command", required=True))
    return parser


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run ``benchmark`` in-process (on the session's Ray) through a parser built with ``register_benchmark``."""
    args = _parser().parse_args(argv)
    out = io.StringIO()
    code = args.handler(args, Console(file=out, width=250))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def benchmark(ray_session, token_cache, tmp_path_factory) -> SimpleNamespace:
    """``spectral-gpt benchmark`` in-process: both models concurrently, 20 steps, validated every 5."""
    out = tmp_path_factory.mktemp("benchmarks")
    argv = ["benchmark", *FLAGS, "--output", str(out)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SPECTRAL_GPT_CACHE", token_cache)
        env.delenv("RAY_ADDRESS", raising=False)
        code, console = _cli(argv)
    (folder,) = out.iterdir()
    return SimpleNamespace(code=code, console=console, out=out, folder=folder, argv=argv, cache=token_cache,
                           table=json.loads((folder / "benchmark.json").read_text()))


def test_the_benchmark_compares_both_models_from_their_own_files(benchmark):
    assert benchmark.code == 0, benchmark.console
    assert benchmark.folder.name.startswith("bench_")
    models = benchmark.table["models"]
    assert [m["ablation"] for m in models] == list(BENCHMARK_MODELS)
    assert [m["model"] for m in models] == list(BENCHMARK_MODELS.values())
    assert benchmark.table["setup"]["steps"] == STEPS
    assert (benchmark.table["setup"]["precision"], benchmark.table["setup"]["compile"]) == ("fp32", None)
    assert "CPU worker(s), fp32." in (benchmark.folder / "benchmark.md").read_text()
    for row in models:
        run_dir = Path(row["run_dir"])
        assert run_dir == benchmark.folder / row["ablation"]
        final = json.loads((run_dir / "results.json").read_text())["final_metrics"]
        validated = [r["val_loss"] for r in MetricsLogger(run_dir / "logs").load_metrics() if "val_loss" in r]
        assert row["status"] == "completed" and row["steps"] == final["total_steps"] == STEPS  # equal budgets
        assert math.isfinite(row["best_val_loss"]) and len(validated) == STEPS // 5
        # The lowest held-out loss logged; results.json's best is early stopping's (gains above min_delta).
        assert row["best_val_loss"] == min(validated) <= final["best_val_loss"]
        assert row["final_val_loss"] == final["val_loss"] == validated[-1]
        assert row["perplexity"] == pytest.approx(math.exp(row["final_val_loss"]))
        assert row["parameters"] == count_parameters(build_model("tiny", row["ablation"])) == final["num_parameters"]
        assert row["tokens_per_sec"] == final["tokens_per_second"] > 0
        assert row["peak_memory_mb"] == final["peak_memory_mb"] > 0
        assert row["wall_time_s"] > 0 and Path(row["best_checkpoint"]).is_file()
    assert models[0]["parameters"] != models[1]["parameters"]
    markdown = (benchmark.folder / "benchmark.md").read_text()
    for row in models:
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {row['model']} |"))
        assert f"{row['best_val_loss']:.4f}" in line and f"{row['parameters']:,}" in line
        assert f"[{row['ablation']}/]({row['ablation']}/)" in line and row["run_dir"] in markdown
    plot = benchmark.folder / "plots" / "learning_curves.png"
    assert plot.read_bytes().startswith(b"\x89PNG") and "plots/learning_curves.png" in markdown
    assert (benchmark.folder / "summary.html").stat().st_size > 0  # the sweep summary comes along
    assert "Classic Transformer" in benchmark.console and "benchmark finished in" in benchmark.console


def test_the_validation_loss_is_the_held_out_splits_not_a_training_batch(benchmark):
    """Spec B13: the seed's "val_loss" came from a training batch. Recompute it from the final weights."""
    dataset = TokenDataset.prepare("python-docs", Path(benchmark.cache), 1024)
    for row in benchmark.table["models"]:
        saved = CheckpointManager(row["run_dir"]).load_latest_checkpoint()["state"]
        state = TrainState(RunSpec.from_dict(saved["spec"]))
        state.load_state_dict(saved)
        train = state.spec.train
        assert state.step == STEPS
        held_out = validation_batches(dataset.val, state.spec.model.block_size, train.batch_size, train.eval_batches)
        assert evaluate(state, held_out) == pytest.approx(row["final_val_loss"], rel=1e-5)


def test_the_same_command_restores_an_unfinished_benchmark_without_training_again(benchmark):
    record = json.loads((benchmark.folder / "sweep.json").read_text())
    assert record["status"] == "completed" and record["ablations"] == list(BENCHMARK_MODELS)
    # As if the driver had died after both runs ended but before the benchmark was written.
    (benchmark.folder / "sweep.json").write_text(json.dumps({**record, "status": "unfinished"}))
    (benchmark.folder / "benchmark.md").unlink()
    results = {m["ablation"]: (Path(m["run_dir"]) / "results.json").read_bytes() for m in benchmark.table["models"]}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SPECTRAL_GPT_CACHE", benchmark.cache)
        env.delenv("RAY_ADDRESS", raising=False)
        code, console = _cli(benchmark.argv)
    assert code == 0 and "benchmark restored and finished" in console, console
    assert list(benchmark.out.iterdir()) == [benchmark.folder]
    assert {a: (benchmark.folder / a / "results.json").read_bytes() for a in results} == results
    again = json.loads((benchmark.folder / "benchmark.json").read_text())["models"]
    assert again == benchmark.table["models"] and (benchmark.folder / "benchmark.md").is_file()


def test_the_defaults_are_the_seeds_intervals_and_equal_steps(tmp_path):
    args = _parser().parse_args(["benchmark", "--output", str(tmp_path)])
    settings = benchmark_settings_from_args(args)
    assert settings.name == "benchmark" and settings.ablations == list(BENCHMARK_MODELS)
    assert {r.spec.train.steps for r in settings.runs} == {BENCHMARK_STEPS_DEFAULT}
    assert {(r.monitoring.checkpoint_interval, r.monitoring.viz_interval) for r in settings.runs} == {
        (BENCHMARK_INTERVAL, BENCHMARK_INTERVAL)}
    assert list(tmp_path.iterdir()) == []


def test_a_mistake_is_one_line_and_exit_2_before_anything_is_created(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray

    was_up = ray.is_initialized()
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--no-monitoring", "--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("spectral-gpt: error: a sweep needs monitoring (its summary and its "
                                       "restore read every run's files); drop --no-monitoring\n")
    assert ray.is_initialized() == was_up and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="name='a/b' must be 1-100 letters"):
        benchmark_settings_from_args(_parser().parse_args(["benchmark", "--name", "a/b"]))


def test_the_seed_script_shows_its_help_and_refuses_a_bad_flag_in_one_line(tmp_path, capsys):
    from spectral_gpt.wave_benchmark import main

    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    help_text = capsys.readouterr().out
    assert shown.value.code == 0 and help_text.startswith("usage: wave_benchmark.py")
    assert "--steps" in help_text and "standard_transformer" in help_text and "full_physics" in help_text
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    bad = subprocess.run([sys.executable, str(SCRIPT), "--steps", "0", "--output", str(tmp_path / "out")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)  # run by path, as the seed ran it
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == ("wave_benchmark.py: error: argument --steps: '0' must be >= 1 "
                          "(see 'wave_benchmark.py --help')\n")
    assert not (tmp_path / "out").exists()


def test_the_seed_script_keeps_the_model_core_free_of_ray():
    probe = "import sys, spectral_gpt.wave_benchmark; print('ray' in sys.modules, 'orchestrator' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0 and imported.stdout.split() == ["False", "False"], imported.stderr
