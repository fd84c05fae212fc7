"""Ablation sweeps on real Ray Tune with the tiny model: one grid, run by the seed's script in a process
of its own, whose first trial is retried after its worker died and whose driver is then SIGKILLed
mid-trial and finished by the same command; a summary that matches every run's own files, Tune's
ResultGrid, ``compare`` and ``ls`` on it; and mistakes refused before Ray starts.

Trials run one at a time (``--max-concurrent 1``) where a test must know which trial is running.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from rich.console import Console
from runs import driver_env, kill_until_gone, processes, session_pids, wait_until_gone

from orchestrator.monitoring import MetricsLogger
from orchestrator.settings import build_run_settings
from orchestrator.sweep import (
    TrialFailedError,
    _settle,
    build_sweep_settings,
    find_unfinished_sweep,
    open_results,
    write_sweep_record,
)
from orchestrator.sweep_cli import (
    DRY_RUN,
    ablate_main,
    apply_seed_flags,
    print_errored,
    register_commands,
    seed_script_parser,
    sweep_settings_from_args,
)
from spectral_gpt.config import ABLATIONS, ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "spectral_gpt" / "wave_experiments.py"
"""The seed's command, the same as ``spectral-gpt ablate``."""
STEPS = 60
RUN_FLAGS = ["--steps", str(STEPS), "--batch-size", "8", "--checkpoint-interval", "10", "--eval-interval", "20",
             "--log-interval", "5", "--viz-interval", "1000", "--seed", "1"]
"""Tiny runs with a checkpoint every 10 steps, caught mid-run after the first: the tests kill within ~10 steps of
it, and a run cannot finish sooner, as its monitoring actor commits that checkpoint before its later rows,
saves and plots."""


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run a sweep command in-process through a parser built with ``register_commands``."""
    parser = argparse.ArgumentParser(prog="spectral-gpt")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    code = args.handler(args, Console(file=out, width=250))
    return code, out.getvalue()


def _committed_steps(run_dir: Path) -> list[int]:
    """Steps in the run's checkpoint manifest (its commit record); [] while there is none."""
    try:
        manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text())
        return [int(c["step"]) for c in manifest["checkpoints"]]
    except (OSError, ValueError, KeyError):
        return []


def _attempts(run_dir: Path) -> list[dict]:
    """The run's attempts record; [] while it has had only its first attempt."""
    path = run_dir / "logs" / "attempts.json"
    return json.loads(path.read_text())["attempts"] if path.exists() else []


def _completed(run_dir: Path) -> bool:
    """Whether the run has finished: a failed attempt writes results.json too, which a retry replaces."""
    try:
        return json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


# -- one grid, two faults: a trial's worker dies (Tune retries it), then the driver dies mid-sweep ----

