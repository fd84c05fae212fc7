"""What a real run costs besides compute: the step that waits for a checkpoint, and worker memory.

Both run ``orchestrator.run.run_training`` (1 worker, monitoring on) and read the run's own metric
rows: every row carries ``step_time_s`` (the wall time of that loop iteration on rank 0) and
``memory_mb`` (the worker's resident set on a CPU, CUDA memory allocated on a GPU).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import benchmark, result
from orchestrator.monitoring import CheckpointManager, MetricsLogger
from orchestrator.run import RunOutcome, run_training
from orchestrator.settings import MonitoringSettings, ScalingSettings, build_run_settings

WARMUP_STEPS = 3
"""Rows left out of every median: the first steps allocate and warm caches."""
STALL_WINDOW = 3
"""Steps after a checkpoint hand-off that count as "during the save" (the actor writes meanwhile)."""


def _run(out: str, name: str, size: str, steps: int, batch_size: int,
         monitoring: MonitoringSettings) -> tuple[RunOutcome, list[dict[str, Any]]]:
    """One monitored 1-worker run on the offline corpus (on the GPU where there is one); returns its
    outcome and resolved metric rows."""
    settings = build_run_settings(size=size, steps=steps, batch_size=batch_size, vocab_size=1024, output=out,
                                  name=name, resume="never", eval_interval=steps, monitoring=monitoring,
                                  scaling=ScalingSettings(use_gpu=torch.cuda.is_available()))
    outcome = run_training(settings)
    if outcome.status != "completed" or outcome.run_dir is None:
        raise RuntimeError(f"benchmark run {name} ended {outcome.status}: {outcome.error}")
    return outcome, MetricsLogger(outcome.run_dir / "logs").load_metrics()


def _timed_save(run_dir: Path, scratch: Path) -> tuple[float, float]:
    """(seconds, MB) of one save of the run's latest state by the same CheckpointManager the actor uses."""
    state = CheckpointManager(run_dir).load_latest_checkpoint()["state"]
    manager = CheckpointManager(scratch)
    started = time.perf_counter()
    path = manager.save_checkpoint(0, state=state)
    return time.perf_counter() - started, path.stat().st_size / 2**20


@benchmark
def checkpoint_stall(quick: bool = False) -> dict[str, Any]:
    """Slowest training step while a checkpoint is being saved / the median step, in a real run.

    The small model (vocab 1024, ~15M parameters, ~180 MB of state with AdamW moments) makes a save
    take well over 100 ms. Evaluation and plots happen only at the last step, which is left out, so
    the steps compared differ only by the checkpoint hand-off (CPU copy, object store) and the
    actor writing next to the worker.
    """
    if torch.cuda.is_available():  # ~25 ms steps: saves further apart than one save takes (~0.3 s)
        steps, interval, batch = (60, 20, 1) if quick else (200, 40, 4)
    else:
        steps, interval, batch = (20, 6, 1) if quick else (120, 20, 2)
    with tempfile.TemporaryDirectory() as out:
        outcome, rows = _run(out, "stall", "small", steps, batch, MonitoringSettings(
            checkpoint_interval=interval, log_interval=1, viz_interval=steps, keep_last=2))
        save_s, save_mb = _timed_save(outcome.run_dir, Path(out) / "timed_save")
    times = {row["step"]: row["step_time_s"] for row in rows}
    steady = {s: t for s, t in times.items() if WARMUP_STEPS <= s < steps - 1}
    saves = [c for c in range(interval, steps, interval) if c + STALL_WINDOW < steps - 1]  # whole window steady
    during = {c: [steady[c + k] for k in range(1, STALL_WINDOW + 1) if c + k in steady] for c in saves}
    median = statistics.median(steady.values())
    slowest = max(max(window) for window in during.values())
    return result("checkpoint_stall", slowest, "s", median, "<= 1.5", median_step_s=median,
                  step_times_after_each_save_s={str(c): window for c, window in during.items()},
                  slowest_step_without_save_s=max(t for s, t in steady.items()
                                                  if not any(0 < s - c <= STALL_WINDOW for c in saves)),
                  one_save_s=save_s, checkpoint_mb=save_mb, steps=steps, checkpoint_interval=interval,
                  batch_size=batch, model="small wave_baseline, vocab 1024", stall_window_steps=STALL_WINDOW)


def _median_memory(rows: list[dict[str, Any]], start: float, stop: float) -> float:
    """Median ``memory_mb`` of the rows between fractions ``start`` and ``stop`` of the run."""
    n = len(rows)
    return statistics.median(r["memory_mb"] for r in rows[int(start * n):max(int(stop * n), int(start * n) + 1)])


def _peak_mb(outcome: RunOutcome, rows: list[dict[str, Any]]) -> float:
    """The worker's peak resident set (its own ``peak_memory_mb``), else the largest logged one."""
    return outcome.final_metrics.get("peak_memory_mb") or max(r["memory_mb"] for r in rows)


@benchmark
def memory(quick: bool = False) -> dict[str, Any]:
    """Worker memory: resident set at the end of a long tiny run / after its warm-up, and peaks.

    The long run logs a row every step, checkpoints 20 times and plots 4 times, so anything the worker
    kept per row or per checkpoint would show as growth. Warm-up = the median over the second tenth of
    the run's rows, end = the median over the last tenth before the final step. Peaks are each worker's
    peak resident set (``peak_memory_mb``) for the tiny and (not with ``--quick``, for time) the small
    model; every run pays ~20 s of Ray Train start and teardown here.
    """
    long_steps = 100 if quick else 3000
    with tempfile.TemporaryDirectory() as out:
        tiny, rows = _run(out, "memory_tiny", "tiny", long_steps, 16, MonitoringSettings(
            checkpoint_interval=long_steps // 20, log_interval=1, viz_interval=long_steps // 4))
        peaks, models = {"tiny": _peak_mb(tiny, rows)}, {"tiny": f"wave_baseline, batch 16, {long_steps} steps"}
        if not quick:
            small, small_rows = _run(out, "memory_small", "small", 20, 2, MonitoringSettings(
                checkpoint_interval=5, log_interval=1, viz_interval=20))
            peaks["small"] = _peak_mb(small, small_rows)
            models["small"] = "wave_baseline, vocab 1024, batch 2, 20 steps"
    rows = rows[:-1]
    warm, end = _median_memory(rows, 0.1, 0.2), _median_memory(rows, 0.9, 1.0)
    return result("memory", end, "MB", warm, "<= 1.05", peak_rss_mb=peaks, rss_after_warmup_mb=warm,
                  rss_at_end_mb=end, min_rss_mb=min(r["memory_mb"] for r in rows),
                  max_rss_mb=max(r["memory_mb"] for r in rows), long_run_steps=long_steps,
                  long_run_worker_seconds=tiny.final_metrics.get("total_time_seconds"),
                  checkpoints=20, plots=4, log_interval=1, models=models)
