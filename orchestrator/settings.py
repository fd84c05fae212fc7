"""The one validated config tree of a run: what to train, on what data, how to watch it, where to run.

Built once at the edge (CLI or Python API) and passed down unchanged to the driver, the monitoring
actor and every worker as a plain dict. Every user mistake is found here, before Ray starts or any
file is written, and reported as one line per problem.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orchestrator.monitoring.cadence import log_step, save_step
from orchestrator.storage import check_output, normalize_output
from spectral_gpt.config import (
    BATCH_SIZES,
    GPT2_VOCAB,
    MAX_VOCAB_SIZE,
    ConfigError,
    ExperimentConfig,
    TrainConfig,
    get_ablation,
    model_config_for,
    require_bool,
    require_int,
)
from spectral_gpt.tokenizer import MIN_VOCAB_SIZE
from spectral_gpt.training import RunSpec

RESUME_MODES = ("auto", "must", "never")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def default_cache_dir() -> str:
    """Where tokenizers and token memmaps are cached between runs (XDG cache, overridable)."""
    base = os.environ.get("SPECTRAL_GPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "spectral-gpt")
    return os.path.abspath(base)


@dataclass(frozen=True)
class DataSettings:
    """Which corpus and tokenizer a run trains on."""

    dataset: str = "python-docs"
    """``python-docs`` (offline default), ``shakespeare``, ``fineweb-edu`` or a path to a text file."""
    vocab_size: int = 1024
    """Byte-level BPE vocabulary trained on the corpus (D9); GPT-2's 50257 for ``fineweb-edu``."""
    cache_dir: str = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ConfigError(f"dataset={self.dataset!r} must be a corpus name or the path of a text file")


