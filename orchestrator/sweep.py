"""Ablation sweeps: a Ray Tune grid with one trial per (ablation, seed), that restores itself.

A sweep folder ``{output}/{name}_{timestamp}_{git}`` holds::

    sweep.json         the grid and every trial's settings, written before Ray starts
    {ablation}/        one run folder per trial, the seed's layout ({ablation}_seed{seed} with --seeds > 1)
    tune/              Ray Tune's experiment: its state for a restore, and its ResultGrid
    summary.*  plots/  the sweep summary, built from the run folders when the grid ends

Every trial is a Tune function that trains one monitored run with its folder pinned, so a trial that
Tune starts again (a retry after an error, or a restore after the driver died) continues from the
run's own last checkpoint, and a trial whose run already ended reports the stored result without
training. Running the same command again finds the unfinished sweep by name and restores it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray.tune as tune
import torch
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.result_grid import ResultGrid
from ray.tune.schedulers import ASHAScheduler

from orchestrator.monitoring import ConfigTracker, atomic, generate_experiment_id
from orchestrator.run import check_before_start, connect_ray, essential_line, prepare_data, run_training
from orchestrator.run_folder import data_identity, run_has_ended
from orchestrator.settings import NAME_PATTERN, RESUME_MODES, RunSettings, usable_cpus
from orchestrator.storage import is_uri, normalize_output
from orchestrator.summary import (
    SWEEP_FILE,
    RunRecord,
    Summary,
    load_run,
    load_sweep_record,
    run_row,
    write_summary,
)
from spectral_gpt.config import ABLATION_ALIASES, ABLATIONS, ConfigError

log = logging.getLogger(__name__)

SCHEDULERS = ("none", "asha")
TUNE_FOLDER = "tune"
TRIAL_RESOURCES = {"cpu": 0, "memory": 2**20}
"""What a trial holds itself: it only waits on its TorchTrainer, whose workers take the CPUs/GPUs.
Tune's default (1 CPU) would starve those workers, ``{"cpu": 0}`` alone is rejected as an empty
request, and any CPU fraction leaves ``max_concurrent x workers`` whole CPUs short of the machine
(spec/ray.md §4). One MiB of Ray's logical memory is a request every node can grant; concurrency is
capped by ``max_concurrent_trials``, which also works on a cluster without a custom resource."""


class TrialFailedError(RuntimeError):
    """A run ended without a result of its own (its workers kept failing): Tune may retry the trial."""


@dataclass(frozen=True)
class SweepSettings:
    """One validated sweep: the settings of every trial plus how the grid runs."""

    name: str
    """Sweep name; the sweep folder is ``{output}/{name}_{timestamp}_{git}``."""
    output: str
    """Absolute folder that holds sweep folders."""
    runs: tuple[RunSettings, ...]
    """One per trial in grid order; they differ only in ablation, seed and name (equal footing)."""
    max_concurrent: int
    scheduler: str = "none"
    """``none`` runs every trial to the end; ``asha`` stops trials clearly behind on validation loss."""
    trial_retries: int = 2
    """Times Tune restarts a trial that raised (``tune.FailureConfig``); each restart resumes the run."""
    resume: str = "auto"

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ConfigError(f"name={self.name!r} must be 1-100 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit (no path separators)")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler={self.scheduler!r} is not one of: {', '.join(SCHEDULERS)}")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"resume={self.resume!r} is not one of: {', '.join(RESUME_MODES)}")
        if not isinstance(self.trial_retries, int) or self.trial_retries < -1:
            raise ConfigError(f"trial_retries={self.trial_retries!r} must be an integer >= 0 (or -1 for no limit)")
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent={self.max_concurrent!r} must be an integer >= 1")
        if not self.runs:
            raise ConfigError("a sweep needs at least one ablation")
        footings = {json.dumps(_footing(r), sort_keys=True) for r in self.runs}
        if len(footings) > 1:
            raise ConfigError("every trial of a sweep must use the same size, steps, batch, data, scaling and "
                              "monitoring")

    @property
    def ablations(self) -> list[str]:
        return list(dict.fromkeys(r.ablation for r in self.runs))

    @property
    def seeds(self) -> list[int]:
        return list(dict.fromkeys(r.spec.train.seed for r in self.runs))


def _footing(run: RunSettings) -> dict[str, Any]:
    """What must be equal across a grid: everything but the ablation, its seed and its name."""
    train = dataclasses.replace(run.spec.train, seed=0)
    return {"size": run.size, "train": dataclasses.asdict(train), "data": dataclasses.asdict(run.data),
            "scaling": dataclasses.asdict(run.scaling), "monitoring": dataclasses.asdict(run.monitoring)}


def resolve_ablations(names: Sequence[str]) -> list[str]:
    """Registry keys for ``names`` in the order given: ``all`` expands, aliases resolve, repeats drop."""
    out: list[str] = []
    for name in names:
        keys = list(ABLATIONS) if name == "all" else [ABLATION_ALIASES.get(name, name)]
        for key in keys:
            if key not in ABLATIONS:
                allowed = ", ".join(["all", *ABLATIONS, *ABLATION_ALIASES])
                raise ConfigError(f"unknown ablation {name!r}; allowed: {allowed}")
            if key not in out:
                out.append(key)
    if not out:
        raise ConfigError("a sweep needs at least one ablation")
    return out


def trial_name(ablation: str, seed: int, several_seeds: bool) -> str:
    """The run folder name of one trial inside its sweep folder."""
    return f"{ablation}_seed{seed}" if several_seeds else ablation


def local_capacity(run: RunSettings) -> tuple[int, int, str] | None:
    """(CPUs or GPUs this machine has, how many of them one trial holds, which), or None on a cluster
    joined through RAY_ADDRESS."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    if run.scaling.use_gpu:
        return torch.cuda.device_count(), run.scaling.workers, "GPU"
    return usable_cpus(), run.scaling.workers * (run.scaling.cpus_per_worker or 1), "CPU"


