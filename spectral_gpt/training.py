"""The complete training state of one run and the one step function every entry point uses.

A bare single-process loop and the Ray worker both call :func:`train_steps` on a :class:`TrainState`,
so there is exactly one definition of a training step. Resume is exact by construction: the batch
and every random draw inside a step are functions of (seed, step, rank), and everything else that
changes while training (weights, optimiser moments and counters, the QFE projection, early stopping,
step and token counters) is in :meth:`TrainState.state_dict`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spectral_gpt.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from spectral_gpt.model import build_model_from_config
from spectral_gpt.physics import build_loss, build_optimizer
from spectral_gpt.schedules import EarlyStopping, lr_at, next_wave_ratio, standard_embed_ratio_at

STATE_FORMAT = 1
"""Version of the :meth:`TrainState.state_dict` layout; bumped when it changes incompatibly."""

Batch = tuple[torch.Tensor, torch.Tensor]
BatchFn = Callable[[int, int, int], Batch]
"""(sampler step, rank, world_size) -> (x, y); a pure function, so resume sees the same batches."""


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the step was not applied, so the weights stay good."""


@dataclass(frozen=True)
class RunSpec:
    """Everything the model core needs to rebuild a run: architecture, ablation and run settings."""

    model: ModelConfig
    experiment: ExperimentConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form stored in every checkpoint, so a checkpoint alone rebuilds the run."""
        return {"model": self.model.to_dict(), "experiment": self.experiment.to_dict(),
                "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(ModelConfig.from_dict(data["model"]), ExperimentConfig.from_dict(data["experiment"]),
                   TrainConfig.from_dict(data["train"]))


@dataclass(frozen=True)
class StepResult:
    """What one optimiser step measured; the orchestrator turns these into metric rows."""

    step: int
    """Index of the step that was applied (0-based); the state's ``step`` is now ``step + 1``."""
    loss: float
    """Training objective (CE, or CE + lambda * coherence for QFE), mean over micro-batches."""
    ce: float
    coherence: float | None
    lr: float
    grad_norm: float
    wave_ratio: float | None
    standard_embed_ratio: float | None
    tokens: int
    """Tokens consumed by this step across all ranks."""


RETIRED_PARAMETER_SUFFIX = ".attn.head_scale"
"""Parameters that checkpoints of linear pure-wave attention hold from before it dropped its unused
``head_scale`` (it scales quadratic scores only, never had a gradient, and DDP refused it)."""