@pytest.fixture(scope="module")
def interrupted_sweep(token_cache, tmp_path_factory) -> Iterator[SimpleNamespace]:
    """``wave_experiments.py`` (``spectral-gpt ablate``) run as a user runs it, in a process and local Ray
    of its own, through two faults, one grid of two trials run one at a time:

    1. the first trial's Train worker is SIGKILLed after its first checkpoint; with ``--max-failures 0``
       a dead worker fails its run, so only Tune's FailureConfig (``--trial-retries 1``) brings it back;
    2. once that trial has completed and the second has committed a checkpoint, the driver's whole
       process group (its Ray with it) is SIGKILLed, and the same command, run again, must finish the sweep.

    One scenario instead of two keeps the suite short: each driver lifetime costs a Ray start and a
    worker group per trial.
    """
    tmp = tmp_path_factory.mktemp("sweep")
    out, ray_tmp = tmp / "out", Path(tempfile.mkdtemp(prefix="sgpt-", dir="/tmp"))
    cmd = [sys.executable, str(SCRIPT), "--experiment", "wave_baseline", "standard_transformer",
           "--max-concurrent", "1", "--max-failures", "0", "--trial-retries", "1", "--name", "grid",
           "--output", str(out), *RUN_FLAGS]
    env = driver_env(token_cache, ray_tmp)
    started: list[int] = []
    try:
        with open(tmp / "first.log", "w") as log:
            first = subprocess.Popen(cmd, env=env, cwd=tmp, start_new_session=True, stdout=log,
                                     stderr=subprocess.STDOUT)
        started.append(first.pid)
        killed: dict = {}
        done = running = None
        end = time.monotonic() + 400
        while first.poll() is None and time.monotonic() < end and not (done and running):
            time.sleep(0.05)
            runs = [p for p in out.glob("grid_*/*") if (p / "config.json").exists()]
            if not killed:
                training = next((p for p in runs if _committed_steps(p) and not (p / "results.json").exists()), None)
                workers = [p.pid for p in processes(sid=first.pid)
                           if training and p.command.startswith("ray::RayTrainWorker") and p.state not in "ZX"]
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed.update(run=training, committed=max(_committed_steps(training)))
                continue
            done = next((p for p in runs if _completed(p)), None)
            # The other trial, once this driver's attempt of it has committed a checkpoint.
            running = next((p for p in runs if p != done and not (p / "results.json").exists()
                            and max(_committed_steps(p), default=-1) > killed["committed"] * (p == killed["run"])),
                           None)
        assert killed and done and running, (f"never a killed worker, then one finished trial and one mid-run "
                                             f"(rc={first.poll()}, killed={killed}):\n"
                                             f"{(tmp / 'first.log').read_text()[-3000:]}")
        os.killpg(first.pid, signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
        assert wait_until_gone(60, running_only=True, sid=first.pid) == [], "Ray processes outlived the killed driver"
        assert not _completed(running), "the interrupted trial finished before the kill"
        done_files = ("results.json", "logs/metrics.jsonl", "logs/attempts.json")
        before = SimpleNamespace(done={name: (done / name).read_bytes() for name in done_files},
                                 committed=max(_committed_steps(running)), attempts=_attempts(running))

        # The same command, but for --max-concurrent, which a restored Tune grid cannot change: said, and kept.
        again = [*cmd[:cmd.index("--max-concurrent") + 1], "2", *cmd[cmd.index("--max-concurrent") + 2:]]
        second = subprocess.Popen(again, env=env, cwd=tmp, start_new_session=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        started.append(second.pid)
        stdout, stderr = second.communicate(timeout=400)
        (sweep_dir,) = out.iterdir()
        yield SimpleNamespace(code=second.returncode, console=stdout, stderr=stderr, out=out, sweep_dir=sweep_dir,
                              killed=killed, done=done, running=running, before=before)
    finally:
        for sid in started:
            kill_until_gone(lambda sid=sid: session_pids(sid))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_grid_completes_with_one_summary_row_per_trial_equal_to_its_files(interrupted_sweep):
    assert interrupted_sweep.code == 0, f"{interrupted_sweep.console[-3000:]}\n{interrupted_sweep.stderr[-3000:]}"
    sweep_dir = interrupted_sweep.sweep_dir
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert sorted(r["run"] for r in summary["runs"]) == ["standard_transformer", "wave_baseline"]
    assert pq.read_table(sweep_dir / "summary.parquet").to_pylist() == summary["runs"]
    for row in summary["runs"]:
        run_dir = sweep_dir / row["run"]
        results = json.loads((run_dir / "results.json").read_text())
        final = results["final_metrics"]
        validated = [(r["step"], r["val_loss"]) for r in MetricsLogger(run_dir / "logs").load_metrics()
                     if "val_loss" in r]
        assert row["status"] == results["status"] == "completed"
        assert row["steps"] == final["total_steps"] == STEPS
        assert row["val_loss"] == final["val_loss"] == validated[-1][1]
        assert (row["best_step"], row["best_val_loss"]) == min(validated, key=lambda v: v[1])
        assert row["params"] == final["num_parameters"]
        assert row["tokens_per_sec"] == final["tokens_per_second"]
    assert {a["ablation"]: a["runs"] for a in summary["ablations"]} == {"wave_baseline": 1, "standard_transformer": 1}
    assert "wave_baseline" in interrupted_sweep.console and "summary.html" in interrupted_sweep.console
    for name in ("summary.md", "summary.html", "plots/validation_curves.png", "plots/best_val_loss.png",
                 "plots/training_curves.png", "plots/wave_ratio.png"):
        assert (sweep_dir / name).stat().st_size > 0, name
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "completed"


def test_every_trial_trains_on_equal_footing(interrupted_sweep):
    configs = [json.loads((interrupted_sweep.sweep_dir / name / "config.json").read_text())["config"]
               for name in ("wave_baseline", "standard_transformer")]
    assert configs[0]["spec"]["train"] == configs[1]["spec"]["train"]  # steps, batch, seed, eval cadence
    assert configs[0]["data"] == configs[1]["data"]
    assert [c["spec"]["model"]["model_type"] for c in configs] == ["wave", "standard"]


def test_a_trial_that_failed_is_retried_by_tune_and_resumes_its_run(interrupted_sweep):
    run_dir, committed = interrupted_sweep.killed["run"], interrupted_sweep.killed["committed"]
    retry = next(a for a in _attempts(run_dir) if a["attempt"] == 2)
    start = retry["start_step"]
    assert committed < start < STEPS and (start - 1) % 10 == 0, "resumed from a checkpoint step (every 10 steps)"
    rows = MetricsLogger(run_dir / "logs").load_metrics()
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}) and rows[-1]["step"] == STEPS - 1
    assert {r["attempt"] for r in rows if r["step"] < start} == {1}
    assert 1 not in {r["attempt"] for r in rows if r["step"] >= start}
    tune = interrupted_sweep.sweep_dir / "tune"
    error = (tune / f"{run_dir.name}_seed1" / "error.txt").read_text()
    assert "TrialFailedError" in error and f"run {run_dir.name} failed" in error
    others = [p for p in tune.glob("*_seed1") if p.name != f"{run_dir.name}_seed1"]
    assert len(others) == 1 and not (others[0] / "error.txt").exists()


