"""``spectral-gpt`` as a user runs it: real processes, real files, real local Ray clusters.

A mistake must cost the user one readable line and exit code 2 before Ray starts or any folder is
made; a driver killed mid-run (SIGKILL takes its local Ray cluster with it) must be continued by
running the same command again; ``--no-monitoring`` must leave nothing behind. Every subprocess gets
its own token cache (``SPECTRAL_GPT_CACHE``) and Ray temp dir (``RAY_TMPDIR``), so the tests never
touch ``~/.cache`` or ``/tmp/ray`` and can tell whether Ray started at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from orchestrator.cli import main
from orchestrator.monitoring import MetricsLogger

CLI = [sys.executable, "-m", "orchestrator.cli"]
SCRIPT = Path(sys.executable).with_name("spectral-gpt")
"""The console script pip installed next to this interpreter (the editable install of the project)."""
ERROR_PREFIX = "spectral-gpt: error:"


# -- helpers ---------------------------------------------------------------------------------------

@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A private, short Ray temp dir (Unix socket paths must stay < 107 bytes, so not tmp_path).

    Ray creates ``<dir>/ray/session_*`` when it starts; an empty dir afterwards proves it never did.
    """
    path = Path(tempfile.mkdtemp(prefix="sgpt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sessions() -> Iterator[list[int]]:
    """Session ids of the drivers a test starts; anything still alive in them is killed at teardown.

    A driver starts its Ray cluster in its own session; Ray workers move to their own process
    groups but stay in the session, so the session is what must be empty when a test ends.
    """
    started: list[int] = []
    yield started
    for sid in started:
        for pid, _, _ in _processes(sid=sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _env(cache: str, ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The test's environment plus a private cache and Ray dir; never join a cluster from outside."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(SPECTRAL_GPT_CACHE=cache, RAY_TMPDIR=str(ray_tmp), COLUMNS="200")
    env.update(extra)
    return env


def _processes(*, sid: int | None = None, pgid: int | None = None) -> list[tuple[int, str, str]]:
    """(pid, state, name) of each process in session ``sid`` or process group ``pgid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        state, group, session = fields[0], int(fields[2]), int(fields[3])
        if (sid is not None and session == sid) or (pgid is not None and group == pgid):
            found.append((int(entry), state, name))
    return found


def _wait_until_gone(deadline_s: float, *, running_only: bool = False, **which: int) -> list[tuple[int, str, str]]:
    """Poll until no process matches ``which`` (zombies count unless ``running_only``); return what
    is left at the deadline. A deadline, not a timing assert: a loaded machine only makes it wait."""
    def left() -> list[tuple[int, str, str]]:
        return [p for p in _processes(**which) if not running_only or p[1] not in "ZX"]

    end = time.monotonic() + deadline_s
    found = left()
    while found and time.monotonic() < end:
        time.sleep(0.2)
        found = left()
    return found


def _assert_one_error_line(stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in stderr


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture
def bad_files(tmp_path: Path) -> Path:
    """Data files a user might point --dataset at by mistake."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "tiny.txt").write_text("a few words only\n")
    return tmp_path


# -- 1. bad input: exit 2, one line, nothing started or written ----------------------------------

IN_PROCESS_MISTAKES = [
    pytest.param(["--experiment", "nope"], "argument --experiment: invalid choice: 'nope'", id="unknown-experiment"),
    pytest.param(["--model", "huge"], "argument --model: invalid choice: 'huge'", id="unknown-model"),
    pytest.param(["--steps", "0"], "argument --steps: '0' must be >= 1", id="steps-0"),
    pytest.param(["--steps", "abc"], "argument --steps: 'abc' is not an integer", id="steps-abc"),
    pytest.param(["--keep-last", "0"], "argument --keep-last: '0' must be >= 1", id="keep-last-0"),
    pytest.param(["--checkpoint-interval", "0"], "argument --checkpoint-interval: '0' must be >= 1",
                 id="checkpoint-interval-0"),
    pytest.param(["--log-interval", "-1"], "argument --log-interval: '-1' must be >= 1", id="log-interval-neg"),
    pytest.param(["--workers", "0"], "argument --workers: '0' must be >= 1", id="workers-0"),
    pytest.param(["--resume", "maybe"], "argument --resume: invalid choice: 'maybe'", id="resume-maybe"),
    pytest.param(["--dataset", "/nonexistent/file.txt"], "dataset file '/nonexistent/file.txt' does not exist",
                 id="dataset-missing"),
    pytest.param(["--dataset", "{tmp}/empty.txt"], "is empty", id="dataset-empty"),
    pytest.param(["--dataset", "{tmp}/latin1.txt"], "is not UTF-8 text", id="dataset-not-utf8"),
    pytest.param(["--dataset", "{tmp}/a_folder"], "is not a regular file", id="dataset-directory"),
    pytest.param(["--name", "../escape"], "name='../escape' must be", id="name-dotdot"),
    pytest.param(["--name", "a/b"], "name='a/b' must be", id="name-slash"),
    pytest.param(["--workers", "2", "--batch-size", "3"], "batch_size=3 must be divisible by workers=2",
                 id="batch-not-divisible"),
    pytest.param(["--lr", "-1"], "lr=-1.0 must be a finite number > 0", id="lr-negative"),
    pytest.param(["--lr", "nan"], "lr=nan must be a finite number > 0", id="lr-nan"),
    pytest.param(["--max-failures", "-5"], "max_failures=-5 must be an integer", id="max-failures-neg"),
]


@pytest.mark.parametrize("argv, expected", IN_PROCESS_MISTAKES)
def test_a_mistake_is_one_error_line_and_exit_2_before_anything_starts(
        argv, expected, bad_files, token_cache, monkeypatch, capsys):
    """In-process for speed (one torch import for the whole battery); the subprocess test below
    proves the same contract end to end for one mistake of each layer."""
    monkeypatch.setenv("SPECTRAL_GPT_CACHE", token_cache)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = bad_files / "out"
    ray_was_up = ray.is_initialized()
    with pytest.raises(SystemExit) as exc:
        main(["train", *(a.format(tmp=bad_files) for a in argv), "--output", str(out)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    _assert_one_error_line(captured.err, expected)
    assert captured.out.strip() == "", "a progress bar or other output for a run that never started"
    assert not out.exists()
    assert ray.is_initialized() == ray_was_up  # no Ray started by a rejected command


SUBPROCESS_MISTAKES = [
    # argparse layer, through the default command (no "train"): our parser prints no usage block.
    pytest.param(["--steps", "abc"], {}, "argument --steps: 'abc' is not an integer", id="argparse-steps-abc"),
    # settings layer: no CUDA here (and none visible), no cluster to join -> Ray would wait forever.
    pytest.param(["train", "--gpu"], {"CUDA_VISIBLE_DEVICES": ""}, "--gpu (use_gpu=True) needs a CUDA GPU",
                 id="gpu-without-cuda"),
    # run layer, after the data is prepared: the "--resume must with no run" one-liner.
    pytest.param(["train", "--resume", "must", "--name", "nothing"], {},
                 "--resume must: no unfinished run named 'nothing'", id="resume-must-no-run"),
    # data layer: the block (64 for tiny) needs 65 tokens; --vocab-size 257 keeps the tokenizer from
    # also warning that a 4-word corpus cannot support the default 1024 tokens.
    pytest.param(["train", "--dataset", "{tmp}/tiny.txt", "--vocab-size", "257"], {},
                 "block_size=64 is larger than the data", id="block-larger-than-data"),
]


@pytest.mark.parametrize("argv, extra_env, expected", SUBPROCESS_MISTAKES)
def test_a_mistake_fails_end_to_end_with_exit_2_one_line_and_no_ray(
        argv, extra_env, expected, bad_files, token_cache, ray_tmp):
    """The real process: exit status, the bytes on stderr, no folder and an untouched Ray temp dir."""
    out = bad_files / "out"
    proc = subprocess.run([*CLI, *(a.format(tmp=bad_files) for a in argv), "--output", str(out)],
                          env=_env(token_cache, ray_tmp, **extra_env), cwd=bad_files,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _assert_one_error_line(proc.stderr, expected)
    assert proc.stdout.strip() == ""
    assert not out.exists()
    assert list(ray_tmp.iterdir()) == [], "Ray started before the mistake was found"


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
    same command: it must find the unfinished run by name and continue from its last checkpoint."""
    out, name, steps = tmp_path / "out", "driverkill", 200
    cmd = [str(SCRIPT), "train", "--steps", str(steps), "--checkpoint-interval", "20", "--eval-interval", "20",
           "--log-interval", "10", "--output", str(out), "--name", name]
    env = _env(token_cache, ray_tmp)
    log1 = tmp_path / "first.log"
    with open(log1, "w") as log:
        first = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=log,
                                 stderr=subprocess.STDOUT)
    sessions.append(first.pid)
    end = time.monotonic() + 240
    committed: list[int] = []
    while not committed and first.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
        committed = _committed_steps(out, name)
    assert committed, f"no checkpoint committed (rc={first.poll()}):\n{_tail(log1)}"

    os.killpg(first.pid, signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL, "the first run ended on its own before the kill"
    # The driver's group (gcs, raylet, agents) dies with it; SIGKILL is not instant on a busy machine,
    # and the dead stay zombies until reaped, so wait for "none running", then for "none at all".
    assert _wait_until_gone(30, running_only=True, pgid=first.pid) == [], "the killed group kept running"
    # Ray workers sit in their own groups of the same session; they exit once their raylet is gone.
    assert _wait_until_gone(60, sid=first.pid) == [], "Ray processes outlived the killed driver"

    runs = list(out.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith(f"{name}_"), runs
    run_dir = runs[0]
    assert not (run_dir / "results.json").exists(), "the killed run had already finished"
    last = max(_committed_steps(out, name))
    assert last >= max(committed)

    second = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    sessions.append(second.pid)
    stdout, stderr = second.communicate(timeout=400)
    assert second.returncode == 0, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    resumed = re.search(r"resumed from step (\d+)", stdout)
    assert resumed, stdout
    start = int(resumed.group(1))
    assert start > 0 and start == last + 1  # the step after the newest committed checkpoint, nothing older

    assert list(out.iterdir()) == [run_dir], "the rerun must continue the run, not start a new folder"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed", results
    assert results["final_metrics"]["total_steps"] == steps
    attempts = json.loads((run_dir / "logs" / "attempts.json").read_text())["attempts"]
    assert attempts[-1]["start_step"] == start and attempts[-1]["attempt"] >= 2, attempts
    rows = MetricsLogger(run_dir / "logs").load_metrics()
    # Every 10th step and the last, each once: rows the killed attempt logged past its checkpoint
    # are superseded by the rerun's, none lost, none doubled.
    assert [r["step"] for r in rows] == [*range(0, steps, 10), steps - 1]
    assert {r["attempt"] for r in rows if r["step"] >= start} == {attempts[-1]["attempt"]}
    # A normal exit shuts its local cluster down too.
    assert _wait_until_gone(60, sid=second.pid) == [], "Ray processes outlived a finished driver"


# -- 4. --no-monitoring --------------------------------------------------------------------------

def test_no_monitoring_trains_and_writes_nothing(tmp_path, token_cache, ray_tmp, sessions):
    """The quick-run mode: a completed run, no output folder, and its private Ray storage removed."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.Popen([*CLI, "train", "--steps", "20", "--no-monitoring", "--output", str(out)],
                            env=_env(token_cache, ray_tmp, TMPDIR=str(scratch)), cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sessions.append(proc.pid)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "run wave_baseline completed: 20 steps" in stdout, stdout
    assert not out.exists()
    assert not list(scratch.glob("spectral-gpt-*")), "the temporary Ray storage was left behind"
    assert not (tmp_path / "experiments").exists()  # nor the default output folder in the cwd
    assert _wait_until_gone(60, sid=proc.pid) == [], "Ray processes outlived a finished driver"
