"""What Ray orchestration and monitoring cost: throughput ratios, worker-kill recovery, quick-start time."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from benchmarks.common import benchmark, result
from orchestrator.run import connect_ray, run_training
from orchestrator.settings import (
    MonitoringSettings,
    ScalingSettings,
    build_run_settings,
    default_cpus_per_worker,
    usable_cpus,
)
from spectral_gpt.data import BatchSampler, TokenDataset, validation_batches
from spectral_gpt.training import TrainState, evaluate, train_step


def _bare_loop_tokens_per_sec(settings, threads: int) -> float:
    """The same steps and evaluations as a run, in one process with no Ray and no monitoring."""
    spec = settings.spec
    dataset = TokenDataset.prepare(settings.data.dataset, settings.data.cache_dir, settings.data.vocab_size)
    torch.set_num_threads(threads)
    state = TrainState(spec, torch.device("cuda" if settings.scaling.use_gpu else "cpu"))
    sampler = BatchSampler(dataset.train, spec.model.block_size, spec.train.batch_size, spec.train.seed)
    val = validation_batches(dataset.val, spec.model.block_size, spec.train.batch_size, spec.train.eval_batches)
    started = time.perf_counter()
    while state.step < spec.train.steps:
        result = train_step(state, sampler.batch)
        if (result.step > 0 and result.step % spec.train.eval_interval == 0) or state.step == spec.train.steps:
            state.early_stopping.update(evaluate(state, val), result.step)
    return state.tokens_seen / (time.perf_counter() - started)


@benchmark
def orchestration_overhead(quick: bool = False) -> dict[str, Any]:
    """tokens/s of a real monitored 1-worker run / a bare loop of the same model, batch and threads.

    On a machine with a GPU both sides train on it (the run with ``--gpu``: one worker, NCCL). Both
    train on the threads `spectral-gpt train` gives its one worker: every core but one on a CPU, and
    beside a GPU Ray Train's default, one (the kernels run on the GPU).
    """
    steps = 200 if quick else 1000
    gpu = torch.cuda.is_available()
    threads = 1 if gpu else default_cpus_per_worker(usable_cpus(), 1)
    with tempfile.TemporaryDirectory() as out:
        settings = build_run_settings(steps=steps, output=out, name="overhead", resume="never",
                                      monitoring=MonitoringSettings(checkpoint_interval=250, viz_interval=500),
                                      scaling=ScalingSettings(use_gpu=gpu, cpus_per_worker=None if gpu else threads))
        bare = _bare_loop_tokens_per_sec(settings, threads)
        outcome = run_training(settings)
    ours = outcome.final_metrics["tokens_per_second"]
    return result("orchestration_overhead", ours, "tokens/s", bare, ">= 0.97", steps=steps,
                  threads=threads, worker_threads=outcome.final_metrics.get("torch_threads"),
                  model="tiny wave_baseline", status=outcome.status,
                  device="cuda" if settings.scaling.use_gpu else "cpu")


@benchmark
def recovery_time(quick: bool = False) -> dict[str, Any]:
    """Seconds from SIGKILL of one of 2 workers to the first step of the resumed group.

    Both ends are wall-clock stamps (the kill here, the resumed group's first metric row in the
    monitoring actor), so the driver polls at its usual pace and takes no CPU from the restart.
    """
    steps = 400 if quick else 800
    marks: dict[str, float] = {}

    def watch(progress: dict[str, Any]) -> None:
        if "kill" not in marks and progress.get("checkpoint_step", 0) >= 20 and 1 in progress.get("workers", {}):
            marks["kill"] = time.time()
            os.kill(progress["workers"][1], signal.SIGKILL)
        elif "kill" in marks and "resumed" not in marks and progress.get("attempt", 1) > 1 \
                and "attempt_first_row_at" in progress:
            marks["resumed"] = progress["attempt_first_row_at"]
            marks["group_up"] = progress["attempt_started"]

    with tempfile.TemporaryDirectory() as out:
        settings = build_run_settings(steps=steps, output=out, name="recovery", batch_size=16, resume="never",
                                      monitoring=MonitoringSettings(checkpoint_interval=20, log_interval=1),
                                      scaling=ScalingSettings(workers=2, max_failures=2))
        connect_ray()
        outcome = run_training(settings, on_progress=watch, poll_seconds=0.25)
    nan = float("nan")
    seconds = marks.get("resumed", nan) - marks.get("kill", nan)
    return result("recovery_time", seconds, "s", 7.5, "<= 10 s", steps=steps, status=outcome.status,
                  kill_to_restored_group_s=marks.get("group_up", nan) - marks.get("kill", nan),
                  restored_group_to_first_step_s=marks.get("resumed", nan) - marks.get("group_up", nan),
                  note="baseline = Ray alone restarting a 2-worker group here (spec/ray.md §3)")


@benchmark
def monitoring_overhead(quick: bool = False) -> dict[str, Any]:
    """tokens/s of the same 1-worker run with monitoring on (files, plots, checkpoints) / off.

    Runs alternate in pairs (off-on, then on-off, ...), so a drift in the machine's speed falls on
    both sides of a pair; ``value``/``baseline`` are the geometric means of each side's runs, so
    their ratio is the geometric mean of the pair ratios, and ``ratio_interval`` its ±2 standard
    errors over the pairs (the report calls a goal inside it not settled). ``off_spread`` (fastest /
    slowest run with monitoring off) is the noise the ratio has to be read against. The quick run is the full one
    scaled down, intervals included, so checkpoints and plots land inside the timed loop. On a machine
    with a GPU both sides train on it, as ``train --gpu`` does.
    """
    steps, pairs = (100, 3) if quick else (1000, 5)
    gpu = torch.cuda.is_available()
    intervals = dict(checkpoint_interval=steps // 4, viz_interval=steps // 2, log_interval=10)
    connect_ray()  # Ray's own start-up belongs to neither side
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as out:
        for pair in range(pairs):
            for enabled in ((False, True) if pair % 2 == 0 else (True, False)):
                settings = build_run_settings(steps=steps, output=out, name=f"monitoring_{len(runs)}",
                                              resume="never",
                                              monitoring=MonitoringSettings(enabled=enabled, **intervals),
                                              scaling=ScalingSettings(use_gpu=gpu))
                tokens_per_s = run_training(settings).final_metrics["tokens_per_second"]
                runs.append({"pair": pair, "monitoring": enabled, "tokens_per_s": round(tokens_per_s, 1)})
    on = [r["tokens_per_s"] for r in runs if r["monitoring"]]
    off = [r["tokens_per_s"] for r in runs if not r["monitoring"]]
    pair_ratios = [round(a / b, 4) for a, b in zip(on, off, strict=True)]
    return result("monitoring_overhead", statistics.geometric_mean(on), "tokens/s", statistics.geometric_mean(off),
                  ">= 0.99", steps=steps, pairs=pairs, pair_ratios=pair_ratios,
                  ratio_interval=two_standard_errors(pair_ratios),
                  median_pair_ratio=statistics.median(pair_ratios), off_spread=round(max(off) / min(off), 4),
                  ratio_of_medians=round(statistics.median(on) / statistics.median(off), 4), runs=runs,
                  model="tiny wave_baseline", device="cuda" if gpu else "cpu", **intervals)


def two_standard_errors(ratios: list[float]) -> list[float]:
    """The geometric mean of ``ratios`` divided and multiplied by exp(2 standard errors of their logs):
    roughly where the true ratio lies (about 95 % for normal noise; wider in truth with few pairs)."""
    logs = [math.log(r) for r in ratios]
    centre, half = statistics.fmean(logs), 2 * statistics.stdev(logs) / math.sqrt(len(logs))
    return [round(math.exp(centre - half), 4), round(math.exp(centre + half), 4)]


@benchmark
def quickstart(quick: bool = False) -> dict[str, Any]:
    """Wall seconds of the README's first command after install: `spectral-gpt train` with no flags."""
    del quick  # the command is fixed by the README; it is the measurement
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "spectral-gpt"), "train"],
                              cwd=folder, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    return result("quickstart", seconds, "s", 120.0, "<= 120 s", exit_code=done.returncode,
                  last_line=done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:])
