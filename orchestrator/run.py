"""One run: resolve its folder, connect to Ray, start the monitoring actor, fit a TorchTrainer.

Running the same command again after the driver died continues the unfinished run of that name
(``resume="auto"``): the folder is found by name, a new monitoring actor rebuilds its state from
the files, and the workers restore the latest committed checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from orchestrator.monitor import MonitorActor
from orchestrator.monitoring import create_experiment_directory, generate_experiment_id
from orchestrator.settings import MonitoringSettings, RunSettings, build_run_settings
from orchestrator.worker import train_loop_per_worker
from spectral_gpt.config import ConfigError
from spectral_gpt.data import BatchSampler, TokenDataset

log = logging.getLogger(__name__)

API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"
"""Where Ray processes look for the state API (served by the dashboard)."""

RAY_ENV_DEFAULTS = {
    # report() is a barrier throttled by this poll; 0.5 s keeps the commit window short (spec/ray.md §10).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # The Train page of the dashboard shows runs only with state tracking on (off by default).
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
}


@dataclass
class RunOutcome:
    """What a finished (or failed) run produced, for the CLI and the Python API."""

    status: str
    """``completed``, ``failed`` or ``stopped``."""
    run_dir: Path | None
    final_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    generation_samples: list[str] = field(default_factory=list)
    start_step: int = 0
    """The step this invocation resumed from (0 for a fresh run)."""


def prepare_data(settings: RunSettings) -> TokenDataset:
    """Tokenise (or reuse the cache) and check the model fits the data, before Ray starts."""
    dataset = TokenDataset.prepare(settings.data.dataset, settings.data.cache_dir, settings.data.vocab_size)
    if dataset.vocab_size > settings.spec.model.vocab_size:
        raise ConfigError(f"the tokenizer has {dataset.vocab_size} tokens but the model only "
                          f"{settings.spec.model.vocab_size}; pick vocab_size >= {dataset.vocab_size}")
    spec = settings.spec
    BatchSampler(dataset.train, spec.model.block_size, spec.train.batch_size, spec.train.seed)
    return dataset


def find_unfinished_run(settings: RunSettings) -> Path | None:
    """The newest run folder of this name whose results.json does not say ``completed``."""
    output = Path(settings.output)
    if not output.is_dir():
        return None
    candidates = []
    for folder in output.glob(f"{settings.name}_*"):
        config = folder / "config.json"
        if not folder.is_dir() or not config.is_file():
            continue
        try:
            saved = json.loads(config.read_text())["config"]
        except (OSError, ValueError, KeyError):
            continue
        if saved.get("name") != settings.name or _status(folder) == "completed":
            continue
        candidates.append((config.stat().st_mtime, folder, saved))
    if not candidates:
        return None
    _, folder, saved = max(candidates, key=lambda c: c[0])
    if saved.get("spec") != settings.spec.to_dict():
        raise ConfigError(f"the unfinished run {folder} was started with other settings; rerun it with the "
                          "same flags, or pass --resume never to start a new run")
    return folder


def _status(folder: Path) -> str | None:
    try:
        return json.loads((folder / "results.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def resolve_run_dir(settings: RunSettings) -> Path | None:
    """The run folder (None when monitoring is off), found or created per ``settings.resume``."""
    if not settings.monitoring.enabled:
        if settings.resume == "must":
            raise ConfigError("--resume must needs monitoring (checkpoints on disk); drop --no-monitoring")
        return None
    existing = None if settings.resume == "never" else find_unfinished_run(settings)
    if existing is not None:
        return existing
    if settings.resume == "must":
        raise ConfigError(f"--resume must: no unfinished run named {settings.name!r} in {settings.output}")
    exp_id = generate_experiment_id(settings.name, settings.output)
    return Path(create_experiment_directory(settings.output, exp_id)["root"])


def connect_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit``), else start a private local one.

    ``dashboard=True`` (sweeps) starts the local dashboard on a free port: when a trial actor dies
    (an ASHA stop ends a trial that way), Train's placement-group cleaner asks the state API, which
    the dashboard serves, whether the run's controller is gone; without an answer the dead run keeps
    its workers' CPUs and the trials after it wait forever. Workers find that API through
    RAY_API_SERVER_ADDRESS, inherited from this process while Ray starts, so other Ray instances on
    the machine cannot mislead them.
    """
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    local = dict(address="local", num_cpus=num_cpus, log_to_driver=False, logging_level=logging.WARNING)
    if not dashboard:
        ray.init(include_dashboard=False, **local)
        return
    port = _free_port()
    previous = os.environ.get(API_SERVER_VARIABLE)
    os.environ[API_SERVER_VARIABLE] = f"http://127.0.0.1:{port}"
    try:
        ray.init(include_dashboard=True, dashboard_port=port, **local)
    finally:
        if previous is None:
            del os.environ[API_SERVER_VARIABLE]
        else:
            os.environ[API_SERVER_VARIABLE] = previous


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_training(settings: RunSettings, on_progress: Callable[[dict[str, Any]], None] | None = None,
                 poll_seconds: float = 0.5, *, run_dir: Path | None = None, report_to_ray: bool = False,
                 callbacks: list[Any] | None = None) -> RunOutcome:
    """Train one run to its end on Ray; user mistakes raise ConfigError before anything is written.

    ``run_dir`` pins the run folder (a sweep trial's ``{sweep}/{ablation}``), continuing whatever
    it already holds; by default the folder follows ``settings.resume``. ``report_to_ray`` makes
    every validation a ``ray.train.report`` (a barrier across workers, throttled to the controller's
    poll), which only a Tune trial needs, together with its ``callbacks``.
    """
    dataset = prepare_data(settings)
    if run_dir is None:
        run_dir = resolve_run_dir(settings)
    else:
        run_dir = Path(create_experiment_directory(run_dir.parent, run_dir.name)["root"])
    connect_ray()
    monitor = MonitorActor.remote(str(run_dir) if run_dir else None, settings.to_dict(), dataset.info())
    storage = run_dir / ".ray" if run_dir else Path(tempfile.mkdtemp(prefix="spectral-gpt-"))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings.to_dict(), "monitor": monitor, "report": report_to_ray},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.scaling.workers,
                                               use_gpu=settings.scaling.use_gpu),
        run_config=ray.train.RunConfig(
            # A fresh Ray run per invocation: resume state comes from our checkpoints, never Ray's.
            name=f"invocation_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}", storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=settings.scaling.max_failures),
            callbacks=callbacks or None),
    )
    try:
        fit_error = _fit_with_progress(trainer, monitor, on_progress, poll_seconds)
        return _outcome(monitor, run_dir, fit_error)
    finally:
        ray.kill(monitor)
        if run_dir is None:
            shutil.rmtree(storage, ignore_errors=True)