def _one_cpu_unless_told(run: RunSettings) -> RunSettings:
    """Trials share the machine, so a CPU worker of a sweep holds one CPU unless the user said more:
    here the concurrency of trials is the parallelism (a single run gets the cores instead)."""
    if run.scaling.use_gpu or run.scaling.cpus_per_worker is not None:
        return run
    return dataclasses.replace(run, scaling=dataclasses.replace(run.scaling, cpus_per_worker=1))


MAX_TRIALS = 10_000
"""The most trials one sweep holds: each is a run folder and a row of Tune's state, which Tune rewrites
as trials end; a mistyped ``--seeds 100000000`` would otherwise build 900 million settings first."""


def build_sweep_settings(experiments: Sequence[str], make_run: Callable[[str, int, str], RunSettings], *,
                         seed: int, seeds: int = 1, name: str = "ablations", output: str | os.PathLike = "experiments",
                         max_concurrent: int | None = None, scheduler: str = "none", trial_retries: int = 2,
                         resume: str = "auto") -> SweepSettings:
    """Validate a sweep; ``make_run(ablation, seed, run_name)`` builds each trial's run settings.

    Raises :class:`ConfigError` (one line) for an unknown ablation, ``seeds < 1``, or more concurrent
    trials than this machine's CPUs (GPUs with ``--gpu``) can hold at ``workers`` per trial.
    """
    if is_uri(output):
        raise ConfigError(f"output={os.fspath(output)!r}: a sweep needs a folder every node mounts (NFS, EFS, "
                          "a PVC); storage URIs work for single runs (spectral-gpt train --output)")
    ablations = resolve_ablations(experiments)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r} must be an integer >= 1")
    if len(ablations) * seeds > MAX_TRIALS:
        raise ConfigError(f"seeds={seeds} gives {len(ablations) * seeds} trials ({len(ablations)} ablations x "
                          f"{seeds} seeds); a sweep holds at most {MAX_TRIALS}")
    seed_values = [seed + i for i in range(seeds)]
    runs = tuple(_one_cpu_unless_told(make_run(a, s, trial_name(a, s, seeds > 1)))
                 for a in ablations for s in seed_values)
    capacity = local_capacity(runs[0])
    fits = None
    if capacity is not None:  # one trial always fits: build_run_settings refused more than the machine has
        have, per_trial, unit = capacity
        fits = have // per_trial
        if max_concurrent is not None and max_concurrent > fits:
            raise ConfigError(f"max_concurrent={max_concurrent} needs {max_concurrent * per_trial} {unit}s "
                              f"({per_trial} per trial) but this machine has {have}; use --max-concurrent {fits} "
                              "or less")
    if max_concurrent is None:
        max_concurrent = len(runs) if fits is None else min(len(runs), fits)
    return SweepSettings(name=name, output=normalize_output(output), runs=runs,
                         max_concurrent=max_concurrent, scheduler=scheduler, trial_retries=trial_retries,
                         resume=resume)


# -- the sweep folder --------------------------------------------------------------------------------

def find_unfinished_sweep(settings: SweepSettings) -> Path | None:
    """The newest sweep folder of this name that has not completed; ConfigError if its grid differs."""
    output = Path(settings.output)
    candidates = []
    for folder in output.glob(f"{settings.name}_*") if output.is_dir() else ():
        record = load_sweep_record(folder)
        if record.get("name") == settings.name and record.get("status") != "completed":
            candidates.append(((folder / SWEEP_FILE).stat().st_mtime, folder, record))
    if not candidates:
        return None
    _, folder, record = max(candidates, key=lambda c: c[0])
    saved = {name: [run.get("spec"), data_identity(run)] for name, run in record.get("runs", {}).items()}
    wanted = json.loads(json.dumps({r.name: [r.spec.to_dict(), data_identity(r.to_dict())] for r in settings.runs}))
    if saved != wanted:
        raise ConfigError(f"the unfinished sweep {folder} was started with another grid or other settings; "
                          "rerun it with the same flags, or pass --resume never to start a new sweep")
    return folder