@dataclass(frozen=True)
class MonitoringSettings:
    """How often the monitoring actor checkpoints, logs and plots (the seed's names and defaults)."""

    enabled: bool = True
    """False = a quick run that writes no files (the seed's ``enable_monitoring=False``)."""
    checkpoint_interval: int = 1000
    keep_last: int = 3
    log_interval: int = 10
    viz_interval: int = 1000

    def __post_init__(self) -> None:
        require_bool("enabled", self.enabled)
        for name in ("checkpoint_interval", "keep_last", "log_interval", "viz_interval"):
            require_int(name, getattr(self, name))

    def row_due(self, step: int, evaluated: bool, last: bool) -> bool:
        """Whether rank 0 sends the metric row of ``step``: every ``log_interval``, with every
        validation loss, and at the end."""
        return log_step(step, self.log_interval) or evaluated or last

    def checkpoint_due(self, step: int, improved: bool, last: bool) -> bool:
        """Whether ``step`` is checkpointed: every ``checkpoint_interval``, at a new best validation
        loss, and at the end. Also without monitoring: the actor then keeps it in memory, so a failed
        worker group still resumes."""
        return save_step(step, self.checkpoint_interval) or improved or last

    def plots_due(self, step: int, last: bool) -> bool:
        """Whether the weights of ``step`` go to the actor to be plotted: every ``viz_interval`` and at
        the end, and never without monitoring, which draws nothing."""
        return self.enabled and (save_step(step, self.viz_interval) or last)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one, as in a container or taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_cpus_per_worker(cpus: int, workers: int) -> int:
    """The CPUs each CPU worker takes when not told, on a local Ray instance of ``cpus`` CPUs.

    Ray Train gives a worker one CPU, and Ray sets its torch thread count from it; on an 8-core
    laptop one worker would train on one core. Here the workers share every core but one, which is
    left to the driver, Ray's own processes and the monitoring actor (plots take seconds of CPU), so
    they never preempt a compute thread that the others in a parallel kernel wait for.
    """
    return max(1, (cpus - 1) // workers)


@dataclass(frozen=True)
class ScalingSettings:
    """How many Ray Train workers run the model, on how many cores, and how often a failed group restarts."""

    workers: int = 1
    use_gpu: bool = False
    max_failures: int = 3
    """Worker-group restarts Ray may make before the run fails (``FailureConfig(max_failures)``)."""
    cpus_per_worker: int | None = None
    """CPUs each worker holds (``resources_per_worker``), which Ray also makes its torch thread count.
    ``None``: :func:`default_cpus_per_worker` for CPU workers on a local Ray instance (decided by the
    driver once Ray is up), else Ray Train's own default (1 CPU, or none beside a GPU)."""

    def __post_init__(self) -> None:
        require_int("workers", self.workers)
        require_bool("use_gpu", self.use_gpu)
        require_int("max_failures", self.max_failures, minimum=-1)
        if self.cpus_per_worker is not None:
            require_int("cpus_per_worker", self.cpus_per_worker)


@dataclass(frozen=True)
class RunSettings:
    """Everything that defines one run; ``spec`` is the part the model core sees."""

    name: str
    """Run name; the run folder is ``{output}/{name}_{timestamp}_{git}``."""
    size: str
    ablation: str
    output: str
    """Absolute folder that holds run folders (a relative path is made absolute at the edge), or a
    storage URI (``s3://bucket/runs``, ``file:///...``): see :mod:`orchestrator.storage`."""
    spec: RunSpec
    data: DataSettings = field(default_factory=DataSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    resume: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ConfigError(f"name={self.name!r} must be 1-100 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit (no path separators)")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"resume={self.resume!r} is not one of: {', '.join(RESUME_MODES)}")
        check_output(self.output)
        if self.spec.train.batch_size % self.scaling.workers:
            raise ConfigError(f"batch_size={self.spec.train.batch_size} must be divisible by "
                              f"workers={self.scaling.workers} (each worker takes an equal share)")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, sent to the actor and workers and saved in config.json."""
        out = dataclasses.asdict(self)
        out["spec"] = self.spec.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSettings":
        """Inverse of :meth:`to_dict`."""
        return cls(name=data["name"], size=data["size"], ablation=data["ablation"], output=data["output"],
                   spec=RunSpec.from_dict(data["spec"]), data=DataSettings(**data["data"]),
                   monitoring=MonitoringSettings(**data["monitoring"]),
                   scaling=ScalingSettings(**data["scaling"]), resume=data["resume"])


def build_run_settings(*, ablation: str = "wave_baseline", size: str = "tiny", steps: int = 500,
                       seed: int = 1337, batch_size: int | None = None, vocab_size: int | None = None,
                       dataset: str = "python-docs", name: str | None = None,
                       output: str | os.PathLike = "experiments", resume: str = "auto",
                       eval_interval: int | None = None, precision: str = "fp32", compile_mode: str | None = None,
                       monitoring: MonitoringSettings | None = None,
                       scaling: ScalingSettings | None = None, cache_dir: str | None = None,
                       **experiment_overrides: Any) -> RunSettings:
    """Validate user choices into :class:`RunSettings`; raises :class:`ConfigError` with one line.

    ``None`` means "the default" for the optional numbers; an explicit 0 is a mistake, not a default.
    """
    require_int("steps", steps)
    for field_name, value, kind in (("monitoring", monitoring, MonitoringSettings),
                                    ("scaling", scaling, ScalingSettings)):
        if value is not None and not isinstance(value, kind):
            raise ConfigError(f"{field_name}={value!r} must be a {kind.__name__} (or None for the defaults)")
    exp: ExperimentConfig = get_ablation(ablation)
    if experiment_overrides:
        exp = _replace(exp, experiment_overrides)
    if vocab_size is None:
        vocab_size = GPT2_VOCAB if dataset == "fineweb-edu" else 1024
    require_int("vocab_size", vocab_size, minimum=MIN_VOCAB_SIZE, maximum=MAX_VOCAB_SIZE)
    model = model_config_for(size, exp, vocab_size=vocab_size)
    monitoring = monitoring or MonitoringSettings()
    scaling = scaling or ScalingSettings()
    if scaling.use_gpu and not os.environ.get("RAY_ADDRESS") and not torch.cuda.is_available():
        # A private local cluster would have no GPU resource and Ray would wait for one forever.
        raise ConfigError("--gpu (use_gpu=True) needs a CUDA GPU, but torch.cuda.is_available() is False "
                          "here; drop --gpu, or submit to a GPU cluster (RAY_ADDRESS / ray job submit)")
    if scaling.use_gpu and not os.environ.get("RAY_ADDRESS") and scaling.workers > torch.cuda.device_count():
        # One GPU per worker: a private local cluster with fewer GPUs would wait for them forever.
        raise ConfigError(f"--workers {scaling.workers} with --gpu needs {scaling.workers} GPUs (one per worker), "
                          f"but this machine has {torch.cuda.device_count()}; use --workers "
                          f"{torch.cuda.device_count()} or fewer, or submit to a larger cluster (RAY_ADDRESS)")
    _require_local_cpus(scaling)
    train = TrainConfig(steps=steps, seed=seed, batch_size=BATCH_SIZES[size] if batch_size is None else batch_size,
                        precision=precision, compile=compile_mode,
                        eval_interval=(min(250, monitoring.checkpoint_interval, steps) if eval_interval is None
                                       else eval_interval))
    return RunSettings(
        name=exp.name if name is None else name, size=size, ablation=exp.name, output=normalize_output(output),
        spec=RunSpec(model=model, experiment=exp, train=train),
        data=DataSettings(dataset=os.fspath(dataset) if isinstance(dataset, os.PathLike) else dataset,
                          vocab_size=vocab_size, cache_dir=(
            os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir())),
        monitoring=monitoring, scaling=scaling, resume=resume)


def _require_local_cpus(scaling: ScalingSettings) -> None:
    """Refuse CPU workers that a private local instance cannot hold: their placement group would wait
    forever. A cluster (RAY_ADDRESS) may grow, so it is left to wait."""
    if scaling.use_gpu or os.environ.get("RAY_ADDRESS"):
        return
    per_worker, have = scaling.cpus_per_worker or 1, usable_cpus()
    if scaling.workers * per_worker > have:
        asked = (f"--workers {scaling.workers} x --cpus-per-worker {per_worker}" if scaling.cpus_per_worker
                 else f"--workers {scaling.workers}")
        raise ConfigError(f"{asked} needs {scaling.workers * per_worker} CPUs but this machine has {have}; "
                          "ask for fewer, or submit to a larger cluster (RAY_ADDRESS)")


CLUSTER_PROBE_TIMEOUT_S = 5.0
"""How long the check of RAY_ADDRESS waits for the cluster's GCS port to accept a connection (Ray
itself retries a silent address for minutes, printing its C++ warnings)."""


def check_cluster_address() -> None:
    """Raise a one-line ConfigError unless RAY_ADDRESS, when set, names a cluster this command can join.

    The dashboard's ``http://...:8265`` is the address ``ray job submit`` takes, and is easily set here
    instead; Ray would answer it, or a typo, or a cluster that is down, with a traceback or minutes of
    retries, after the corpus was tokenised and the run folder made.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # this process joined Ray itself: RAY_ADDRESS is not used
        return
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or address == "local":
        return
    target = address
    if address == "auto":  # the cluster `ray start` recorded on this node
        from ray._private.services import canonicalize_bootstrap_address

        try:
            target = canonicalize_bootstrap_address("auto")
        except ConnectionError as exc:
            raise ConfigError(f"RAY_ADDRESS='auto': {str(exc).splitlines()[0]}") from None
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"RAY_ADDRESS={address!r} is a dashboard address, the one `ray job submit --address` "
                          "takes; a command joins a cluster at its GCS address (head:6379, or 'auto' on one of its "
                          "nodes), or is submitted as a job: ray job submit --address URL -- spectral-gpt train ...")
    if "://" in target and not target.startswith("ray://"):
        return  # a Ray Client plugin's scheme (anyscale://...): Ray hands it to the plugin
    host, _, port = target.removeprefix("ray://").rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS={address!r} is not host:port, ray://host:port, 'auto' or 'local'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CLUSTER_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"RAY_ADDRESS={address!r}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); "
                          "start one (ray start --head), or unset RAY_ADDRESS to run on a private local Ray") from None


