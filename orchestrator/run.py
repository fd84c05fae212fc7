"""One run: resolve its folder (:mod:`orchestrator.run_folder`), connect to Ray, start the monitoring
actor, fit a TorchTrainer.

Running the same command again after the driver died continues the unfinished run of that name
(``resume="auto"``): the folder is found by name, a new monitoring actor rebuilds its state from
the files, and the workers restore the latest committed checkpoint.
"""

from __future__ import annotations

import dataclasses
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
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.execution.callback import ControllerCallback

from orchestrator.config_file import current_runtime_env
from orchestrator.monitor import start_monitor
from orchestrator.monitoring import create_experiment_directory
from orchestrator.run_folder import new_run_dir, remove_if_never_started, run_to_continue, sole_driver
from orchestrator.settings import (
    RunSettings,
    build_run_settings,
    check_cluster_address,
    check_folders,
    default_cpus_per_worker,
)
from orchestrator.storage import first_line, is_uri, ray_train_storage
from orchestrator.worker import train_loop_per_worker
from spectral_gpt.config import ConfigError
from spectral_gpt.data import BatchSampler, TokenDataset, validation_batches

log = logging.getLogger(__name__)

RELEASE_TIMEOUT_S = 600.0
"""How long the driver waits for the last upload of a run at a URI before giving up on it."""

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

LOCAL_RAY_ENV_DEFAULTS = {
    # Train starts a PreemptionWatcher actor (a fresh Python process) with every worker group, to hear
    # of cloud nodes being drained. A private local instance has no such nodes; on 2 cores that process
    # slowed each restart after a worker died by about a second (benchmarks: recovery_time).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


class DatasetFreeTrainer(TorchTrainer):
    """A TorchTrainer that starts no Ray Data ``DatasetManager`` actor when it is given no datasets.

    Ray Train 2.60 starts one with every worker group, datasets or not: a fresh Python process that
    imports Ray Data, 2 s of CPU on the cores a restarting group needs (measured after a worker kill
    on 2 cores: 2.0 of the 19 CPU seconds between the kill and the first resumed step). Our workers
    read their own token memmaps, so the callback that owns it has nothing to do. Ray is pinned
    below 2.61 (pyproject.toml), where ``_create_default_callbacks`` is the place Train builds it.
    """

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]


class ControllerHandOff(ControllerCallback):
    """Hands the Train controller's own actor handle to the run's monitoring actor as it starts.

    ``fit()`` runs in a thread of the driver (the main thread polls progress), where Ray Train sets
    no Ctrl-C handler: without the handle, an interrupted Python API call (a notebook's "interrupt
    kernel") would return while the controller, its workers and their CPUs trained on. Run configs
    take such internal callbacks as they are (``DataParallelTrainer._create_default_callbacks``).
    """

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def after_controller_start(self, train_run_context: Any) -> None:
        self.monitor.register_train_controller.remote(ray.get_runtime_context().current_actor)


ACTOR_SILENCE_S = 120.0
"""How long the driver waits for the monitoring actor's progress before saying so: the actor answers
one call at a time, so a long upload or a stuck disk holds its answers, and the bar would just stop."""
ABORT_TIMEOUT_S = 30.0
"""Longest wait for an interrupted run's controller to start, then to abort its workers."""


@dataclass
class RunOutcome:
    """What a finished (or failed) run produced, for the CLI and the Python API."""

    status: str
    """``completed``, ``failed`` or ``stopped``."""
    run_dir: Path | str | None
    """The run folder: a path, or a URI when ``--output`` is storage; None with monitoring off."""
    final_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    generation_samples: list[str] = field(default_factory=list)
    start_step: int = 0
    """The step this invocation resumed from (0 for a fresh run)."""
    warnings: list[str] = field(default_factory=list)
    """What training went on through: a checkpoint the disk refused, a corrupt one skipped at resume."""


def check_before_start(settings: RunSettings) -> None:
    """The checks that need neither the data nor Ray: the cluster in RAY_ADDRESS answers, and the
    output and cache folders can be written. The first step of every run and sweep."""
    check_cluster_address()
    check_folders(settings)