def test_tunes_result_grid_opens_the_sweep_with_val_loss_and_checkpoint_path(interrupted_sweep, monkeypatch):
    monkeypatch.chdir(interrupted_sweep.sweep_dir.parent)
    grid = open_results(Path(interrupted_sweep.sweep_dir.name))  # as a user in the output folder names it
    assert grid.num_errors == 0 and len(grid) == 2
    for result in grid:
        results = json.loads((interrupted_sweep.sweep_dir / result.config["ablation"] / "results.json").read_text())
        assert result.metrics["val_loss"] == results["final_metrics"]["val_loss"]
        assert result.metrics["checkpoint_path"] == results["best_checkpoint"]
        assert Path(result.metrics["checkpoint_path"]).is_file()


def test_compare_builds_the_table_and_plots_from_finished_runs(interrupted_sweep, tmp_path):
    code, console = _cli(["compare", str(interrupted_sweep.sweep_dir / "wave_baseline"),
                          str(interrupted_sweep.sweep_dir / "standard_transformer"), "--output", str(tmp_path / "cmp")])
    assert code == 0
    mine = json.loads((tmp_path / "cmp" / "summary.json").read_text())["runs"]
    sweeps = json.loads((interrupted_sweep.sweep_dir / "summary.json").read_text())["runs"]
    assert sorted(mine, key=lambda r: r["run"]) == sorted(sweeps, key=lambda r: r["run"])
    assert (tmp_path / "cmp" / "summary.html").stat().st_size > 0
    assert "standard_transformer" in console and "Ablations" in console


def test_ls_lists_the_sweep_and_its_runs_with_status_step_and_best_loss(interrupted_sweep):
    code, console = _cli(["ls", str(interrupted_sweep.out)])
    assert code == 0
    lines = console.splitlines()
    summary = json.loads((interrupted_sweep.sweep_dir / "summary.json").read_text())["runs"]
    sweep_line = next(line for line in lines if interrupted_sweep.sweep_dir.name in line)
    assert "sweep" in sweep_line and "completed" in sweep_line and "2/2 runs" in sweep_line
    for row in summary:
        line = next(line for line in lines if line.strip().startswith(row["run"]))
        assert line.split()[1:] == ["run", "completed", str(STEPS), f"{row['best_val_loss']:.4f}"]


def test_a_killed_sweep_driver_is_finished_by_the_same_command(interrupted_sweep):
    sweep, done, running = interrupted_sweep, interrupted_sweep.done, interrupted_sweep.running
    assert sweep.code == 0, f"{sweep.console[-3000:]}\n{sweep.stderr[-3000:]}"
    assert "restored and finished" in sweep.console
    assert "the restored sweep keeps max_concurrent=1 from its first start (asked for 2)" in sweep.stderr
    assert json.loads((sweep.sweep_dir / "sweep.json").read_text())["max_concurrent"] == 1
    assert list(sweep.out.iterdir()) == [sweep.sweep_dir], "the rerun must restore, not start a new sweep"
    # The finished trial was not trained again: its result, rows and attempts are the same bytes.
    assert {name: (done / name).read_bytes() for name in sweep.before.done} == sweep.before.done
    # The interrupted one continued from its newest committed checkpoint, in one more attempt.
    attempts = _attempts(running)
    previous = sweep.before.attempts[-1]["attempt"] if sweep.before.attempts else 1
    assert attempts[-1]["attempt"] == previous + 1 and attempts[-1]["start_step"] == sweep.before.committed + 1
    results = json.loads((running / "results.json").read_text())
    assert results["status"] == "completed" and results["final_metrics"]["total_steps"] == STEPS


