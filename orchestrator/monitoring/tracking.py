"""``ConfigTracker``: what a run was (config, code version, hardware, model, data) and how it ended.

``config.json`` is written at the start and ``results.json`` at the end, both atomically and as
strict JSON (non-finite floats become ``null``), so any JSON reader can open them while the run is
live. The hardware record covers what the original lacked (memory, library versions; spec 8); the
ray version is read from package metadata so this module never imports ray.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.monitoring import atomic
from orchestrator.monitoring.identity import package_git_info

log = logging.getLogger(__name__)

RUN_STATUSES = ("completed", "failed", "stopped")
"""How a run can end, as recorded in ``results.json``."""

_LEGACY_MODEL_FIELDS = ("d_model", "num_layers", "num_heads", "num_waves", "num_harmonics",
                        "vocab_size", "block_size")


def collect_hardware_info() -> dict[str, Any]:
    """The machine this process runs on; call it where the training runs (it sees that GPU)."""
    import torch

    gpu = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "hostname": platform.node(),
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "gpu_available": gpu,
        "gpu_count": torch.cuda.device_count() if gpu else 0,
        "gpu_model": torch.cuda.get_device_name(0) if gpu else None,
        "cuda_version": torch.version.cuda,
        "torch_version": torch.__version__,
        "ray_version": _version("ray"),
        "numpy_version": _version("numpy"),
    }


def memory_usage_mb() -> dict[str, float]:
    """Current resident memory of this process, plus peak GPU memory when CUDA is in use (MB)."""
    import torch

    usage = {"memory_mb": _rss_mb()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        usage["gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return usage


def model_info(model: Any) -> dict[str, Any]:
    """Class, parameter counts and architecture fields of ``model`` (wrappers looked through).

    Architecture fields come from the model's ``config``/``cfg`` object (``to_dict()``), else from
    attributes of the module itself as in the original.
    """
    core = getattr(model, "module", model)
    params = list(core.parameters())
    info: dict[str, Any] = {
        "type": type(core).__name__,
        "num_parameters": sum(p.numel() for p in params),
        "num_trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
    }
    config = next((c for c in (getattr(core, n, None) for n in ("config", "cfg"))
                   if callable(getattr(c, "to_dict", None))), None)
    if config is not None:
        info.update(config.to_dict())
    else:
        info.update({k: getattr(core, k) for k in _LEGACY_MODEL_FIELDS if hasattr(core, k)})
    return info


class ConfigTracker:
    """Reads and writes ``config.json`` and ``results.json`` in one run folder.

    Saving never raises on I/O trouble: it logs a warning and returns ``None``.
    """

    def __init__(self, experiment_dir: Path | str):
        self.experiment_dir = Path(experiment_dir)
        self.experiment_id = self.experiment_dir.name
        self.config_file = self.experiment_dir / "config.json"
        self.results_file = self.experiment_dir / "results.json"
        atomic.remove_stale_temps(self.experiment_dir)

    def save_config(
        self,
        config: Any,
        model: Any = None,
        dataset_info: Mapping[str, Any] | None = None,
        *,
        hardware: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Record the run's configuration, code version, hardware, model and dataset.

        Pass ``hardware`` (from :func:`collect_hardware_info` on a training worker) when this
        process is not where training runs, e.g. a CPU-only monitoring actor.
        """
        git = package_git_info()
        record: dict[str, Any] = {
            "experiment_id": self.experiment_id,
            "timestamp": datetime.now().isoformat(),
            "git": dict(git),
            "git_hash": git["hash"],
            "config": _as_dict(config),
            "hardware": dict(hardware) if hardware is not None else collect_hardware_info(),
        }
        if model is not None:
            record["model"] = model_info(model)
        if dataset_info is not None:
            record["dataset"] = dict(dataset_info)
        return self._write(self.config_file, record)

    def load_config(self) -> dict[str, Any]:
        """The saved ``config.json`` as a dict, ``{}`` when there is none."""
        return self._read(self.config_file)

    def save_results(
        self,
        final_metrics: Mapping[str, Any],
        best_checkpoint: Path | str | None = None,
        generation_samples: Sequence[str] | None = None,
        status: str = "completed",
        error: str | None = None,
        warnings: Sequence[str] | None = None,
    ) -> Path | None:
        """Record how the run ended: status, final metrics, best checkpoint, samples, error, and the
        warnings of the run (a checkpoint the disk refused, a corrupt one skipped at resume)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status={status!r} is not one of: {', '.join(RUN_STATUSES)}")
        record = {
            "experiment_id": self.experiment_id,
            "timestamp": datetime.now().isoformat(),
            "status": status,
            "final_metrics": dict(final_metrics),
            "best_checkpoint": str(best_checkpoint) if best_checkpoint is not None else None,
            "generation_samples": list(generation_samples) if generation_samples is not None else None,
            "error": error,
            "warnings": list(warnings or []),
        }
        return self._write(self.results_file, record)

    def load_results(self) -> dict[str, Any]:
        """The saved ``results.json`` as a dict, ``{}`` when there is none."""
        return self._read(self.results_file)

    def _write(self, path: Path, record: dict[str, Any]) -> Path | None:
        try:
            self.experiment_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_json_atomic(path, record)
        except OSError as exc:
            log.warning("%s not written (%s)", path, exc)
            return None
        return path

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s)", path, exc)
            return {}
        return data if isinstance(data, dict) else {}


def _as_dict(config: Any) -> Any:
    if callable(getattr(config, "to_dict", None)):
        return config.to_dict()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(config) if isinstance(config, Mapping) else config


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
    except (ValueError, OSError, AttributeError):
        return None


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
