"""Settings, readers and process clean-up shared by the tests that train real runs (tests/test_run.py, the
multi-node test) or start drivers and Ray clusters of their own (test_cli, test_sweep, test_job_submit)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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


class Process(NamedTuple):
    """One process as /proc shows it: its state letter (Z: zombie) and the first word of its command line
    (Ray names its workers there, ``ray::RayTrainWorker``), else the kernel's short name."""

    pid: int
    state: str
    command: str


def processes(*, sid: int | None = None, pgid: int | None = None) -> list[Process]:
    """The processes of session ``sid`` or process group ``pgid``. A driver started in a session of its
    own keeps its whole local Ray there: Ray's daemons and workers move to groups of their own but
    stay in the session of their starter."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            argv0 = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, group, session = fields[0], int(fields[2]), int(fields[3])
        if (sid is not None and session == sid) or (pgid is not None and group == pgid):
            found.append(Process(int(entry), state, argv0 or stat[stat.index("(") + 1:stat.rindex(")")]))
    return found


def session_pids(session: int) -> list[int]:
    """Processes of a session, zombies included."""
    return [p.pid for p in processes(sid=session)]


def wait_until_gone(deadline_s: float, *, running_only: bool = False, **which: int) -> list[Process]:
    """Poll until no process matches ``which`` (zombies count unless ``running_only``); return what
    is left at the deadline. A deadline, not a timing assert: a loaded machine only makes it wait."""
    return _poll_until_none(lambda: [p for p in processes(**which) if not running_only or p.state not in "ZX"],
                            deadline_s)


def _poll_until_none(find: Callable[[], list], seconds: float) -> list:
    """What ``find`` still returns after polling it until it returns nothing or ``seconds`` pass."""
    end = time.monotonic() + seconds
    found = find()
    while found and time.monotonic() < end:
        time.sleep(0.2)
        found = find()
    return found


def driver_env(cache: str, ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The test's environment for a driver process: a private cache and Ray temp dir, never a cluster
    from outside, and the CLI's own defaults rather than the test session's."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", None)
    env.update(SPECTRAL_GPT_CACHE=cache, RAY_TMPDIR=str(ray_tmp), COLUMNS="200")
    env.update(extra)
    return env


def kill_until_gone(find_pids: Callable[[], list[int]], seconds: float = 20.0) -> list[int]:
    """SIGKILL every process ``find_pids`` names and wait for them to go; returns what still runs after
    ``seconds`` (the test clusters' cleanup: nothing of theirs may outlive a test)."""
    for pid in find_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return _poll_until_none(find_pids, seconds)
