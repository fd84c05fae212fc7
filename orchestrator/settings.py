"""The one validated config tree of a run: what to train, on what data, how to watch it, where to run.

Built once at the edge (CLI or Python API) and passed down unchanged to the driver, the monitoring
actor and every worker as a plain dict. Every user mistake is found here, before Ray starts or any
file is written, and reported as one line per problem.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spectral_gpt.config import (
    BATCH_SIZES,
    GPT2_VOCAB,
    ConfigError,
    ExperimentConfig,
    TrainConfig,
    get_ablation,
    model_config_for,
    require_int,
)
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
        for name in ("checkpoint_interval", "keep_last", "log_interval", "viz_interval"):
            require_int(name, getattr(self, name))


@dataclass(frozen=True)
class ScalingSettings:
    """How many Ray Train workers run the model and how often a failed group is restarted."""

    workers: int = 1
    use_gpu: bool = False
    max_failures: int = 3
    """Worker-group restarts Ray may make before the run fails (``FailureConfig(max_failures)``)."""

    def __post_init__(self) -> None:
        require_int("workers", self.workers)
        require_int("max_failures", self.max_failures, minimum=-1)


@dataclass(frozen=True)
class RunSettings:
    """Everything that defines one run; ``spec`` is the part the model core sees."""

    name: str
    """Run name; the run folder is ``{output}/{name}_{timestamp}_{git}``."""
    size: str
    ablation: str
    output: str
    """Absolute folder that holds run folders (a relative path is made absolute at the edge)."""
    spec: RunSpec
    data: DataSettings = field(default_factory=DataSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    resume: str = "auto"

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ConfigError(f"name={self.name!r} must be 1-100 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit (no path separators)")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"resume={self.resume!r} is not one of: {', '.join(RESUME_MODES)}")
        if not os.path.isabs(self.output):
            raise ConfigError(f"output={self.output!r} must be an absolute path")
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
                       eval_interval: int | None = None, monitoring: MonitoringSettings | None = None,
                       scaling: ScalingSettings | None = None, cache_dir: str | None = None,
                       **experiment_overrides: Any) -> RunSettings:
    """Validate user choices into :class:`RunSettings`; raises :class:`ConfigError` with one line."""
    exp: ExperimentConfig = get_ablation(ablation)
    if experiment_overrides:
        exp = _replace(exp, experiment_overrides)
    vocab_size = vocab_size or (GPT2_VOCAB if dataset == "fineweb-edu" else 1024)
    model = model_config_for(size, exp, vocab_size=vocab_size)
    monitoring = monitoring or MonitoringSettings()
    scaling = scaling or ScalingSettings()
    if scaling.use_gpu and not os.environ.get("RAY_ADDRESS") and not torch.cuda.is_available():
        # A private local cluster would have no GPU resource and Ray would wait for one forever.
        raise ConfigError("--gpu (use_gpu=True) needs a CUDA GPU, but torch.cuda.is_available() is False "
                          "here; drop --gpu, or submit to a GPU cluster (RAY_ADDRESS / ray job submit)")
    train = TrainConfig(steps=steps, seed=seed, batch_size=batch_size or BATCH_SIZES[size],
                        eval_interval=eval_interval or min(250, monitoring.checkpoint_interval, steps))
    return RunSettings(
        name=name or exp.name, size=size, ablation=exp.name, output=os.path.abspath(os.fspath(output)),
        spec=RunSpec(model=model, experiment=exp, train=train),
        data=DataSettings(dataset=dataset, vocab_size=vocab_size,
                          cache_dir=os.path.abspath(cache_dir) if cache_dir else default_cache_dir()),
        monitoring=monitoring, scaling=scaling, resume=resume)


def _replace(exp: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    known = {f.name for f in dataclasses.fields(exp)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown experiment setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return dataclasses.replace(exp, **overrides)


def run_folder_prefix(settings: RunSettings) -> Path:
    """The output folder and name prefix every run folder of this run name starts with."""
    return Path(settings.output) / f"{settings.name}_"
