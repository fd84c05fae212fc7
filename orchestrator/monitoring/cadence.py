"""When the seed's monitoring acts on a step: one rule for its classes and for the Ray worker alike."""

from __future__ import annotations


def log_step(step: int, interval: int) -> bool:
    """A logging step: every ``interval`` steps, step 0 included (as in the seed)."""
    return step % interval == 0


def save_step(step: int, interval: int) -> bool:
    """A checkpoint or plot step: every ``interval`` steps, never step 0 (nothing to save or show yet)."""
    return step > 0 and step % interval == 0
