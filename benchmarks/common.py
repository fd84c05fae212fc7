"""What every benchmark shares: the result object of the contract, the machine it ran on, the registry.

Each benchmark module decorates its functions with :func:`benchmark`; :func:`load_benchmarks` imports
those modules, so the command line and the report generator see one registry and nobody keeps a list
of names by hand.
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Callable
from typing import Any

import torch

BenchmarkFn = Callable[..., dict[str, Any]]
"""``fn(quick: bool = False) -> result``: one measurement, the dict of :func:`result`."""

BENCHMARKS: dict[str, BenchmarkFn] = {}
"""Benchmarks by name, as ``python -m benchmarks NAME`` accepts them (filled by :func:`benchmark`)."""

MODULES = ("benchmarks.orchestration", "benchmarks.model_speed", "benchmarks.resources")
"""The modules whose benchmarks :func:`load_benchmarks` registers."""


def benchmark(fn: BenchmarkFn) -> BenchmarkFn:
    """Register ``fn`` under its own name, so the name in the JSON and on the command line agree."""
    BENCHMARKS[fn.__name__] = fn
    return fn


def load_benchmarks() -> dict[str, BenchmarkFn]:
    """Every registered benchmark (imports the benchmark modules on first use)."""
    for module in MODULES:
        importlib.import_module(module)
    return BENCHMARKS


def machine() -> dict[str, Any]:
    """Where a figure was measured; a ratio only means something next to the hardware that gave it."""
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def result(name: str, value: float, unit: str, baseline: float, goal: str, **details: Any) -> dict[str, Any]:
    """The benchmark contract of DESIGN.md: ``ratio`` is value / baseline (None without a baseline)."""
    return {"name": name, "value": value, "unit": unit, "baseline": baseline,
            "ratio": value / baseline if baseline else None, "goal": goal, "details": details,
            "machine": machine()}