def sweep_to_continue(settings: SweepSettings) -> Path | None:
    """The unfinished sweep of this name that ``resume`` auto/must continues, None for a new one. It
    only reads, so a ``--resume`` mistake is refused before the corpus is tokenised."""
    existing = None if settings.resume == "never" else find_unfinished_sweep(settings)
    if existing is None and settings.resume == "must":
        raise ConfigError(f"--resume must: no unfinished sweep named {settings.name!r} in {settings.output}")
    return existing


def write_sweep_record(sweep_dir: Path, settings: SweepSettings, runs: Sequence[RunSettings], status: str) -> None:
    """(Re)write ``sweep.json``: the grid, how it runs, each trial's settings and the sweep's status."""
    previous = load_sweep_record(sweep_dir)
    atomic.write_json_atomic(sweep_dir / SWEEP_FILE, {
        "format": 1, "name": settings.name, "status": status,
        "created": previous.get("created") or datetime.now().isoformat(), "updated": datetime.now().isoformat(),
        "ablations": settings.ablations, "seeds": settings.seeds, "max_concurrent": settings.max_concurrent,
        "scheduler": settings.scheduler, "trial_retries": settings.trial_retries,
        "trials": [{"name": r.name, "ablation": r.ablation, "seed": r.spec.train.seed} for r in runs],
        "runs": {r.name: r.to_dict() for r in runs},
    })


# -- one trial (runs inside a Tune trial actor) -------------------------------------------------------

def final_report(record: RunRecord) -> dict[str, Any]:
    """A trial's last Tune result, from its run folder: final metrics and the best checkpoint's path."""
    row = run_row(record)
    return {"step": row["steps"], "val_loss": row["val_loss"], "best_val_loss": row["best_val_loss"],
            "best_step": row["best_step"], "run_status": row["status"],
            "checkpoint_path": record.results.get("best_checkpoint"), "run_dir": str(record.run_dir)}


