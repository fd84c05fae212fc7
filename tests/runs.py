"""Settings, readers and process clean-up shared by the tests that train real runs (tests/test_run.py, the
multi-node test) or start Ray clusters of their own (tests/test_job_submit.py)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from orchestrator.monitoring import CheckpointManager
from orchestrator.settings import MonitoringSettings, RunSettings, ScalingSettings, build_run_settings

TWO_WORKER_STEPS = 40
"""Length of the 2-worker runs that are compared, step for step, with the session's uninterrupted one."""


def run_settings(output: Path, cache: str, name: str, *, workers: int = 1, steps: int = 60,
                 cpus_per_worker: int | None = None, **kw) -> RunSettings:
    """A tiny run on the offline corpus: checkpoints every 10 steps, a row every step, validation every 20."""
    return build_run_settings(
        ablation=kw.pop("ablation", "wave_baseline"), steps=steps, batch_size=8, name=name,
        output=Path(output) / name, cache_dir=cache, eval_interval=20,
        monitoring=kw.pop("monitoring", MonitoringSettings(checkpoint_interval=10, log_interval=1,
                                                           viz_interval=1000)),
        scaling=ScalingSettings(workers=workers, max_failures=2, cpus_per_worker=cpus_per_worker), **kw)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of a run's newest checkpoint."""
    return CheckpointManager(run_dir).load_latest_checkpoint()["state"]["model"]


def actors_started(ray_temp_dir: Path | str) -> Counter[str]:
    """How many actors of each class the Ray sessions under a temp dir started (from their worker logs)."""
    started: Counter[str] = Counter()
    for log in Path(ray_temp_dir).glob("**/logs/worker-*.out"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(":actor_name:"):
                started[line.removeprefix(":actor_name:").strip()] += 1
    return started


def session_pids(session: int) -> list[int]:
    """Processes of a session (from /proc): Ray's daemons and workers keep the session of their starter."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == session:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_until_gone(find_pids: Callable[[], list[int]], seconds: float = 20.0) -> list[int]:
    """SIGKILL every process ``find_pids`` names and wait for them to go; returns what still runs after
    ``seconds`` (the test clusters' cleanup: nothing of theirs may outlive a test)."""
    for pid in find_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + seconds
    while find_pids() and time.time() < deadline:
        time.sleep(0.2)
    return find_pids()
