"""Step-indexed schedules of a run: learning rate, wave ratio, embedding annealing, early stopping.

Each schedule is a pure function of the step (or, for early stopping, a small object with a
state_dict), so a resumed run recomputes exactly what the uninterrupted run would have used.
"""

from __future__ import annotations

import math
from typing import Any

from spectral_gpt.config import ConfigError


def _check_total(total_steps: int) -> None:
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"total_steps={total_steps!r} must be an integer >= 1")


def lr_at(step: int, *, max_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine to zero (spec 3.2).

    The warmup starts at exactly 0 on step 0 and peaks at ``max_lr``; the cosine then reaches exactly
    0 at ``total_steps`` (no floor), and any step at or beyond ``total_steps`` gets 0. The effective
    warmup is ``min(warmup_steps, total_steps // 10)``: the original's 500-step warmup would swallow a
    short CPU run whole and it would never decay, so a run always spends at least 90 % of its steps
    in the cosine phase. A run shorter than 10 steps therefore has no warmup and starts at ``max_lr``.
    """
    _check_total(total_steps)
    if step < 0:
        raise ConfigError(f"step={step!r} must be >= 0")
    if step >= total_steps:
        return 0.0
    warmup = min(max(warmup_steps, 0), total_steps // 10)
    if step < warmup:
        return max_lr * step / warmup
    progress = (step - warmup) / (total_steps - warmup)
    return max_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def wave_ratio_target(step: int, total_steps: int) -> float:
    """Where the v1 wave ratio is pulled at ``step``: 0.5 at the start, rising linearly to 0.9 (spec 3.3)."""
    _check_total(total_steps)
    return 0.5 + 0.4 * step / total_steps


def next_wave_ratio(current: float, step: int, total_steps: int) -> float:
    """The v1 wave ratio to write before step ``step``: a ~100-step EMA towards the target (spec 3.3).

    Clamped to [0.01, 0.99] so that the logit written back to the embedding stays finite.
    """
    value = 0.99 * current + 0.01 * wave_ratio_target(step, total_steps)
    return min(0.99, max(0.01, value))


def standard_embed_ratio_at(step: int, annealing_steps: int = 3000) -> float:
    """v2 embedding mix at ``step``: 1 = pure lookup table, annealed linearly to 0 = pure wave (spec 3.3)."""
    if not isinstance(annealing_steps, int) or annealing_steps < 1:
        raise ConfigError(f"annealing_steps={annealing_steps!r} must be an integer >= 1")
    return max(0.0, 1.0 - step / annealing_steps)


class EarlyStopping:
    """Stops a run after ``patience`` validations without improving the loss by ``min_delta``.

    ``best`` is the lowest validation loss seen, so the best checkpoint (saved whenever
    :meth:`update` says so) and the reported best loss always agree; patience is counted against
    the last *significant* improvement (``reference``), the Keras/Lightning rule, so a long run of
    tiny gains still stops. Its progress is checkpointed, so a resumed run stops exactly where the
    uninterrupted one would (the original lost it on restart, spec B12).
    """

    def __init__(self, patience: int, min_delta: float = 0.005) -> None:
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ConfigError(f"patience={patience!r} must be an integer >= 1")
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0):
            raise ConfigError(f"min_delta={min_delta!r} must be a finite number >= 0")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.best_step: int | None = None
        self.reference = math.inf
        self.counter = 0

    def update(self, val_loss: float, step: int | None = None) -> bool:
        """Record one validation loss; True when it is the lowest so far (worth a best checkpoint).

        The patience counter restarts only when it beats ``reference - min_delta``. A NaN loss is
        never an improvement.
        """
        val_loss = float(val_loss)
        if val_loss < self.reference - self.min_delta:
            self.reference = val_loss
            self.counter = 0
        else:
            self.counter += 1
        if val_loss < self.best:
            self.best = val_loss
            self.best_step = step
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` validations in a row brought no improvement."""
        return self.counter >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Progress as plain Python numbers (``best`` is ``inf`` before the first validation)."""
        return {"best": self.best, "best_step": self.best_step, "reference": self.reference, "counter": self.counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict`; patience and min_delta stay as constructed."""
        self.best = float(state["best"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.reference = float(state.get("reference", state["best"]))  # older checkpoints: one and the same
        self.counter = int(state["counter"])