def check_folders(settings: RunSettings) -> None:
    """Raise a one-line ConfigError unless the run can write its output folder and token cache.

    Called right before a run or sweep starts (not when settings are built: validating a cluster
    command on a laptop must not need the cluster's ``/mnt/shared``).
    """
    if settings.monitoring.enabled and os.path.isabs(settings.output):  # a storage URI is checked by its writer
        require_folder("output", settings.output)
    require_folder("cache_dir", settings.data.cache_dir, write=False)


def require_folder(field: str, path: str, *, write: bool = True) -> None:
    """Raise a one-line ConfigError unless ``path`` is a folder, or one that can be created here.

    A file in the way, a read-only mount or a pseudo file system (``/proc``) is found by making and
    at once removing a temporary folder in the nearest existing ancestor, so the mistake surfaces
    before Ray starts and leaves nothing behind. ``write=False`` accepts an existing folder as it is
    (a shared, read-only token cache that already holds the corpus works).
    """
    try:
        os.lstat(path)
    except OSError as exc:  # a name longer than the file system allows: lexists below would say "absent"
        if exc.errno == errno.ENAMETOOLONG:
            raise ConfigError(f"{field}={path!r} cannot be a folder ({exc.strerror})") from None
    base = Path(path)
    while not os.path.lexists(base) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{field}={path!r} cannot be a folder: {str(base)!r} is a file")
    if base == Path(path) and not write:
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".spectral-gpt-probe-", dir=base))
    except OSError as exc:
        raise ConfigError(f"{field}={path!r} is not writable: a folder cannot be made in {str(base)!r} "
                          f"({exc.strerror or exc})") from None


def _replace(exp: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    known = {f.name for f in dataclasses.fields(exp)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown experiment setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return dataclasses.replace(exp, **overrides)