def _fit_with_progress(trainer: TorchTrainer, monitor: Any, on_progress: Callable | None,
                       poll_seconds: float) -> BaseException | None:
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # reported through the outcome, re-raised nowhere
            errors.append(exc)

    thread = threading.Thread(target=fit, name="spectral-gpt-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll_seconds)
        if on_progress is not None:
            on_progress(ray.get(monitor.get_progress.remote()))
    return errors[0] if errors else None


def _outcome(monitor: Any, run_dir: Path | None, fit_error: BaseException | None) -> RunOutcome:
    final = ray.get(monitor.get_final.remote())
    progress = ray.get(monitor.get_progress.remote())
    start = int(progress.get("resumed_from", 0))
    if final is None:
        error = f"training failed: {fit_error}" if fit_error else "training ended without a result"
        if run_dir is not None:
            ray.get(monitor.finish.remote("failed", {}, None, error))
        return RunOutcome("failed", run_dir, error=error, start_step=start)
    return RunOutcome(final["status"], run_dir, final["final_metrics"], final["error"],
                      final["generation_samples"], start_step=start)


def train_experiment(experiment: str = "wave_baseline", model: str = "tiny", steps: int = 500, *,
                     experiment_dir: str | os.PathLike | None = None, enable_monitoring: bool = True,
                     **settings: Any) -> RunOutcome:
    """The seed's Python entry point: train one ablation on Ray and return its outcome.

    ``experiment_dir`` is the folder that holds run folders (default ``./experiments``);
    ``enable_monitoring=False`` runs without writing any file. Other keyword arguments are those of
    :func:`orchestrator.settings.build_run_settings` (``seed``, ``dataset``, ``scaling``, ``lr`` ...).
    """
    monitoring = settings.pop("monitoring", None) or MonitoringSettings()
    monitoring = dataclasses.replace(monitoring, enabled=enable_monitoring)
    run = build_run_settings(ablation=experiment, size=model, steps=steps, monitoring=monitoring,
                             output=experiment_dir if experiment_dir is not None else "experiments", **settings)
    return run_training(run)
