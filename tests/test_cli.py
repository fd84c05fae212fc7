"""``spectral-gpt`` as a user runs it: real processes, real files, real local Ray clusters.

A driver killed mid-run (SIGKILL takes its local Ray cluster with it) must be continued by running
the same command again, past a corrupt newest checkpoint; ``--no-monitoring`` must mean a run without
files (user mistakes, one line and exit code 2 before anything starts, are tests/test_mistakes.py).
Every subprocess gets its own token cache (``SPECTRAL_GPT_CACHE``) and Ray temp dir (``RAY_TMPDIR``),
so the tests never touch ``~/.cache`` or ``/tmp/ray`` and can tell whether Ray started at all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runs import actors_started, driver_env, wait_until_gone
from test_secrets import assert_no_secret, secret_environment, secret_runtime_env

from orchestrator.cli import PIPED_WIDTH, build_parser, main, make_console, settings_from_args, shutting_down_own_ray
from orchestrator.monitoring import MetricsLogger
from orchestrator.run_folder import new_run_dir, run_to_continue
from orchestrator.settings import default_cpus_per_worker, usable_cpus
from orchestrator.sweep_cli import sweep_settings_from_args

CLI = [sys.executable, "-m", "orchestrator.cli"]
SCRIPT = Path(sys.executable).with_name("spectral-gpt")
"""The console script pip installed next to this interpreter (the editable install of the project)."""
ERROR_PREFIX = "spectral-gpt: error:"


# -- helpers ---------------------------------------------------------------------------------------

def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- 1. bad input: see test_mistakes.py (the whole battery, in-process and as processes) ------------


# -- 2. help -------------------------------------------------------------------------------------

def test_help_documents_the_default_command_and_the_train_flags(capsys):
    """``spectral-gpt --help`` has to point at train (the default) and its key flags."""
    for argv, must_mention in ((["--help"], ("train", "--experiment", "--resume")),
                               (["train", "--help"], ("--experiment", "--resume", "--no-monitoring", "--gpu"))):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        captured = capsys.readouterr()
        assert captured.err == ""
        for flag in must_mention:
            assert flag in captured.out, (argv, flag)


def test_the_installed_console_script_runs(tmp_path):
    """The entry point in pyproject resolves: the command a user types, not just the module."""
    assert SCRIPT.is_file(), f"{SCRIPT} missing: is the project installed into this interpreter's venv?"
    proc = subprocess.run([str(SCRIPT), "train", "--help"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--experiment" in proc.stdout and "--resume" in proc.stdout


# -- 3. driver death -----------------------------------------------------------------------------

def _committed_steps(out: Path, name: str) -> list[int]:
    """Steps listed in the run's checkpoint manifest (the commit record), [] while there is none."""
    for manifest in out.glob(f"{name}_*/checkpoints/manifest.json"):
        try:
            return [int(c["step"]) for c in json.loads(manifest.read_text())["checkpoints"]]
        except (OSError, ValueError, KeyError):
            return []  # being replaced right now; the next poll reads it
    return []


