"""The rank-0 monitoring sink of one run: it owns every writer so training never waits for disk.

:class:`RunMonitor` is a plain class (tested without Ray); :data:`MonitorActor` is the same class as
a ``num_cpus=0`` Ray actor created by the driver, so it survives worker-group restarts. Rank 0 sends
it metric rows fire-and-forget and hands it checkpoints through the object store; after a restart,
rows replayed past the resumed step are dropped by the attempt token, and a rerun of the driver
builds a new monitor that picks its state up from the files.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import ray
import torch

from orchestrator.monitoring import CheckpointManager, ConfigTracker, MetricsLogger, VisualizationManager
from orchestrator.settings import RunSettings
from orchestrator.telemetry import RunTelemetry
from spectral_gpt.model import build_model_from_config

log = logging.getLogger(__name__)

class RunMonitor:
    """Owns checkpoints (with retention), metrics, plots and config/results of one run folder.

    With monitoring disabled (``run_dir=None``) it writes nothing but still keeps the latest state
    in memory, so a worker failure can resume and the driver still gets progress and results.
    """

    def __init__(self, run_dir: str | None, settings: dict[str, Any], dataset_info: dict[str, Any]) -> None:
        self.settings = RunSettings.from_dict(settings)
        self.run_dir = Path(run_dir) if run_dir else None
        self.dataset_info = dataset_info
        self.attempt = 0
        self.progress: dict[str, Any] = {"step": 0, "status": "starting"}
        self.workers: dict[int, int] = {}
        self.final: dict[str, Any] | None = None
        self._memory_state: dict[str, Any] | None = None
        self._plot_model: torch.nn.Module | None = None
        run = self.run_dir.name if self.run_dir else self.settings.name
        self.telemetry = RunTelemetry(run, self.settings.ablation)
        if self.run_dir is None:
            self.checkpoints = self.metrics = self.plots = self.tracker = None
            return
        mon = self.settings.monitoring
        self.checkpoints = CheckpointManager(self.run_dir, save_interval=mon.checkpoint_interval,
                                             keep_last_n=mon.keep_last)
        self.metrics = MetricsLogger(self.run_dir / "logs", log_interval=mon.log_interval)
        self.plots = VisualizationManager(self.run_dir / "visualizations", viz_interval=mon.viz_interval)
        self.tracker = ConfigTracker(self.run_dir)
        # A restarted actor (Ray re-runs this constructor) continues the attempt its files record,
        # so rank 0's rows and checkpoints keep being accepted.
        self.attempt = self.metrics.attempt

    # -- calls from rank 0 -------------------------------------------------------------------
    def begin_attempt(self, start_step: int, hardware: dict[str, Any]) -> int:
        """Start a new worker-group attempt at ``start_step``; returns the token its rows carry.

        ``hardware`` comes from rank 0, which sees the GPUs the run trains on (the actor has none).
        """
        self.attempt += 1
        if self.metrics is not None:
            self.attempt = self.metrics.begin_attempt(start_step)
            if not self.tracker.load_config():
                model = build_model_from_config(self.settings.spec.model)
                self.tracker.save_config(self.settings.to_dict(), model=model,
                                         dataset_info=self.dataset_info, hardware=hardware)
        kept = {k: v for k, v in self.progress.items() if k in ("resumed_from", "checkpoint_step")}
        self.progress = {"resumed_from": start_step, **kept, "step": start_step, "status": "running",
                         "start_step": start_step, "attempt": self.attempt, "attempt_started": time.time()}
        return self.attempt

    def register_worker(self, rank: int, pid: int) -> None:
        """Record which process runs each rank (for diagnostics and fault-injection tests)."""
        self.workers[rank] = pid

    def log(self, attempt: int, rows: list[dict[str, Any]]) -> None:
        """Append metric rows; rows from an attempt that was superseded are dropped."""
        if attempt != self.attempt or not rows:
            return
        self.progress.update({k: v for k, v in rows[-1].items() if _is_number(v)})
        self.telemetry.record(rows[-1])
        if self.metrics is None:
            return
        for row in rows:
            self.metrics.log_metrics(int(row["step"]), {k: v for k, v in row.items() if k != "step"})

    def save_checkpoint(self, attempt: int, step: int, state: dict[str, Any], val_loss: float | None) -> bool:
        """Commit ``state`` as the checkpoint of ``step`` (atomic, with retention); False if dropped."""
        if attempt != self.attempt:
            return False
        if self.checkpoints is None:
            self._memory_state = state
        elif self.checkpoints.save_checkpoint(step, state=state, val_loss=val_loss) is None:
            return False
        self.progress["checkpoint_step"] = step
        return True

    def visualize(self, attempt: int, step: int, model_state: dict[str, torch.Tensor]) -> None:
        """Draw the training-dynamics and model-internal plots of ``step``."""
        if attempt != self.attempt or self.plots is None:
            return
        self.metrics.flush_parquet()
        self.plots.generate_training_plots(step, self.metrics.load_metrics())
        if self._plot_model is None:
            self._plot_model = build_model_from_config(self.settings.spec.model)
        self._plot_model.load_state_dict(model_state)
        self.plots.generate_model_plots(step, self._plot_model)

    def latest_state(self) -> dict[str, Any] | None:
        """The newest committed training state (from disk, or memory when nothing is written)."""
        if self.checkpoints is None:
            return self._memory_state
        payload = self.checkpoints.load_latest_checkpoint()
        return None if payload is None else payload["state"]

    def finish(self, status: str, final_metrics: dict[str, Any], generation_samples: list[str] | None = None,
               error: str | None = None) -> None:
        """Write results.json with ``status`` and the final metrics; flush every writer."""
        self.final = {"status": status, "final_metrics": final_metrics, "error": error,
                      "generation_samples": generation_samples or []}
        self.progress["status"] = status
        if self.run_dir is None:
            return
        self.metrics.flush_parquet()
        best = self.checkpoints.best_checkpoint()
        self.tracker.save_results(final_metrics, best_checkpoint=str(best) if best else None,
                                  generation_samples=generation_samples, status=status, error=error)

    # -- calls from the driver ---------------------------------------------------------------
    def get_progress(self) -> dict[str, Any]:
        """A snapshot for the driver's progress line."""
        return {**self.progress, "workers": dict(self.workers), "monitor_pid": os.getpid(), "time": time.time()}

    def get_final(self) -> dict[str, Any] | None:
        """What :meth:`finish` recorded, or None if the workers never finished."""
        return self.final


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


MonitorActor = ray.remote(num_cpus=0, max_concurrency=1, max_restarts=-1, max_task_retries=3)(RunMonitor)
"""RunMonitor as the driver-owned Ray actor of one run.

If its process dies, Ray restarts it (the constructor rebuilds its state from the run folder) and
re-sends the calls that were in flight, so training goes on; the resolved metrics keep one row per
step even if a replayed row lands twice. With monitoring off there are no files to rebuild from, so
a restarted actor has no checkpoint to offer until the next save."""