def run_trial(config: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Tune function: train (or continue, or just report) the run of ``config``'s ablation and seed."""
    settings = next(RunSettings.from_dict(r) for r in runs
                    if r["ablation"] == config["ablation"] and r["spec"]["train"]["seed"] == config["seed"])
    run_dir = Path(settings.output) / settings.name
    record = load_run(run_dir)
    if record is None or not run_has_ended(record.results):
        outcome = run_training(settings, run_dir=run_dir, report_to_ray=True, callbacks=[TuneReportCallback()])
        record = load_run(run_dir)
        if record is None or (outcome.status != "completed" and not outcome.final_metrics):
            raise TrialFailedError(f"run {settings.name} failed: {outcome.error}")
    tune.report(final_report(record))


def _trial_label(trial: Any) -> str:
    return f"{trial.config['ablation']}_seed{trial.config['seed']}"


# -- the driver -------------------------------------------------------------------------------------

@dataclass
class SweepOutcome:
    """How a sweep ended: its folder, its summary, and the trials Tune gave up on."""

    sweep_dir: Path
    summary: Summary | None
    """None when no trial got as far as writing its run folder (all of them errored at start)."""
    errored: dict[str, str]
    """Run name -> why, for each trial that still failed after ``trial_retries`` retries (rerunning the
    command retries them)."""
    restored: bool


def run_sweep(settings: SweepSettings) -> SweepOutcome:
    """Run (or restore) the grid to its end and write the summary; ConfigError before Ray starts.

    Raises KeyboardInterrupt when Ctrl-C stopped the grid (Tune saves its state and returns instead
    of raising); running the same sweep again continues it.
    """
    data_owners = {r.data: r for r in settings.runs}.values()
    for data_owner in data_owners:
        check_before_start(data_owner)
    sweep_dir = sweep_to_continue(settings)
    for data_owner in data_owners:
        prepare_data(data_owner)  # tokenise once here, not racing in concurrent trials; data mistakes surface now
    if sweep_dir is None:
        sweep_dir = Path(settings.output) / generate_experiment_id(settings.name, settings.output)
    runs = [dataclasses.replace(r, output=str(sweep_dir)) for r in settings.runs]
    if tune.Tuner.can_restore(str(sweep_dir / TUNE_FOLDER)):
        settings = _as_first_started(settings, load_sweep_record(sweep_dir))
    write_sweep_record(sweep_dir, settings, runs, "unfinished")
    capacity = local_capacity(runs[0])
    connect_ray(capacity[0] if capacity and capacity[2] == "CPU" else None, dashboard=True)
    tuner, restored = _tuner(settings, runs, sweep_dir)
    tuner.fit()
    grid = open_results(sweep_dir)  # the state Tune saved: after Ctrl-C, unfinished trials are PENDING there
    if grid.num_terminated + grid.num_errors < len(grid):
        raise KeyboardInterrupt(f"sweep {sweep_dir} interrupted")
    errored = _settle(grid, runs, settings.scheduler)
    records = [r for r in (load_run(sweep_dir / run.name) for run in runs) if r is not None]
    summary = write_summary(records, sweep_dir, title=f"Sweep {sweep_dir.name}") if records else None
    write_sweep_record(sweep_dir, settings, runs, "unfinished" if errored else "completed")
    return SweepOutcome(sweep_dir, summary, errored, restored)


FIXED_AT_FIRST_START = ("max_concurrent", "scheduler", "trial_retries")
"""What Ray Tune keeps from a grid's first start: ``Tuner.restore`` takes no new TuneConfig or RunConfig."""


def _as_first_started(settings: SweepSettings, record: dict[str, Any]) -> SweepSettings:
    """``settings`` with the values a restored grid keeps; warns about each one the user asked to change."""
    kept = {key: record[key] for key in FIXED_AT_FIRST_START
            if key in record and record[key] != getattr(settings, key)}
    for key, value in kept.items():
        log.warning(f"the restored sweep keeps {key}={value!r} from its first start "
                    f"(asked for {getattr(settings, key)!r}); Ray Tune restores a grid as it was created")
    return dataclasses.replace(settings, **kept)


def _tuner(settings: SweepSettings, runs: Sequence[RunSettings], sweep_dir: Path) -> tuple[tune.Tuner, bool]:
    """The Tuner of this sweep: restored from ``tune/`` when a previous driver left state there."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, runs=[r.to_dict() for r in runs]),
                                    TRIAL_RESOURCES)
    tune_dir = str(sweep_dir / TUNE_FOLDER)
    if tune.Tuner.can_restore(tune_dir):
        return tune.Tuner.restore(tune_dir, trainable=trainable, resume_errored=True), True
    tuner = tune.Tuner(
        trainable,
        param_space={"ablation": tune.grid_search(settings.ablations), "seed": tune.grid_search(settings.seeds)},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", max_concurrent_trials=settings.max_concurrent,
                                    scheduler=_scheduler(runs[0], settings.scheduler),
                                    trial_name_creator=_trial_label, trial_dirname_creator=_trial_label),
        run_config=tune.RunConfig(name=TUNE_FOLDER, storage_path=str(sweep_dir),
                                  failure_config=tune.FailureConfig(max_failures=settings.trial_retries)))
    return tuner, False


def _scheduler(run: RunSettings, kind: str) -> ASHAScheduler | None:
    """ASHA on the step axis (Tune's own iteration count restarts on restore)."""
    if kind != "asha":
        return None
    train = run.spec.train
    grace = min(train.steps, max(train.eval_interval, train.steps // 9))
    return ASHAScheduler(time_attr="step", max_t=train.steps, grace_period=grace, reduction_factor=3)


def _settle(grid: ResultGrid, runs: Sequence[RunSettings], scheduler: str) -> dict[str, str]:
    """Record how each trial ended in its run folder; return each errored trial's run name and error line.

    Every trial has ended (none was interrupted), so one that Tune terminated without error but
    whose run has no final result was stopped by the scheduler: its results.json then says
    ``stopped``, with the metrics it reached.
    """
    by_trial = {(r.ablation, r.spec.train.seed): r for r in runs}
    errored = {}
    for result in grid:
        run = by_trial[(result.config["ablation"], result.config["seed"])]
        if result.error is not None:
            errored[run.name] = essential_line(result.error).removeprefix(f"{TrialFailedError.__name__}: ")
            continue
        record = load_run(Path(run.output) / run.name)
        if record is not None and not run_has_ended(record.results):
            row = run_row(record)
            ConfigTracker(record.run_dir).save_results(
                {"total_steps": row["steps"], "val_loss": row["val_loss"], "best_val_loss": row["best_val_loss"],
                 "best_step": row["best_step"], "num_parameters": record.params}, status="stopped",
                error=f"stopped early by the {scheduler} scheduler: its validation loss was behind the others'")
    return errored


def open_results(sweep_dir: Path) -> ResultGrid:
    """Tune's own ResultGrid of a sweep: each trial's last result (val_loss, checkpoint_path) and folder.
    ``sweep_dir`` may be relative (Tune reads a relative path as a URI without a scheme)."""
    return tune.Tuner.restore(str(Path(sweep_dir).absolute() / TUNE_FOLDER), trainable=run_trial).get_results()
