"""The seed's monitoring API, rebuilt crash-safe: checkpoints, metrics, plots, config and run ids.

Same names and defaults as the original (``MONITORING_QUICK_START.md``), same folder layout::

    experiments/{name}_{YYYYmmdd_HHMMSS}_{git_hash}/
        checkpoints/  logs/  visualizations/  config.json  results.json

No Ray here: the monitoring actor owns instances of these classes during a run, and users open the
same classes on a finished (or running) run folder to analyse it. Every write is atomic and every
I/O failure is a logged warning, never an exception that could stop training.
"""

from orchestrator.monitoring.checkpoints import CheckpointManager
from orchestrator.monitoring.identity import (
    create_experiment_directory,
    generate_experiment_id,
    get_git_hash,
    get_git_info,
)
from orchestrator.monitoring.metrics import MetricsLogger
from orchestrator.monitoring.tracking import ConfigTracker, collect_hardware_info, memory_usage_mb

__all__ = [
    "CheckpointManager",
    "ConfigTracker",
    "MetricsLogger",
    "VisualizationManager",
    "collect_hardware_info",
    "create_experiment_directory",
    "generate_experiment_id",
    "get_git_hash",
    "get_git_info",
    "memory_usage_mb",
]


def __getattr__(name: str) -> object:
    """Import the plotting side (matplotlib, ~0.5 s) only when asked for: training workers never are,
    and a restarted worker group resumes that much sooner."""
    if name == "VisualizationManager":
        from orchestrator.monitoring.plots import VisualizationManager

        return VisualizationManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