# -- mistakes: one line, exit 2, before Ray starts or a folder is made ----------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--experiment", "wave_baseline", "nope"], "unknown ablation 'nope'; allowed: all, standard_transformer"),
    (["--seeds", "0"], "seeds=0 must be an integer >= 1"),
    (["--max-concurrent", "3"], "max_concurrent=3 needs 3 CPUs (1 per trial) but this machine has 2"),
    (["--workers", "3", "--batch-size", "12"], "--workers 3 needs 3 CPUs but this machine has 2"),
    (["--no-monitoring"], "a sweep needs monitoring"),
])
def test_a_mistake_is_refused_before_ray_starts(flags, message, tmp_path, monkeypatch):
    if len(os.sched_getaffinity(0)) != 2:
        message = message.split(" but ")[0]  # the machine's size is part of the message
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray

    was_up = ray.is_initialized()
    with pytest.raises(ConfigError) as error:
        _cli(["ablate", *flags, "--output", str(tmp_path / "out")])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert ray.is_initialized() == was_up and not (tmp_path / "out").exists()


def test_spectral_gpt_ablate_prints_one_error_line_and_exits_2(tmp_path, monkeypatch, capsys):
    """The same mistake through the ``spectral-gpt`` entry point that wires these commands in."""
    from orchestrator.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["ablate", "--seeds", "0", "--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "spectral-gpt: error: seeds=0 must be an integer >= 1\n"
    assert not (tmp_path / "out").exists()


def test_resume_must_without_an_unfinished_sweep_is_refused_before_ray_starts(tmp_path, token_cache, monkeypatch):
    monkeypatch.setenv("SPECTRAL_GPT_CACHE", token_cache)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray

    was_up = ray.is_initialized()
    with pytest.raises(ConfigError, match="--resume must: no unfinished sweep named 'ablations'"):
        _cli(["ablate", "--experiment", "qfe_only", "--resume", "must", "--output", str(tmp_path / "out")])
    assert ray.is_initialized() == was_up and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["compare", "{tmp}/missing"], "no such folder: {tmp}/missing"),
    (["compare", "{tmp}"], "no runs (folders with config.json) in {tmp}"),
    (["compare", "{tmp}", "--output", "/dev/null/cmp"],
     "--output='/dev/null/cmp' cannot be a folder: '/dev/null' is a file"),
    (["ls", "{tmp}/missing"], "no such folder: {tmp}/missing"),
    (["compare", ""], "DIR '' is empty; name a folder"),
    (["compare", "{tmp}", "--output", ""], "--output '' is empty; name a folder"),
    (["ls", " "], "DIR ' ' is empty; name a folder"),
])
def test_compare_and_ls_refuse_folders_without_runs(argv, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        _cli([a.format(tmp=tmp_path) for a in argv])
    assert str(error.value) == message.format(tmp=tmp_path)


def test_the_seed_script_exits_2_with_one_line_and_starts_no_ray(tmp_path, ray_tmp):
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--experiment", "nope", "--output", str(tmp_path / "out")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(
        "wave_experiments.py: error: unknown ablation 'nope'")
    assert proc.stdout == "" and list(ray_tmp.iterdir()) == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["--steps", "abc"], ["--bogus"]])
