"""ConfigTracker, run ids and folder layout on real files, real git repositories and real processes."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from orchestrator.monitoring import (
    ConfigTracker,
    atomic,
    collect_hardware_info,
    create_experiment_directory,
    generate_experiment_id,
    get_git_info,
    memory_usage_mb,
)

REPO = Path(__file__).resolve().parents[1]
ID_PATTERN = re.compile(
    r"^(?P<name>.+)_(?P<date>\d{8})_(?P<time>\d{6})_(?P<git>[0-9a-f]{7,}|unknown)(-\d+)?$")


def _strict(path: Path) -> dict:
    def refuse(token: str) -> float:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_config_round_trips_with_git_hardware_model_and_dataset(tmp_path):
    from spectral_gpt import build_model

    model = build_model("tiny", "wave_baseline", vocab_size=128)
    tracker = ConfigTracker(tmp_path / "wave_baseline_20240101_000000_abc1234")
    config = {"experiment_name": "wave_baseline", "training_config": {"lr": 6e-4, "min_delta": float("nan")}}
    assert tracker.save_config(config, model=model, dataset_info={"train_tokens": 900, "val_tokens": 100})

    saved = _strict(tracker.config_file)
    assert saved == tracker.load_config()
    assert saved["experiment_id"] == "wave_baseline_20240101_000000_abc1234"
    assert saved["config"] == {"experiment_name": "wave_baseline",
                               "training_config": {"lr": 6e-4, "min_delta": None}}
    assert saved["git"]["hash"] == saved["git_hash"] and set(saved["git"]) == {"hash", "dirty"}
    hardware = saved["hardware"]
    for key in ("platform", "python_version", "cpu_count", "memory_gb", "gpu_available", "gpu_count",
                "gpu_model", "cuda_version", "torch_version", "ray_version"):
        assert key in hardware, key
    assert hardware["torch_version"] == torch.__version__ and hardware["memory_gb"] > 0
    assert hardware["gpu_available"] == torch.cuda.is_available()
    assert "ray" not in sys.modules or hardware["ray_version"]
    assert saved["model"]["type"] == "WaveGPT"
    assert saved["model"]["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert saved["model"]["num_trainable_parameters"] <= saved["model"]["num_parameters"]
    assert saved["model"]["vocab_size"] == 128 and saved["model"]["attention"] == "interference"
    assert saved["dataset"] == {"train_tokens": 900, "val_tokens": 100}


def test_hardware_from_the_training_worker_is_used_as_given(tmp_path):
    tracker = ConfigTracker(tmp_path)
    worker = dict(collect_hardware_info(), gpu_available=True, gpu_count=4, gpu_model="NVIDIA H100")
    tracker.save_config({"a": 1}, hardware=worker)
    assert tracker.load_config()["hardware"]["gpu_model"] == "NVIDIA H100"


def test_results_record_status_best_checkpoint_and_samples(tmp_path):
    tracker = ConfigTracker(tmp_path)
    assert tracker.load_results() == {} and tracker.load_config() == {}
    best = tmp_path / "checkpoints" / "checkpoint_step_400.pt"
    tracker.save_results({"val_loss": 2.5, "perplexity": float("inf")}, best_checkpoint=best,
                         generation_samples=["To be or not"])
    results = _strict(tracker.results_file)
    assert results == tracker.load_results()
    assert results["status"] == "completed" and results["error"] is None
    assert results["final_metrics"] == {"val_loss": 2.5, "perplexity": None}
    assert results["best_checkpoint"] == str(best) and results["generation_samples"] == ["To be or not"]
    assert {"experiment_id", "timestamp"} <= set(results)

    tracker.save_results({"loss": float("nan")}, status="failed", error="loss became NaN at step 120")
    failed = tracker.load_results()
    assert failed["status"] == "failed" and failed["error"] == "loss became NaN at step 120"
    with pytest.raises(ValueError, match="status='done'"):
        tracker.save_results({}, status="done")


def test_a_refused_write_is_a_warning_and_leaves_the_old_file(tmp_path, monkeypatch, caplog):
    tracker = ConfigTracker(tmp_path)
    tracker.save_results({"val_loss": 3.0}, status="stopped")

    def refuse(path, mode):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(atomic, "open_output", refuse)
    with caplog.at_level(logging.WARNING):
        assert tracker.save_results({"val_loss": 1.0}) is None
        assert tracker.save_config({"a": 1}, hardware={}) is None
    assert "Read-only file system" in caplog.text
    assert tracker.load_results()["status"] == "stopped" and not tracker.config_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_memory_usage_reports_resident_memory():
    usage = memory_usage_mb()
    assert usage["memory_mb"] > 10


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_git_info_reads_the_given_repository_and_its_dirty_flag(tmp_path):
    assert get_git_info(tmp_path) == {"hash": "unknown", "dirty": None}
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD").strip()
    (tmp_path / "untracked.txt").write_text("outputs do not make a tree dirty")
    assert get_git_info(tmp_path) == {"hash": head, "dirty": False}
    (tmp_path / "a.txt").write_text("two")
    assert get_git_info(tmp_path) == {"hash": head, "dirty": True}


def test_experiment_ids_have_the_seed_format_and_sanitised_names(tmp_path):
    experiment_id = generate_experiment_id("wave_baseline")
    match = ID_PATTERN.match(experiment_id)
    assert match and match["name"] == "wave_baseline"
    assert match["git"] == get_git_info(REPO / "orchestrator")["hash"]
    odd = generate_experiment_id("../my run/é?" + "x" * 200)
    assert "/" not in odd and not odd.startswith(".") and re.fullmatch(r"[A-Za-z0-9._-]+", odd)
    assert ID_PATTERN.match(odd)["name"] == "_my_run___" + "x" * 90
    with pytest.raises(ValueError, match="empty"):
        generate_experiment_id("...")


def test_ids_are_unique_within_one_process():
    ids = [generate_experiment_id("same") for _ in range(5)]
    assert len(set(ids)) == 5 and all(ID_PATTERN.match(i)["name"] == "same" for i in ids)


_CLAIMER = textwrap.dedent("""
    import os, sys, time
    from orchestrator.monitoring import generate_experiment_id
    base, barrier = sys.argv[1], sys.argv[2]
    open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(barrier, "go")):
        time.sleep(0.001)
    print("\\n".join(generate_experiment_id("trial", base_dir=base) for _ in range(4)))
""")


def test_ids_are_unique_across_processes_that_share_the_output_folder(tmp_path):
    base, barrier = tmp_path / "experiments", tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(base), str(barrier)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < 2:  # both imported: now they claim at the same moment
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    (barrier / "go").touch()
    ids = [line for p in procs for line in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert len(ids) == 8 and len(set(ids)) == 8
    assert sorted(p.name for p in base.iterdir()) == sorted(ids)
    assert any(re.search(r"-\d+$", i) for i in ids)


def test_create_experiment_directory_makes_the_seed_layout_and_can_reopen_it(tmp_path):
    dirs = create_experiment_directory(tmp_path, "run_20240101_000000_abc1234")
    root = tmp_path / "run_20240101_000000_abc1234"
    assert dirs == {"root": root, "checkpoints": root / "checkpoints", "logs": root / "logs",
                    "visualizations": root / "visualizations"}
    assert all(p.is_dir() for p in dirs.values())
    assert not (root / "config.json").exists() and not (root / "results.json").exists()
    (dirs["logs"] / "metrics.jsonl").write_text("{}\n")
    assert create_experiment_directory(str(tmp_path), "run_20240101_000000_abc1234") == dirs
    assert (dirs["logs"] / "metrics.jsonl").read_text() == "{}\n"
