"""Typed, validated configuration: model sizes, the ablation registry and run settings.

Every user-facing choice is a field of one of three frozen dataclasses, checked once in
``__post_init__`` so a bad value fails at the edge with one line that names it and what is allowed.
Nothing here is ever mutated: a run that needs other steps gets ``dataclasses.replace`` copies
(the original suite mutated its global tables, spec B20).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MODEL_TYPES = ("wave", "standard")
EMBEDDINGS = ("v1", "v2")
ATTENTIONS = ("interference", "pure_wave", "standard")
PURE_WAVE_KERNELS = ("elu_plus_one", "sigmoid", "exp")
PURE_WAVE_MODES = ("quadratic", "linear")
OPTIMIZERS = ("adamw", "rgd")
LOSSES = ("ce", "qfe")


class ConfigError(ValueError):
    """A user mistake in a configuration value; its message is one line naming the value."""


def _choice(field: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{field}={value!r} is not one of: {', '.join(allowed)}")


def require_bool(field: str, value: Any) -> None:
    """Raise a one-line ConfigError unless ``value`` is True or False: a string such as ``"no"`` is
    truthy, so it would switch on what it meant to switch off."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field}={value!r} must be True or False")


def _positive(field: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{field}={value!r} must be a finite number {bound}")


def require_int(field: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> None:
    """Raise a one-line ConfigError unless ``value`` is an integer >= ``minimum`` (and <= ``maximum``
    when given); bools are not integers."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (
            maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{field}={value!r} must be an integer {allowed}")


MAX_SEED = (1 << 63) - 1
"""The largest seed: PyTorch's generators take a signed 64-bit one (a larger seed failed in the workers)."""
MAX_VOCAB_SIZE = 1 << 18
"""The largest vocabulary a model is built for (262,144, Gemma's size; GPT-2 has 50,257): the tables
grow with it, and a typo such as 100000000 would size a 17-billion-parameter model."""


def _fraction(field: str, value: Any, *, closed_top: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and 0 <= value and (value <= 1 if closed_top else value < 1)
    if not ok:
        top = "1]" if closed_top else "1)"
        raise ConfigError(f"{field}={value!r} must be in [0, {top}")


class _JsonConfig:
    """Plain-JSON round trip shared by every config: what checkpoints and config.json store."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as stored in checkpoints and config.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; unknown keys are a user error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig(_JsonConfig):
    """The architecture of one network: enough to rebuild it from a checkpoint alone."""

    vocab_size: int
    """V: rows of the embedding tables and width of the output head."""
    d_model: int
    """d: residual stream width."""
    num_layers: int
    """L: number of transformer blocks."""
    num_heads: int
    """n_h: attention heads; d_model must divide evenly among them."""
    num_waves: int
    """W: wave components per token (embedding) and per head (wave attention)."""
    num_harmonics: int = 4
    """K: harmonics per wave, multipliers 1..K."""
    block_size: int = 256
    """Longest context: positional table size and generation crop."""
    dropout: float = 0.1
    """Dropout probability on attention weights, MLP outputs and the standard embedding."""
    model_type: str = "wave"
    """``wave`` (WaveGPT) or ``standard`` (the GPT-2-style control)."""
    embedding: str = "v1"
    """Wave embedding version: ``v1`` learnable spectrum (canonical, D1) or ``v2`` physics."""
    attention: str = "interference"
    """Attention inside wave blocks: ``interference``, ``pure_wave`` or ``standard`` (SDPA)."""
    pure_wave_kernel: str = "elu_plus_one"
    """Kernel of pure-wave attention: ``elu_plus_one``, ``sigmoid`` or ``exp``."""
    pure_wave_mode: str = "quadratic"
    """``quadratic`` (T x T, spec 1.4b) or ``linear`` (normalised causal linear attention, O(T))."""

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "num_waves", "num_harmonics", "block_size"):
            require_int(name, getattr(self, name))
        require_int("vocab_size", self.vocab_size, maximum=MAX_VOCAB_SIZE)
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                "pick d_model as a multiple of num_heads")
        _fraction("dropout", self.dropout)
        _choice("model_type", self.model_type, MODEL_TYPES)
        _choice("embedding", self.embedding, EMBEDDINGS)
        _choice("attention", self.attention, ATTENTIONS)
        _choice("pure_wave_kernel", self.pure_wave_kernel, PURE_WAVE_KERNELS)
        _choice("pure_wave_mode", self.pure_wave_mode, PURE_WAVE_MODES)

    @property
    def head_dim(self) -> int:
        """D = d_model / num_heads."""
        return self.d_model // self.num_heads



@dataclass(frozen=True)
class ExperimentConfig(_JsonConfig):
    """One ablation: which model parts and physics are on, with the hyper-parameters of spec 4.1-4.2."""

    name: str
    """Registry key, e.g. ``rgd_only``; also the default run name."""
    display_name: str
    """Human title used in tables and plots."""
    model_type: str = "wave"
    attention: str = "interference"
    pure_wave_kernel: str = "elu_plus_one"
    pure_wave_mode: str = "quadratic"
    embedding: str = "v1"
    optimizer: str = "adamw"
    """``adamw`` or ``rgd`` (legacy Resonant Gradient Descent, spec 2.1)."""
    loss: str = "ce"
    """``ce`` or ``qfe`` (legacy Quantum Field Entanglement loss, spec 2.2)."""
    lr: float = 6e-4
    weight_decay: float = 0.01
    dropout: float = 0.1
    warmup_steps: int = 500
    """Linear LR warmup; capped at a tenth of the run so short runs still decay (see ``lr_at``)."""
    rgd_strength: float = 0.3
    rgd_warmup_steps: int = 500
    qfe_lambda: float = 0.05
    qfe_threshold: float = 0.01
    qfe_projection_dim: int = 256
    patience: int = 8
    """Early stopping: evaluations without an improvement of ``min_delta`` before stopping."""
    min_delta: float = 0.005
    wave_ratio_schedule: bool = True
    """v1 only: pull the embedding's wave ratio from 0.5 towards 0.9 over the run (spec 3.3)."""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"name={self.name!r} must be a non-empty string")
        _choice("model_type", self.model_type, MODEL_TYPES)
        _choice("attention", self.attention, ATTENTIONS)
        _choice("pure_wave_kernel", self.pure_wave_kernel, PURE_WAVE_KERNELS)
        _choice("pure_wave_mode", self.pure_wave_mode, PURE_WAVE_MODES)
        _choice("embedding", self.embedding, EMBEDDINGS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("loss", self.loss, LOSSES)
        _positive("lr", self.lr)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _fraction("dropout", self.dropout)
        require_int("warmup_steps", self.warmup_steps, minimum=0)
        _fraction("rgd_strength", self.rgd_strength, closed_top=True)
        require_int("rgd_warmup_steps", self.rgd_warmup_steps, minimum=0)
        _positive("qfe_lambda", self.qfe_lambda, allow_zero=True)
        _positive("qfe_threshold", self.qfe_threshold, allow_zero=True)
        require_int("qfe_projection_dim", self.qfe_projection_dim)
        require_int("patience", self.patience)
        _positive("min_delta", self.min_delta, allow_zero=True)
        require_bool("wave_ratio_schedule", self.wave_ratio_schedule)


PRECISIONS = ("fp32", "bf16")
"""What :attr:`TrainConfig.precision` accepts."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
"""``torch.compile`` modes :attr:`TrainConfig.compile` accepts (``None`` trains eagerly)."""


@dataclass(frozen=True)
class TrainConfig(_JsonConfig):
    """How long and on what a run trains: the knobs that are equal for every ablation in a grid."""

    steps: int = 500
    """Optimiser steps; the LR schedule decays to zero at this step."""
    seed: int = 1337
    """Fixes init, data order, dropout and the QFE projection."""
    batch_size: int = 16
    """Sequences per micro-batch across all ranks; an optimiser step sees ``grad_accum_steps`` of them
    (spec 4.3: micro-batch 16, accumulation 2)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimiser step on each rank (the results of spec 6.1 used 1)."""
    eval_interval: int = 250
    """Optimiser steps between validations."""
    eval_batches: int = 20
    """Validation batches per evaluation; the windows are fixed for the whole run (D5)."""
    grad_clip: float = 1.0
    """Global L2 norm clip before every optimiser step."""
    precision: str = "fp32"
    """``fp32``, or ``bf16``: forward passes and losses under bfloat16 autocast (float32 weights,
    gradients and optimiser state), what a GPU's tensor cores run fast; fp32 is bit-reproducible."""
    compile: str | None = None
    """A ``torch.compile`` mode for the training forward and backward, or None (eager): fused kernels
    for the wave model's many small elementwise terms, which is where a GPU step spends its time.
    The first step pays the compilation (tens of seconds); the mathematics is the same, the float
    rounding of fused kernels and the dropout draws are not bit-equal to eager's."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r} is not one of: {', '.join(PRECISIONS)}")
        if self.compile is not None:
            _choice("compile", self.compile, COMPILE_MODES)
        require_int("steps", self.steps)
        require_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        require_int("batch_size", self.batch_size)
        require_int("grad_accum_steps", self.grad_accum_steps)
        require_int("eval_interval", self.eval_interval)
        require_int("eval_batches", self.eval_batches)
        _positive("grad_clip", self.grad_clip)



GPT2_VOCAB = 50257

MODEL_SIZES: dict[str, ModelConfig] = {
    # New for this project (D7): a few hundred thousand parameters, for CPU runs and tests.
    "tiny": ModelConfig(vocab_size=1024, d_model=64, num_layers=2, num_heads=4, num_waves=8,
                        num_harmonics=4, block_size=64),
    "small": ModelConfig(vocab_size=GPT2_VOCAB, d_model=384, num_layers=8, num_heads=8,
                         num_waves=48, num_harmonics=4, block_size=256),
    "medium": ModelConfig(vocab_size=GPT2_VOCAB, d_model=512, num_layers=10, num_heads=8,
                          num_waves=64, num_harmonics=4, block_size=384),
    "large": ModelConfig(vocab_size=GPT2_VOCAB, d_model=768, num_layers=12, num_heads=12,
                         num_waves=96, num_harmonics=4, block_size=512),
}
"""Model sizes by name (spec 4.3 plus ``tiny``); vocab_size is the default when no tokenizer says otherwise."""

BATCH_SIZES: dict[str, int] = {"tiny": 16, "small": 16, "medium": 24, "large": 16}
"""Default global batch (sequences per optimiser step) of each size, spec 4.3."""

_PHYSICS = dict(optimizer="rgd", loss="qfe", lr=1e-3)
_PURE = dict(attention="pure_wave", **_PHYSICS)

ABLATIONS: dict[str, ExperimentConfig] = {
    cfg.name: cfg for cfg in (
        ExperimentConfig("standard_transformer", "Standard Transformer (GPT-2)",
                         model_type="standard", attention="standard"),
        ExperimentConfig("wave_baseline", "Wave Baseline (AdamW + CE)"),
        ExperimentConfig("rgd_only", "RGD Only", optimizer="rgd", lr=1e-3),
        ExperimentConfig("full_physics", "Full Physics (RGD + QFE)", qfe_lambda=0.1, dropout=0.0,
                         **_PHYSICS),
        ExperimentConfig("qfe_only", "QFE Only", loss="qfe"),
        ExperimentConfig("pure_wave", "Pure Wave (ELU+1)", **_PURE),
        ExperimentConfig("pure_wave_linear", "Pure Wave (Linear O(N))", pure_wave_mode="linear",
                         **_PURE),
        ExperimentConfig("pure_wave_sigmoid", "Pure Wave (Sigmoid)", pure_wave_kernel="sigmoid",
                         **_PURE),
        ExperimentConfig("pure_wave_exp", "Pure Wave (Exp)", pure_wave_kernel="exp", **_PURE),
    )
}
"""The nine ablations of spec 4.2 by name (D4)."""

ABLATION_ALIASES = {"baseline": "wave_baseline"}
"""Old names that still work on the command line (D4)."""


def get_ablation(name: str) -> ExperimentConfig:
    """The ablation called ``name`` (aliases allowed), or one clear error listing the valid names."""
    key = ABLATION_ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in ABLATIONS:
        allowed = ", ".join([*ABLATIONS, *ABLATION_ALIASES])
        raise ConfigError(f"unknown ablation {name!r}; allowed: {allowed}")
    return ABLATIONS[key]


def get_model_size(size: str) -> ModelConfig:
    """The model size called ``size``, or one clear error listing the valid sizes."""
    if not isinstance(size, str) or size not in MODEL_SIZES:
        raise ConfigError(f"unknown model size {size!r}; allowed: {', '.join(MODEL_SIZES)}")
    return MODEL_SIZES[size]


def model_config_for(size: str, ablation: str | ExperimentConfig,
                     vocab_size: int | None = None) -> ModelConfig:
    """The architecture of ``ablation`` at ``size``: the size's shape with the ablation's parts."""
    exp = ablation if isinstance(ablation, ExperimentConfig) else get_ablation(ablation)
    base = get_model_size(size)
    return dataclasses.replace(
        base,
        vocab_size=base.vocab_size if vocab_size is None else vocab_size,
        dropout=exp.dropout,
        model_type=exp.model_type,
        embedding=exp.embedding,
        attention=exp.attention,
        pure_wave_kernel=exp.pure_wave_kernel,
        pure_wave_mode=exp.pure_wave_mode,
    )
