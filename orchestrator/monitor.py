"""The rank-0 monitoring sink of one run: it owns every writer so training never waits for disk.

:class:`RunMonitor` is a plain class (tested without Ray); :data:`MonitorActor` is the same class as
a ``num_cpus=0`` Ray actor created by the driver on its own node (:func:`start_monitor`), so it
survives worker-group restarts and the loss of a worker node. Rank 0 sends it metric rows
fire-and-forget and hands it checkpoints through the object store; after a restart, rows replayed
past the resumed step are dropped by the attempt token, and a rerun of the driver builds a new
monitor that picks its state up from the files.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.mirror import RunMirror
from orchestrator.monitoring import CheckpointManager, ConfigTracker, MetricsLogger, VisualizationManager
from orchestrator.settings import RunSettings
from orchestrator.storage import is_uri
from orchestrator.telemetry import RunTelemetry
from orchestrator.wire import from_wire
from spectral_gpt.model import build_model_from_config

log = logging.getLogger(__name__)

class RunMonitor:
    """Owns checkpoints (with retention), metrics, plots and config/results of one run folder.

    With monitoring disabled (``run_dir=None``) it writes nothing but still keeps the latest state
    in memory, so a worker failure can resume and the driver still gets progress and results.
    ``started_at`` (the driver's clock when it created the actor) lets a restarted actor take back the
    warnings of this run from training.log. ``background_plots`` draws plots on a thread of their
    own: a plot takes seconds, and the actor runs one call at a time, so rows and checkpoints would
    otherwise queue behind it.
    """

    def __init__(self, run_dir: str | None, settings: dict[str, Any], dataset_info: dict[str, Any],
                 background_plots: bool = False, started_at: float | None = None) -> None:
        self.settings = RunSettings.from_dict(settings)
        # A run at a URI is written in a staging copy on this node: downloaded now, uploaded as it changes.
        self.mirror = RunMirror.attach(run_dir) if run_dir and is_uri(run_dir) else None
        self.run_dir = self.mirror.staging if self.mirror else (Path(run_dir) if run_dir else None)
        self.dataset_info = dataset_info
        self.attempt = 0
        self.progress: dict[str, Any] = {"step": 0, "status": "starting"}
        self.workers: dict[int, int] = {}
        self.train_controller: Any = None
        """The Ray Train controller of this run's fit (an actor handle), once it has started."""
        self.final: dict[str, Any] | None = None
        self.warnings: list[str] = []
        """Problems training went on through (a checkpoint not saved, a corrupt one skipped), each
        once: shown by the CLI, kept in results.json and training.log."""
        self._memory_state: dict[str, Any] | None = None
        self._plot_model: torch.nn.Module | None = None
        self._plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plots") if background_plots else None
        self._plot_jobs: list[Future] = []
        self._sync_lock = threading.Lock()  # the plot thread uploads its PNGs too
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
        # so rank 0's rows and checkpoints keep being accepted, and keeps the warnings of this run
        # since the driver started it (``started_at``), which training.log holds.
        self.attempt = self.metrics.attempt
        if started_at is not None:
            self.warnings = list(dict.fromkeys(self.metrics.warnings_since(datetime.fromtimestamp(started_at))))

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
            self._sync()
        kept = {k: v for k, v in self.progress.items() if k in ("resumed_from", "checkpoint_step")}
        self.progress = {"resumed_from": start_step, **kept, "step": start_step, "status": "running",
                         "start_step": start_step, "attempt": self.attempt, "attempt_started": time.time()}
        return self.attempt

    def register_worker(self, rank: int, pid: int) -> None:
        """Record which process runs each rank (for diagnostics and fault-injection tests)."""
        self.workers[rank] = pid

    def register_train_controller(self, controller: Any) -> None:
        """Keep the handle of the Train controller as it starts, for a driver that must stop the run:
        Train aborts it on Ctrl-C only when ``fit()`` runs in the main thread, and ours does not."""
        self.train_controller = controller

    def get_train_controller(self) -> Any:
        """The handle :meth:`register_train_controller` kept, or None before the controller started."""
        return self.train_controller

    def log(self, attempt: int, rows: list[dict[str, Any]]) -> None:
        """Append metric rows; rows from an attempt that was superseded are dropped."""
        if not self._current(attempt) or not rows:
            return
        self.progress.setdefault("attempt_first_row_at", time.time())
        self.progress.update({k: v for k, v in rows[-1].items() if _is_number(v)})
        self.telemetry.record(rows[-1])
        if self.metrics is None:
            return
        for row in rows:
            self.metrics.log_metrics(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        if self.mirror is not None:
            with self._sync_lock:
                self._note_upload(self.mirror.sync_if_due())

    def save_checkpoint(self, attempt: int, step: int, state: dict[str, Any], val_loss: float | None) -> bool:
        """Commit ``state`` as the checkpoint of ``step`` (atomic, with retention); False if dropped."""
        if not self._current(attempt):
            return False
        state = from_wire(state)
        if self.checkpoints is None:
            self._memory_state = state
        elif self.checkpoints.holds(step):
            # Ray retried this call: the actor died after committing it. Within an attempt steps only grow,
            # and a run resumes from its newest sound checkpoint, so the committed file is this state.
            log.info("checkpoint of step %d is already committed; not written again", step)
        elif self.checkpoints.save_checkpoint(step, state=state, val_loss=val_loss) is None:
            self._warn(*self.checkpoints.last_warnings)
            return False
        self._sync()
        self.progress["checkpoint_step"] = step
        return True

    def visualize(self, attempt: int, step: int, model_state: dict[str, torch.Tensor]) -> None:
        """Draw the training-dynamics and model-internal plots of ``step`` from the rows logged so far
        (on the plot thread with ``background_plots``; :meth:`finish` waits for them)."""
        if not self._current(attempt) or self.plots is None:
            return
        self.metrics.flush_parquet()
        rows = self.metrics.load_metrics()
        if self._plotter is None:
            self._draw(step, rows, model_state)
            return
        self._plot_jobs = [job for job in self._plot_jobs if not job.done()]
        self._plot_jobs.append(self._plotter.submit(self._draw, step, rows, model_state))

    def _current(self, attempt: int) -> bool:
        """Whether a call from rank 0 of ``attempt`` belongs to the attempt now training.

        Only :meth:`begin_attempt` hands out attempts, so one newer than this actor's can only come from
        an actor that Ray restarted without files to read its attempt back from (monitoring off): it
        takes the attempt from that call, and so keeps the checkpoints a later worker failure resumes from.
        """
        if self.metrics is None and attempt > self.attempt:
            self.attempt = attempt
        return attempt == self.attempt

    def _draw(self, step: int, rows: list[dict[str, Any]], model_state: dict[str, Any]) -> None:
        self.plots.generate_training_plots(step, rows)
        if self._plot_model is None:
            self._plot_model = build_model_from_config(self.settings.spec.model)
        self._plot_model.load_state_dict(from_wire(model_state))
        self.plots.generate_model_plots(step, self._plot_model)
        self._sync(warn=False)  # the warnings' writers are the actor thread's; its next sync says it

    def latest_state(self) -> dict[str, Any] | None:
        """The newest committed training state (from disk, or memory when nothing is written)."""
        if self.checkpoints is None:
            return self._memory_state
        payload = self.checkpoints.load_latest_checkpoint()
        fallback = ("starting from step 0" if payload is None
                    else f"resuming from the checkpoint of step {payload['step']} instead")
        self._warn(*(f"{problem}; {fallback}" for problem in self.checkpoints.last_warnings))
        return None if payload is None else payload["state"]

    def finish(self, status: str, final_metrics: dict[str, Any], generation_samples: list[str] | None = None,
               error: str | None = None) -> None:
        """Write results.json with ``status`` and the final metrics; flush every writer."""
        self.final = {"status": status, "final_metrics": final_metrics, "error": error,
                      "generation_samples": generation_samples or [], "warnings": list(self.warnings)}
        self.progress["status"] = status
        if self.run_dir is None:
            return
        self._wait_for_plots()  # they are part of the run
        self.metrics.flush_parquet()
        best = self.checkpoints.best_checkpoint()
        best_location = None if best is None else self.mirror.remote_location(best) if self.mirror else str(best)
        self.tracker.save_results(final_metrics, best_checkpoint=best_location,
                                  generation_samples=generation_samples, status=status, error=error,
                                  warnings=self.warnings)
        self._sync()

    def release(self) -> bool:
        """The run is over: upload what a run at a URI still has only here and drop the staging copy.

        The plots still being drawn finish first (each uploads its PNGs), and no sync runs beside the
        deletion; a later call from rank 0 (an interrupted run's last rows) writes nothing remote."""
        if self.mirror is None:
            return True
        self._wait_for_plots()
        with self._sync_lock:
            return self.mirror.release()

    def _wait_for_plots(self) -> None:
        for job in self._plot_jobs:
            if job.exception() is not None:
                log.warning("plots not drawn (%s)", job.exception())
        self._plot_jobs = []

    def _sync(self, warn: bool = True) -> None:
        """Upload the staging copy of a run at a URI (checkpoints before the manifest that lists them)."""
        if self.mirror is not None:
            with self._sync_lock:
                complete = self.mirror.sync()
                if warn:
                    self._note_upload(complete)

    def _note_upload(self, complete: bool) -> None:
        """Make a failed upload one of the run's warnings: the user reads the remote folder, not this node."""
        if not complete and self.mirror.last_error is not None:
            self._warn(f"run folder not fully uploaded to {self.mirror.location} ({self.mirror.last_error}); "
                       "each later save tries again")

    def _warn(self, *messages: str) -> None:
        """Record each new warning (the writers already logged it) in training.log and for results.json."""
        for message in messages:
            if message not in self.warnings:
                self.warnings.append(message)
                if self.metrics is not None:
                    self.metrics.log_warning(message)

    # -- calls from the driver ---------------------------------------------------------------
    def get_progress(self) -> dict[str, Any]:
        """A snapshot for the driver's progress line."""
        return {**self.progress, "workers": dict(self.workers), "monitor_pid": os.getpid(), "time": time.time(),
                "warnings": list(self.warnings)}

    def get_final(self) -> dict[str, Any] | None:
        """What :meth:`finish` recorded, or None if the workers never finished."""
        return self.final


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


MONITOR_NICENESS = 19
"""The monitoring actor's nice value, the lowest CPU priority (Ray starts its workers at 15): on a
busy machine training wins the cores it shares with plots and file writes, and on an idle core they
run at full speed. Nothing is skipped; a checkpoint may only be committed later."""


def lower_cpu_priority(niceness: int) -> None:
    """Give every thread of this process the nice value ``niceness`` (never a higher priority).

    On Linux a nice value belongs to a thread, so ``os.nice`` alone would leave the threads Ray
    already started (the ones that receive checkpoints) at training's priority.
    """
    tasks = Path("/proc/self/task")
    threads = [int(name) for name in os.listdir(tasks)] if tasks.is_dir() else [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(niceness, os.getpriority(os.PRIO_PROCESS, tid)))
        except ProcessLookupError:  # a thread that ended since the listing
            continue


class _BackgroundMonitor(RunMonitor):
    """RunMonitor in a process that yields the CPU to training: the actor shares the workers' cores."""

    def __init__(self, run_dir: str | None, settings: dict[str, Any], dataset_info: dict[str, Any],
                 started_at: float) -> None:
        lower_cpu_priority(MONITOR_NICENESS)
        super().__init__(run_dir, settings, dataset_info, background_plots=True, started_at=started_at)


MonitorActor = ray.remote(num_cpus=0, max_concurrency=1, max_restarts=-1, max_task_retries=3)(_BackgroundMonitor)
"""RunMonitor as the driver-owned Ray actor of one run, at lower CPU priority than training.

If its process dies, Ray restarts it (the constructor rebuilds its state from the run folder) and
re-sends the calls that were in flight, so training goes on; the resolved metrics keep one row per
step even if a replayed row lands twice. With monitoring off there are no files to rebuild from, so
a restarted actor has no checkpoint to offer until the next save, which it keeps."""


def start_monitor(run_dir: str | None, settings: dict[str, Any], dataset_info: dict[str, Any]) -> Any:
    """Create the run's :data:`MonitorActor` pinned to the caller's node (the driver's, or a Tune trial's).

    Train pins its controller there too: losing that node ends the run anyway, so a monitor there
    outlives the loss of any worker node, with the last committed checkpoint the restarted workers
    need, and writes its files where the driver reads them. Ray's default placement prefers the
    caller's node but may pick another one when it is busy, and that node could be the one lost.
    """
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return MonitorActor.options(scheduling_strategy=here).remote(run_dir, settings, dataset_info, time.time())