def prepare_data(settings: RunSettings) -> TokenDataset:
    """Tokenise (or reuse the cache) and check the model fits the data, before Ray starts.

    A corpus the run cannot use (too small for a batch of windows) is a user mistake, and its
    cache entry, if this call made it, is removed again: a rejected command leaves nothing behind.
    """
    cache = Path(settings.data.cache_dir)
    cached_before = set(os.listdir(cache)) if cache.is_dir() else set()
    dataset = TokenDataset.prepare(settings.data.dataset, settings.data.cache_dir, settings.data.vocab_size)
    spec = settings.spec
    try:
        if dataset.vocab_size > spec.model.vocab_size:
            raise ConfigError(f"the tokenizer has {dataset.vocab_size} tokens but the model only "
                              f"{spec.model.vocab_size}; pick vocab_size >= {dataset.vocab_size}")
        BatchSampler(dataset.train, spec.model.block_size, spec.train.batch_size, spec.train.seed)
        validation_batches(dataset.val, spec.model.block_size, spec.train.batch_size, 1)  # one batch must fit
    except ConfigError:
        if dataset.directory.name not in cached_before:
            shutil.rmtree(dataset.directory, ignore_errors=True)
        raise
    return dataset


def connect_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit``), else start a private local one.

    ``dashboard=True`` (sweeps) starts the local dashboard on a free port: when a trial actor dies
    (an ASHA stop ends a trial that way), Train's placement-group cleaner asks the state API, which
    the dashboard serves, whether the run's controller is gone; without an answer the dead run keeps
    its workers' CPUs and the trials after it wait forever. Workers find that API through
    RAY_API_SERVER_ADDRESS, inherited from this process while Ray starts, so other Ray instances on
    the machine cannot mislead them. Inside :func:`orchestrator.config_file.driver_runtime_env`
    (``--runtime-env``) Ray is started or joined with that runtime env.
    """
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    runtime_env = current_runtime_env()
    if ray.is_initialized():
        if runtime_env:
            log.warning("Ray is already initialised in this process; the runtime env is not applied")
        return
    if os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(log_to_driver=False, runtime_env=runtime_env)
        except ConnectionError as exc:  # 'auto' with no cluster on this node
            raise ConfigError(f"RAY_ADDRESS={os.environ['RAY_ADDRESS']!r}: {first_line(exc)}") from None
        return
    for key, value in LOCAL_RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    local = dict(address="local", num_cpus=num_cpus, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env=runtime_env)
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


def with_worker_cpus(settings: RunSettings) -> RunSettings:
    """``settings`` with the CPUs per worker decided where the user left them to us: CPU workers on a
    local instance share its cores but one (:func:`default_cpus_per_worker`); elsewhere Ray decides."""
    scaling = settings.scaling
    if scaling.cpus_per_worker is not None or scaling.use_gpu or os.environ.get("RAY_ADDRESS"):
        return settings
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) != 1:  # a cluster joined from Python: its nodes differ, so Ray's default of 1 CPU
        return settings
    per_worker = default_cpus_per_worker(int(nodes[0]["Resources"].get("CPU", 1)), scaling.workers)
    return dataclasses.replace(settings, scaling=dataclasses.replace(scaling, cpus_per_worker=per_worker))


def run_training(settings: RunSettings, on_progress: Callable[[dict[str, Any]], None] | None = None,
                 poll_seconds: float = 0.5, *, run_dir: Path | None = None, report_to_ray: bool = False,
                 callbacks: list[Any] | None = None) -> RunOutcome:
    """Train one run to its end on Ray; user mistakes raise ConfigError before anything is written.

    ``run_dir`` pins the run folder (a sweep trial's ``{sweep}/{ablation}``), continuing whatever
    it already holds; by default the folder follows ``settings.resume``. ``report_to_ray`` makes
    every validation a ``ray.train.report`` (a barrier across workers, throttled to the controller's
    poll), which only a Tune trial needs, together with its ``callbacks``.
    """
    check_before_start(settings)
    continued = run_to_continue(settings) if run_dir is None else None
    dataset = prepare_data(settings)
    if run_dir is None:
        run_dir = continued if continued is not None else new_run_dir(settings)
    else:
        run_dir = Path(create_experiment_directory(run_dir.parent, run_dir.name)["root"])
    with sole_driver(run_dir):
        try:
            return _train(settings, dataset, run_dir, on_progress, poll_seconds, report_to_ray, callbacks)
        except BaseException:
            remove_if_never_started(run_dir)
            raise


def _train(settings: RunSettings, dataset: TokenDataset, run_dir: Path | str | None,
           on_progress: Callable[[dict[str, Any]], None] | None, poll_seconds: float, report_to_ray: bool,
           callbacks: list[Any] | None) -> RunOutcome:
    connect_ray()
    settings = with_worker_cpus(settings)
    monitor = start_monitor(str(run_dir) if run_dir else None, settings.to_dict(), dataset.info())
    storage, storage_fs = (ray_train_storage(str(run_dir)) if run_dir
                           else (tempfile.mkdtemp(prefix="spectral-gpt-"), None))
    trainer = DatasetFreeTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings.to_dict(), "monitor": monitor, "report": report_to_ray},
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.scaling.workers, use_gpu=settings.scaling.use_gpu,
            resources_per_worker=(None if settings.scaling.cpus_per_worker is None
                                  else {"CPU": settings.scaling.cpus_per_worker})),
        run_config=ray.train.RunConfig(
            # A fresh Ray run per invocation: resume state comes from our checkpoints, never Ray's.
            name=f"invocation_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}",
            storage_path=storage, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=settings.scaling.max_failures),
            callbacks=[*(callbacks or []), ControllerHandOff(monitor)]),
    )
    outcome = None
    try:
        fit_error = _fit_with_progress(trainer, monitor, on_progress, poll_seconds)
        outcome = _outcome(monitor, run_dir, fit_error, settings.scaling.max_failures)
    finally:
        if run_dir is not None and is_uri(str(run_dir)):
            problem = _release_staging(monitor, str(run_dir))
            if problem is not None and outcome is not None:
                outcome.warnings.append(problem)
        ray.kill(monitor)
        if run_dir is None:
            shutil.rmtree(storage, ignore_errors=True)
    return outcome


def _release_staging(monitor: Any, location: str) -> str | None:
    """Have the monitoring actor upload its last files and drop its staging copy of a run at a URI;
    what went wrong, if the remote folder may lack them."""
    try:
        if ray.get(monitor.release.remote(), timeout=RELEASE_TIMEOUT_S):
            return None
        problem = "its last files could not be uploaded"
    except ray.exceptions.RayError as exc:  # a dead actor's files are remote up to its last sync
        problem = f"the monitoring actor did not upload its last files ({_actor_failure(exc)})"
    return (f"{location} may lack the end of this run: {problem}; the same command run again on this node "
            "uploads what is kept here first, elsewhere it continues from the newest uploaded checkpoint")


def _actor_failure(exc: BaseException) -> str:
    """One line for a monitoring actor that died: the error its constructor raised (a staging copy
    that could not be downloaded, say), or Ray's first line."""
    if isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed:
        return f"it could not start: {essential_line(exc)}"
    return essential_line(exc)


def _fit_with_progress(trainer: TorchTrainer, monitor: Any, on_progress: Callable | None,
                       poll_seconds: float, silence_s: float = ACTOR_SILENCE_S) -> BaseException | None:
    """Run ``trainer.fit()`` in a thread and hand ``on_progress`` the monitoring actor's progress as
    it answers; the error fit raised, if any. One question is out at a time, so a busy actor (a long
    upload) is not sent a queue of them, and one unanswered for ``silence_s`` is said once."""
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # reported through the outcome, re-raised nowhere
            errors.append(exc)

    thread = threading.Thread(target=fit, name="spectral-gpt-fit", daemon=True)
    thread.start()
    asked, asked_at = None, 0.0
    try:
        while thread.is_alive():
            thread.join(poll_seconds)
            if on_progress is None:
                continue
            if asked is None:
                asked, asked_at = monitor.get_progress.remote(), time.monotonic()
            if ray.wait([asked], timeout=0)[0]:
                try:
                    progress, asked = ray.get(asked), None
                except ray.exceptions.RayActorError:
                    on_progress = None  # the workers fail on it too; the outcome says why
                    continue
                on_progress(progress)
            elif asked_at and time.monotonic() - asked_at > silence_s:
                asked_at = 0.0  # said once per question
                log.warning("the monitoring actor has not answered for %g s (a slow or stuck upload or disk?); "
                            "training waits for it at its next checkpoint", silence_s)
    except BaseException:  # Ctrl-C, or the caller's on_progress raised: the run must not train on
        _abort_fit(monitor, thread)
        raise
    return errors[0] if errors else None


def _abort_fit(monitor: Any, thread: threading.Thread) -> None:
    """Abort the Train controller of the fit in ``thread`` (its workers and placement group with it),
    waiting for it to start if it has not yet, then for the fit to return."""
    deadline = time.monotonic() + ABORT_TIMEOUT_S
    controller = None
    try:
        while controller is None and thread.is_alive() and time.monotonic() < deadline:
            controller = ray.get(monitor.get_train_controller.remote(), timeout=ABORT_TIMEOUT_S)
            if controller is None:
                time.sleep(0.2)
        if controller is not None:
            ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except ray.exceptions.RayActorError:
        pass  # abort ends the controller's process, which is how it answers
    except ray.exceptions.RayError as exc:
        log.warning("could not abort the Train run (%s); it may hold its CPUs until it ends", exc)
    thread.join(max(0.0, deadline - time.monotonic()))


def _outcome(monitor: Any, run_dir: Path | None, fit_error: BaseException | None,
             max_failures: int = 0) -> RunOutcome:
    try:
        final = ray.get(monitor.get_final.remote())
        progress = ray.get(monitor.get_progress.remote())
    except ray.exceptions.RayActorError as exc:
        return RunOutcome("failed", run_dir, error=f"the run's monitoring actor died ({_actor_failure(exc)})")
    start = int(progress.get("resumed_from", 0))
    if final is None:
        error = (fit_failure(fit_error, max_failures, resumable=run_dir is not None) if fit_error
                 else "training ended without a result")
        if run_dir is not None:  # results.json keeps Ray's whole account (worker log paths, tracebacks)
            details = f"\n\n{fit_error}" if fit_error else ""
            ray.get(monitor.finish.remote("failed", {}, None, error + details))
        return RunOutcome("failed", run_dir, error=error, start_step=start, warnings=progress["warnings"])
    return RunOutcome(final["status"], run_dir, final["final_metrics"], final["error"],
                      final["generation_samples"], start_step=start, warnings=final["warnings"])


def fit_failure(error: BaseException, max_failures: int, resumable: bool) -> str:
    """One line for a Train run that gave up: which rank failed how, that ``--max-failures`` was used
    up, and what to do next (Ray's own message runs to twenty lines of worker metadata)."""
    if not isinstance(error, ray.train.WorkerGroupError) or not error.worker_failures:
        return f"training failed: {essential_line(error)}"
    failures = "; ".join(f"rank {rank}: {essential_line(exc)}" for rank, exc in sorted(error.worker_failures.items()))
    then = ("; the same command run again continues from the last checkpoint" if resumable
            else "; with monitoring off nothing is kept to continue from")
    return f"workers kept failing, more than --max-failures {max_failures} restarts allow ({failures}){then}"


def essential_line(error: BaseException) -> str:
    """An exception's own line: the last of a traceback (``ValueError: ...``; Ray prints a remote one
    without its ``Traceback`` header), else its first (Ray's errors put the cause first and worker
    metadata after it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    traceback = any(line.startswith(("Traceback (most recent call last)", 'File "')) for line in lines)
    return lines[-1] if traceback else lines[0]


def train_experiment(experiment: str = "wave_baseline", model: str = "tiny", steps: int = 500, *,
                     experiment_dir: str | os.PathLike | None = None, enable_monitoring: bool = True,
                     **settings: Any) -> RunOutcome:
    """The seed's Python entry point: train one ablation on Ray and return its outcome.

    ``experiment_dir`` is the folder that holds run folders (default ``./experiments``);
    ``enable_monitoring=False`` runs without writing any file. Other keyword arguments are those of
    :func:`orchestrator.settings.build_run_settings` (``seed``, ``dataset``, ``scaling``, ``lr`` ...).
    """
    run = build_run_settings(ablation=experiment, size=model, steps=steps,
                             output=experiment_dir if experiment_dir is not None else "experiments", **settings)
    run = dataclasses.replace(run, monitoring=dataclasses.replace(run.monitoring, enabled=enable_monitoring))
    return run_training(run)