def _without_retired_parameters(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state`` as the model of today holds it: retired parameters out of the model's weights, and
    out of the optimiser's numbering (one group over ``model.parameters()``, in the order the saved
    weights list them), so an interrupted run written before still continues exactly."""
    current = dict(model.named_parameters())
    retired = {k for k in state["model"] if k.endswith(RETIRED_PARAMETER_SUFFIX) and k not in current}
    if not retired:
        return state
    optimizer = state["optimizer"]
    (group,) = optimizer["param_groups"]
    saved_order = [k for k in state["model"] if k in current or k in retired]
    index = {name: i for i, name in enumerate(current)}
    moved = {index[name]: optimizer["state"][i] for i, name in enumerate(saved_order)
             if name in index and i in optimizer["state"]}
    weights = type(state["model"])((k, v) for k, v in state["model"].items() if k not in retired)
    if hasattr(state["model"], "_metadata"):
        weights._metadata = state["model"]._metadata
    return {**state, "model": weights,
            "optimizer": {**optimizer, "state": moved, "param_groups": [{**group, "params": list(index.values())}]}}


def step_seed(seed: int, step: int, rank: int) -> int:
    """The RNG seed of one step on one rank (dropout), so no per-rank RNG state must be saved (D6)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class TrainState:
    """Model, optimiser, loss, early stopping and counters of one run, with an exact state_dict.

    ``forward_module`` is what the step calls: the model itself, or a DDP wrapper around it set by
    the Ray worker, under ``torch.compile`` when the run asks for it. Checkpoints always hold the
    unwrapped model, so no ``module.`` or ``_orig_mod.`` prefix mismatch can occur on load (spec B12),
    and a compiled run's checkpoint loads into an eager state.
    """

    def __init__(self, spec: RunSpec, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        torch.manual_seed(spec.train.seed)
        self.model: nn.Module = build_model_from_config(spec.model).to(self.device)
        self.forward_module: nn.Module = compiled(self.model, spec.train)
        self.loss_fn = build_loss(spec.experiment, spec.model.vocab_size, spec.train.seed)
        if self.loss_fn is not None:
            self.loss_fn = self.loss_fn.to(self.device)
        self.optimizer = build_optimizer(self.model, spec.experiment)
        self.early_stopping = EarlyStopping(spec.experiment.patience, spec.experiment.min_delta)
        self.step = 0
        """Optimiser steps applied so far; also the index of the next step."""
        self.tokens_seen = 0

    @property
    def finished(self) -> bool:
        """True once every planned step ran or early stopping fired."""
        return self.step >= self.spec.train.steps or self.early_stopping.should_stop

    @property
    def wave_ratio(self) -> float | None:
        """Current mix of wave vs lookup embedding (v1 wave models), else None."""
        embedding = getattr(self.model, "embedding", None)
        return float(embedding.wave_ratio) if hasattr(embedding, "wave_ratio") else None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly; tensors and plain Python values only."""
        return {
            "format": STATE_FORMAT,
            "spec": self.spec.to_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss_fn.state_dict() if self.loss_fn is not None else {},
            "early_stopping": self.early_stopping.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuses a state written for another model or ablation."""
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"checkpoint format {state.get('format')!r} is not supported; "
                              f"this version reads format {STATE_FORMAT}")
        saved = RunSpec.from_dict(state["spec"])
        for part in ("model", "experiment"):
            if getattr(saved, part) != getattr(self.spec, part):
                diff = _diff(getattr(saved, part), getattr(self.spec, part))
                raise ConfigError(f"the checkpoint was written with a different {part} config ({diff}); "
                                  "resume with the same settings or start a new run")
        state = _without_retired_parameters(state, self.model)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.loss_fn is not None:
            self.loss_fn.load_state_dict(state["loss"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])


def compiled(module: nn.Module, train: TrainConfig) -> nn.Module:
    """``module`` under ``torch.compile`` in the run's mode (:attr:`TrainConfig.compile`), else itself.

    Only the training forward and backward are compiled: the optimisers (RGD's FFTs), QFE and the
    evaluation stay eager, so the checkpointed state is exactly that of an eager run.
    """
    return module if train.compile is None else torch.compile(module, mode=train.compile)


def _diff(saved: Any, current: Any) -> str:
    pairs = [(f.name, getattr(saved, f.name), getattr(current, f.name))
             for f in dataclasses.fields(saved)]
    return ", ".join(f"{name}: checkpoint {a!r} vs now {b!r}" for name, a, b in pairs if a != b)


def _schedule(state: TrainState, step: int) -> tuple[float, float | None]:
    """Set this step's learning rate and embedding mix; return (lr, standard_embed_ratio)."""
    spec = state.spec
    lr = lr_at(step, max_lr=spec.experiment.lr, warmup_steps=spec.experiment.warmup_steps,
               total_steps=spec.train.steps)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    embedding = getattr(state.model, "embedding", None)
    if spec.model.model_type != "wave":
        return lr, None
    if spec.model.embedding == "v2":
        return lr, standard_embed_ratio_at(step)
    if spec.experiment.wave_ratio_schedule:
        embedding.set_wave_ratio(next_wave_ratio(embedding.wave_ratio, step, spec.train.steps))
    return lr, None


def autocast(state: TrainState) -> torch.autocast:
    """The precision the run's forward passes use (``TrainConfig.precision``); fp32 disables it."""
    return torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=state.spec.train.precision == "bf16")


