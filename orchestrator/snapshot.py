"""Rank 0's copy of the training state for the monitoring actor, taken without stalling training.

A checkpoint must be the state of one moment while the loop keeps updating the weights in place, so
rank 0 copies the state into CPU buffers that are reused from save to save; from a GPU the copies
go into pinned memory without blocking and :class:`CopiesLanded` says when they are complete.

A training state holds hundreds of tensors (672 for the small model with AdamW: weights, two moments
and a step count each). On an H200, where the small model's step is ~30 ms of kernel launches, a
copy launched per tensor and a wire array per tensor cost the training thread ~16 ms a save. So the
tensors of each source device and dtype are gathered into one flat buffer, a few large copies
instead of hundreds of small ones; the snapshot's tensors are views of those buffers, and each
buffer travels to the actor as one array (:mod:`orchestrator.wire`). The slowest step after a save
went from 2.32 to 1.79 median steps there (``python -m benchmarks checkpoint_stall``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

GATHER_BYTES = 64 * 2**20
"""Most bytes gathered on the GPU into one temporary before a copy to the host: a snapshot costs the
device at most this much extra memory, however large the model."""

Group = tuple[torch.device, torch.dtype]
"""Where a tensor comes from and what it holds: the tensors of one group share one flat buffer."""


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
    """Every tensor inside ``state`` (nested dicts, lists and tuples, as state_dicts are), in the order
    :func:`map_tensors` visits them."""
    found: list[torch.Tensor] = []

    def visit(t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    map_tensors(state, visit)
    return found


def map_tensors(state: Any, fn: Callable[[Any], Any], leaf: type = torch.Tensor) -> Any:
    """``state`` with every ``leaf`` (a tensor unless told) ``t`` replaced by ``fn(t)``, its nesting
    and other values kept, and a module state_dict's ``_metadata`` too: ``load_state_dict`` hands each
    module its version from there, as a checkpoint written without this copy would also keep it."""
    if isinstance(state, leaf):
        return fn(state)
    nested = (leaf, dict, list, tuple)
    if isinstance(state, dict):
        mapped = {k: map_tensors(v, fn, leaf) if isinstance(v, nested) else v for k, v in state.items()}
        return _with_metadata_of(state, mapped)
    if isinstance(state, (list, tuple)):
        return type(state)(map_tensors(v, fn, leaf) if isinstance(v, nested) else v for v in state)
    return state


def _with_metadata_of(original: dict, mapped: dict) -> dict:
    """``mapped`` as an OrderedDict with ``original``'s ``_metadata`` where ``original`` is a state_dict."""
    if not isinstance(original, OrderedDict):
        return mapped
    mapped = OrderedDict(mapped)
    metadata = getattr(original, "_metadata", None)
    if metadata is not None:
        mapped._metadata = metadata  # type: ignore[attr-defined]
    return mapped


class Slot(NamedTuple):
    """Where one tensor of a snapshot lives: its group's flat buffer, from element ``offset`` on."""

    group: Group
    offset: int
    shape: torch.Size


@dataclass
class Snapshot:
    """A detached CPU copy of a training state: ``state`` has the nesting and plain values of the
    original, and its tensors (``views``, in :func:`tensors_of` order) are views of ``buffers``, one
    flat buffer per group."""

    state: Any
    buffers: dict[Group, torch.Tensor]
    slots: list[Slot]
    views: list[torch.Tensor]


@torch.no_grad()
def snapshot(state: Any, into: Snapshot | None = None) -> Snapshot:
    """A detached CPU copy of ``state``, so the actor writes a snapshot while training moves on.

    The buffers of ``into`` (the previous snapshot) are reused when its tensors had the same devices,
    dtypes and shapes, which avoids allocating and faulting in the whole state again at every save.
    From a GPU the copies go to pinned memory without blocking: they are queued on the stream before
    any later update of the weights, and :class:`CopiesLanded` tells when they have landed.
    """
    tensors = tensors_of(state)
    slots, members = _layout(tensors)
    if into is not None and into.slots == slots:
        buffers, views = into.buffers, into.views
    else:
        buffers = {group: torch.empty(slots[i[-1]].offset + tensors[i[-1]].numel(), dtype=group[1],
                                      pin_memory=group[0].type == "cuda") for group, i in members.items()}
        views = [buffers[s.group][s.offset:s.offset + s.shape.numel()].view(s.shape) for s in slots]
    for group, indices in members.items():
        for chunk in _chunks(indices, tensors):
            _gather(buffers[group], slots[chunk[0]].offset, [tensors[i] for i in chunk])
    copies = iter(views)
    return Snapshot(map_tensors(state, lambda _: next(copies)), buffers, slots, views)


def _layout(tensors: list[torch.Tensor]) -> tuple[list[Slot], dict[Group, list[int]]]:
    """Each tensor's slot, packed in order within its group, and the indices of each group's tensors."""
    ends: dict[Group, int] = {}
    members: dict[Group, list[int]] = {}
    slots = []
    for i, t in enumerate(tensors):
        group = (t.device, t.dtype)
        offset = ends.get(group, 0)
        slots.append(Slot(group, offset, t.shape))
        ends[group] = offset + t.numel()
        members.setdefault(group, []).append(i)
    return slots, members


def _chunks(members: list[int], tensors: list[torch.Tensor]) -> Iterator[list[int]]:
    """Runs of consecutive members of one group of at most :data:`GATHER_BYTES` (a larger tensor
    alone), each gathered by one copy."""
    run: list[int] = []
    size = 0
    for i in members:
        nbytes = tensors[i].nbytes
        if run and size + nbytes > GATHER_BYTES:
            yield run
            run, size = [], 0
        run.append(i)
        size += nbytes
    if run:
        yield run


def _gather(buffer: torch.Tensor, offset: int, sources: list[torch.Tensor]) -> None:
    """Copy ``sources``, flattened and back to back, into ``buffer`` from element ``offset``."""
    flat = [t.reshape(-1) for t in sources]
    target = buffer[offset:offset + sum(t.numel() for t in flat)]
    if sources[0].device.type == "cpu":
        torch.cat(flat, out=target)
    else:  # one gather kernel on the device, then one copy to the host (asynchronous from a GPU)
        target.copy_(torch.cat(flat) if len(flat) > 1 else flat[0], non_blocking=sources[0].is_cuda)
