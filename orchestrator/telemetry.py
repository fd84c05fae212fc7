"""Training metrics on the Ray dashboard and Prometheus, through ``ray.util.metrics``.

The monitoring actor sets one gauge per metric, tagged by run and ablation, every time rank 0 sends
a row. Ray drops a gauge that is not set again within about two export periods (spec/ray.md §6),
so refreshing on every row keeps the series alive for as long as the run logs.
"""

from __future__ import annotations

import math
from typing import Any

from ray.util.metrics import Gauge

EXPORTED = {
    "loss": "training loss (total objective) of the last logged step",
    "val_loss": "validation loss on the run's fixed held-out windows",
    "tokens_per_sec": "training throughput of the current attempt",
    "step": "index of the last logged optimiser step",
    "wave_ratio": "wave vs lookup-table mix of the v1 wave embedding",
    "learning_rate": "learning rate of the last logged step",
}
"""Row keys exported as gauges ``ray_spectral_gpt_<key>``, with what each means."""

TAG_KEYS = ("run", "ablation")


class RunTelemetry:
    """The gauges of one run; lives inside the monitoring actor, one instance per run."""

    def __init__(self, run: str, ablation: str) -> None:
        self.tags = {"run": run, "ablation": ablation}
        self.gauges = {key: Gauge(f"spectral_gpt_{key}", description=text, tag_keys=TAG_KEYS)
                       for key, text in EXPORTED.items()}
        self.last: dict[str, float] = {}

    def record(self, row: dict[str, Any]) -> None:
        """Set every exported gauge present in ``row`` and refresh the others with their last value."""
        for key in EXPORTED:
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.last[key] = float(value)
        for key, value in self.last.items():
            self.gauges[key].set(value, tags=self.tags)
