"""Rank 0's copy of the training state for the monitoring actor, taken without stalling training.

A checkpoint must be the state of one moment while the loop keeps updating the weights in place, so
rank 0 copies the state into CPU buffers that are reused from save to save; from a GPU the copies
go into pinned memory without blocking and :class:`CopiesLanded` says when they are complete.
"""

from __future__ import annotations

from typing import Any

import torch


class CopiesLanded:
    """Marks the end of the copies :func:`snapshot` queued on the current CUDA stream (none on a CPU)."""

    def __init__(self, state: dict[str, Any]) -> None:
        cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors_of(state))
        self.event = torch.cuda.Event() if cuda else None
        if self.event is not None:
            self.event.record()

    def synchronize(self) -> None:
        """Wait until the snapshot holds the values of the moment it was taken."""
        if self.event is not None:
            self.event.synchronize()


def tensors_of(state: Any) -> list[torch.Tensor]:
    """Every tensor inside ``state`` (nested dicts, lists and tuples, as state_dicts are)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in tensors_of(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in tensors_of(v)]
    return []


def snapshot(state: Any, into: Any = None) -> Any:
    """A detached CPU copy of ``state``, so the actor writes a snapshot while training moves on.

    Tensors are copied into the matching tensors of ``into`` (the previous snapshot) when shape and
    dtype agree, which avoids allocating and faulting in the whole state again at every save. From
    a GPU the copies go to pinned memory without blocking: they are queued on the stream before any
    later update of the weights, and :class:`CopiesLanded` tells when they have landed.
    """
    if isinstance(state, torch.Tensor):
        source = state.detach()
        if not (isinstance(into, torch.Tensor) and into.device.type == "cpu" and into.shape == source.shape
                and into.dtype == source.dtype):
            into = torch.empty(source.shape, dtype=source.dtype, pin_memory=source.is_cuda)
        return into.copy_(source, non_blocking=source.is_cuda)
    if isinstance(state, dict):
        previous = into if isinstance(into, dict) else {}
        return {k: snapshot(v, previous.get(k)) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        previous = into if isinstance(into, (list, tuple)) and len(into) == len(state) else [None] * len(state)
        return type(state)(snapshot(v, p) for v, p in zip(state, previous, strict=True))
    return state