def test_the_seed_scripts_argparse_mistakes_are_one_line_too(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        ablate_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines() == [err.strip()] and err.startswith("wave_experiments.py: error: ")


def test_the_seed_script_keeps_the_model_core_free_of_ray():
    """Importing the script (as tools and tests do) must not pull in the orchestrator or Ray."""
    probe = ("import sys, spectral_gpt.wave_experiments, spectral_gpt.model, spectral_gpt.training; "
             "print('ray' in sys.modules, 'orchestrator' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


# -- the grid itself (no Ray) ------------------------------------------------------------------------

def _make_run(tmp_path: Path, steps: int = 50, dataset: str = "python-docs"):
    return lambda ablation, seed, name: build_run_settings(ablation=ablation, seed=seed, name=name, steps=steps,
                                                           output=tmp_path, dataset=dataset)


def test_the_grid_expands_all_resolves_aliases_and_names_seeded_runs(tmp_path):
    every = build_sweep_settings(["all", "baseline"], _make_run(tmp_path), seed=7, max_concurrent=1)
    assert every.ablations == list(ABLATIONS) and len(every.runs) == len(ABLATIONS)
    assert [r.name for r in every.runs] == list(ABLATIONS)
    seeded = build_sweep_settings(["baseline", "qfe_only"], _make_run(tmp_path), seed=7, seeds=2, max_concurrent=1)
    assert [(r.name, r.ablation, r.spec.train.seed) for r in seeded.runs] == [
        ("wave_baseline_seed7", "wave_baseline", 7), ("wave_baseline_seed8", "wave_baseline", 8),
        ("qfe_only_seed7", "qfe_only", 7), ("qfe_only_seed8", "qfe_only", 8)]
    assert build_sweep_settings(["qfe_only"], _make_run(tmp_path), seed=1).max_concurrent == 1  # one trial


def test_a_grid_off_equal_footing_is_refused(tmp_path):
    def uneven(ablation: str, seed: int, name: str):
        return _make_run(tmp_path, steps=50 if ablation == "rgd_only" else 60)(ablation, seed, name)

    with pytest.raises(ConfigError, match="same size, steps, batch, data, scaling and monitoring"):
        build_sweep_settings(["rgd_only", "qfe_only"], uneven, seed=1, max_concurrent=1)


def test_a_trial_tune_gave_up_on_is_reported_with_its_errors_own_line(tmp_path):
    """Tune's Result objects are stood in for (a real errored trial takes a run that fails four times);
    the error's text is Ray's, as a trial that raised gives it: a header, the remote frames, the cause."""
    settings = build_sweep_settings(["rgd_only", "qfe_only"], _make_run(tmp_path), seed=1, max_concurrent=1)
    cause = "run rgd_only failed: workers kept failing, more than --max-failures 2 restarts allow (rank 0: ...)"
    remote = TrialFailedError(f"ray::ImplicitFunc.train() (pid=1, ip=10.0.0.1, actor_id=ab)\n    ^^^^\n"
                              f'  File "orchestrator/sweep.py", line 264, in run_trial\n    raise ...\n'
                              f"TrialFailedError: {cause}")
    grid = [SimpleNamespace(config={"ablation": "rgd_only", "seed": 1}, error=remote),
            SimpleNamespace(config={"ablation": "qfe_only", "seed": 1}, error=None)]
    assert _settle(grid, settings.runs, "none") == {"rgd_only": cause}
    console = Console(file=io.StringIO(), width=300)
    print_errored(console, {"rgd_only": cause})
    assert console.file.getvalue() == f"trial rgd_only kept failing: {cause}\n"


def test_an_unfinished_sweep_with_another_grid_is_not_resumed(tmp_path):
    settings = build_sweep_settings(["rgd_only"], _make_run(tmp_path), seed=1, name="s", output=tmp_path)
    folder = tmp_path / "s_20260101_000000_abc"
    folder.mkdir()
    write_sweep_record(folder, settings, settings.runs, "unfinished")
    assert find_unfinished_sweep(settings) == folder
    other = build_sweep_settings(["rgd_only"], _make_run(tmp_path, steps=70), seed=1, name="s", output=tmp_path)
    with pytest.raises(ConfigError, match="started with another grid or other settings"):
        find_unfinished_sweep(other)
    corpus = build_sweep_settings(["rgd_only"], _make_run(tmp_path, dataset="shakespeare"), seed=1, name="s",
                                  output=tmp_path)
    with pytest.raises(ConfigError, match="started with another grid or other settings"):
        find_unfinished_sweep(corpus)
    write_sweep_record(folder, settings, settings.runs, "completed")
    assert find_unfinished_sweep(other) is None


def _seed_args(*argv: str, visible_gpus: int = 0):
    return apply_seed_flags(seed_script_parser("wave_experiments.py").parse_args(list(argv)), visible_gpus)


def test_the_seed_scripts_dry_run_and_parallel_become_ablate_flags(tmp_path):
    dry = _seed_args("--dry-run", "--model", "small", "--steps", "5000", "--output", str(tmp_path))
    assert {k: getattr(dry, k) for k in DRY_RUN} == DRY_RUN
    settings = sweep_settings_from_args(dry)
    run = settings.runs[0]
    assert (run.spec.train.steps, run.spec.train.batch_size, run.monitoring.checkpoint_interval,
            run.monitoring.log_interval, run.monitoring.viz_interval) == (10, 4, 5, 1, 5)
    assert not hasattr(dry, "dry_run") and not hasattr(dry, "parallel")
    one = _seed_args("--parallel", visible_gpus=1)
    assert (one.workers, one.gpu) == (1, False)
    many = _seed_args("--parallel", visible_gpus=4)
    assert (many.workers, many.gpu) == (4, True)