def test_a_killed_driver_is_continued_by_running_the_same_command_again(tmp_path, token_cache, ray_tmp, sessions):
    """SIGKILL of the driver's process group (driver + the local Ray cluster it started), then the
    same command: it must find the unfinished run by name and continue from its last good checkpoint.
    The newest one is corrupted meanwhile (a disk that lost a sector): the rerun skips it for the one
    before, and says so on the console, in results.json and in training.log.

    Both runs also carry secret-looking variables and a ``--runtime-env`` with one more (see
    test_secrets.py): none may reach the run folder or the console, and the runtime env must reach Ray.
    """
    out, name, steps = tmp_path / "out", "driverkill", 80  # the kill lands ~10 steps past the second checkpoint
    runtime_env, runtime_secret = secret_runtime_env(tmp_path)
    secrets = secret_environment()
    cmd = [str(SCRIPT), "train", "--steps", str(steps), "--checkpoint-interval", "20", "--eval-interval", "20",
           "--log-interval", "10", "--output", str(out), "--name", name, "--runtime-env", str(runtime_env)]
    env = driver_env(token_cache, ray_tmp, **secrets)
    log1 = tmp_path / "first.log"
    with open(log1, "w") as log:
        first = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=log,
                                 stderr=subprocess.STDOUT)
    sessions.append(first.pid)
    end = time.monotonic() + 240
    committed: list[int] = []
    while len(committed) < 2 and first.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
        committed = _committed_steps(out, name)
    assert len(committed) >= 2, f"not two checkpoints committed (rc={first.poll()}):\n{_tail(log1)}"

    os.killpg(first.pid, signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL, "the first run ended on its own before the kill"
    # The driver's group (gcs, raylet, agents) dies with it; SIGKILL is not instant on a busy machine,
    # and the dead stay zombies until reaped, so wait for "none running", then for "none at all".
    assert wait_until_gone(30, running_only=True, pgid=first.pid) == [], "the killed group kept running"
    # Ray workers sit in their own groups of the same session; they exit once their raylet is gone.
    assert wait_until_gone(60, sid=first.pid) == [], "Ray processes outlived the killed driver"

    # Per worker group, no process for drained cloud nodes (a private local instance has none) and
    # none for Ray Data (the workers read their own token files).
    actors = actors_started(ray_tmp)
    assert actors["RayTrainWorker"] >= 1 and actors["PreemptionWatcher"] == actors["DatasetManager"] == 0, actors
    runs = list(out.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith(f"{name}_"), runs
    run_dir = runs[0]
    assert not (run_dir / "results.json").exists(), "the killed run had already finished"
    *_, previous, newest = _committed_steps(out, name)
    assert newest >= max(committed)
    newest_file = run_dir / "checkpoints" / f"checkpoint_step_{newest}.pt"
    data = bytearray(newest_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest_file.write_bytes(bytes(data))

    second = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    sessions.append(second.pid)
    stdout, stderr = second.communicate(timeout=400)
    assert second.returncode == 0, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    resumed = re.search(r"resumed from step (\d+)", stdout)
    assert resumed, stdout
    start = int(resumed.group(1))
    assert start == previous + 1  # the step after the newest good checkpoint, nothing older
    said = (f"checkpoint {newest_file} is corrupt (sha256 mismatch); skipping it; resuming from the "
            f"checkpoint of step {previous} instead")
    assert f"warning: {said}" in stdout, stdout

    assert list(out.iterdir()) == [run_dir], "the rerun must continue the run, not start a new folder"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed", results
    assert results["final_metrics"]["total_steps"] == steps
    assert said in results["warnings"] and f"WARNING {said}" in (run_dir / "logs" / "training.log").read_text()
    attempts = json.loads((run_dir / "logs" / "attempts.json").read_text())["attempts"]
    assert attempts[-1]["start_step"] == start and attempts[-1]["attempt"] >= 2, attempts
    rows = MetricsLogger(run_dir / "logs").load_metrics()
    # Every 10th step and the last, each once: rows the killed attempt logged past its checkpoint
    # are superseded by the rerun's, none lost, none doubled.
    assert [r["step"] for r in rows] == [*range(0, steps, 10), steps - 1]
    assert {r["attempt"] for r in rows if r["step"] >= start} == {attempts[-1]["attempt"]}
    # A normal exit shuts its local cluster down too.
    assert wait_until_gone(60, sid=second.pid) == [], "Ray processes outlived a finished driver"

    assert results["final_metrics"]["torch_threads"] == 2, "the --runtime-env did not reach Ray's workers"
    assert_no_secret(out, [log1.read_bytes(), stdout.encode(), stderr.encode()], [*secrets.values(), runtime_secret])


# -- 4. --no-monitoring --------------------------------------------------------------------------

def test_no_monitoring_is_a_run_without_a_folder(tmp_path):
    """``--no-monitoring`` is the seed's ``enable_monitoring=False``, which test_run.py trains end to end:
    no run folder to continue or to make, so nothing is written."""
    args = build_parser().parse_args(["train", "--no-monitoring", "--output", str(tmp_path / "out")])
    settings = settings_from_args(args, args.experiment, args.name)
    assert settings.monitoring.enabled is False
    assert run_to_continue(settings) is None and new_run_dir(settings) is None
    assert not (tmp_path / "out").exists()


def test_cpus_per_worker_is_trains_to_decide_and_one_per_sweep_worker_unless_given():
    """``train`` leaves it to the driver (the local instance's cores but one), a sweep gives each
    CPU worker one unless told, and a sweep fits as many trials as the machine holds at that size."""
    parser = build_parser()
    args = parser.parse_args(["train"])
    assert settings_from_args(args, args.experiment, args.name).scaling.cpus_per_worker is None
    args = parser.parse_args(["train", "--cpus-per-worker", "2"])
    assert settings_from_args(args, args.experiment, args.name).scaling.cpus_per_worker == 2
    grid = ["ablate", "--experiment", "rgd_only", "qfe_only"]
    assert {run.scaling.cpus_per_worker for run in sweep_settings_from_args(parser.parse_args(grid)).runs} == {1}
    sweep = sweep_settings_from_args(parser.parse_args([*grid, "--cpus-per-worker", "2"]))
    assert {run.scaling.cpus_per_worker for run in sweep.runs} == {2}
    assert sweep.max_concurrent == min(2, usable_cpus() // 2)
    assert [default_cpus_per_worker(cpus, workers) for cpus, workers in [(8, 1), (8, 2), (2, 1), (2, 2), (1, 1)]] \
        == [7, 3, 1, 1, 1]


def test_precision_and_compile_reach_every_runs_train_config():
    """``--precision bf16`` and ``--compile [MODE]`` for train and for every run of a sweep (fp32 and
    eager stay the defaults)."""
    parser = build_parser()
    args = parser.parse_args(["train", "--precision", "bf16", "--compile"])
    train = settings_from_args(args, args.experiment, args.name).spec.train
    assert (train.precision, train.compile) == ("bf16", "default")
    args = parser.parse_args(["train"])
    train = settings_from_args(args, args.experiment, args.name).spec.train
    assert (train.precision, train.compile) == ("fp32", None)
    sweep = sweep_settings_from_args(parser.parse_args(["ablate", "--experiment", "rgd_only", "qfe_only",
                                                        "--precision", "bf16", "--compile", "max-autotune"]))
    assert [(run.spec.train.precision, run.spec.train.compile) for run in sweep.runs] == [("bf16", "max-autotune")] * 2


def test_output_to_a_pipe_or_file_is_wide_enough_for_tables(monkeypatch, capsys):
    """rich assumes 80 columns off a terminal and cuts a sweep table's numbers to '6.83…' (capsys: a pipe)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console().width == PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "100")  # a width the user or the job runner set wins
    assert make_console().width == 100


SHUTDOWN_PROBE = """\
import signal, ray
from orchestrator.cli import shutting_down_own_ray
ignored = []
shut_down = ray.shutdown
def observed_shutdown(*args, **kwargs):
    ignored.append(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    shut_down(*args, **kwargs)
ray.shutdown = observed_shutdown
with shutting_down_own_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
print(ignored, ray.is_initialized(), signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_a_command_shuts_down_the_ray_it_started_with_ctrl_c_ignored_meanwhile(ray_tmp):
    """Ray's own exit hook, interrupted by a second Ctrl-C, left its agents running; a command now shuts its
    Ray down itself, deaf to Ctrl-C for those seconds, then gives Ctrl-C back."""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", SHUTDOWN_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "[True] False True"


def test_a_command_leaves_a_ray_it_joined_running(ray_session):
    with shutting_down_own_ray():
        pass
    assert ray_session.is_initialized()