def _objective(state: TrainState, x: torch.Tensor, y: torch.Tensor,
               embed_ratio: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if state.loss_fn is None:
        _, ce = state.forward_module(x, y, standard_embed_ratio=embed_ratio or 0.0)
        return ce, ce, None
    # No targets for the model: QFE computes the cross-entropy itself, from the same log-softmax.
    logits, _ = state.forward_module(x, None, standard_embed_ratio=embed_ratio or 0.0)
    parts = state.loss_fn(logits, y)
    return parts["total"], parts["ce"], parts["coherence"]


def train_step(state: TrainState, batch_fn: BatchFn, *, rank: int = 0, world_size: int = 1) -> StepResult:
    """Apply one optimiser step (all micro-batches, clip, update) and advance the state."""
    spec, step = state.spec, state.step
    accum = spec.train.grad_accum_steps
    ratio_logit = getattr(getattr(state.model, "embedding", None), "wave_ratio_logit", None)
    ratio_before = ratio_logit.detach().clone() if ratio_logit is not None else None
    lr, embed_ratio = _schedule(state, step)
    torch.manual_seed(step_seed(spec.train.seed, step, rank))
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(3, device=state.device)
    for micro in range(accum):
        x, y = batch_fn(step * accum + micro, rank, world_size)
        x, y = x.to(state.device, non_blocking=True), y.to(state.device, non_blocking=True)
        last = micro == accum - 1
        no_sync = getattr(state.forward_module, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with autocast(state):
                loss, ce, coherence = _objective(state, x, y, embed_ratio)
            (loss / accum).backward()
        coh = coherence.detach() if coherence is not None else torch.zeros((), device=state.device)
        totals += torch.stack([loss.detach(), ce.detach(), coh]) / accum
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), spec.train.grad_clip)
    # One CPU-GPU sync per step, so a NaN is caught before it reaches the weights.
    loss_v, ce_v, coh_v, norm_v = torch.cat([totals, grad_norm.detach().reshape(1)]).tolist()
    if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
        if ratio_before is not None:
            with torch.no_grad():
                ratio_logit.copy_(ratio_before)
        raise NonFiniteLossError(f"training diverged at step {step}: loss={loss_v}, grad_norm={norm_v}; "
                                 "the step was not applied, so every checkpoint saved before it is good")
    state.optimizer.step()
    tokens = spec.train.batch_size * spec.model.block_size * accum
    state.step += 1
    state.tokens_seen += tokens
    return StepResult(step=step, loss=loss_v, ce=ce_v, coherence=coh_v if state.loss_fn else None,
                      lr=lr, grad_norm=norm_v, wave_ratio=state.wave_ratio,
                      standard_embed_ratio=embed_ratio, tokens=tokens)


def train_steps(state: TrainState, batch_fn: BatchFn, n_steps: int, *, rank: int = 0,
                world_size: int = 1) -> list[StepResult]:
    """Run up to ``n_steps`` optimiser steps, stopping early at the end of the run."""
    results = []
    for _ in range(n_steps):
        if state.step >= state.spec.train.steps:
            break
        results.append(train_step(state, batch_fn, rank=rank, world_size=world_size))
    return results


@torch.no_grad()
def evaluate(state: TrainState, batches: Sequence[Batch]) -> float:
    """Mean validation CE over fixed windows, with the same embedding mix as training at this step (D5)."""
    model = state.model
    was_training = model.training
    model.eval()
    embed_ratio = (standard_embed_ratio_at(state.step)
                   if state.spec.model.model_type == "wave" and state.spec.model.embedding == "v2" else 0.0)
    total = torch.zeros((), device=state.device)
    for x, y in batches:
        with autocast(state):
            _, ce = model(x.to(state.device), y.to(state.device), standard_embed_ratio=embed_ratio)
        total += ce.float()
    model.train(was_training)
    return float(total) / len(batches)
