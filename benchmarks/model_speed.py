"""How fast the models train, in one process with no Ray: wave vs standard, attention scaling, MFU.

Every figure is a ratio of two things measured in the same process, interleaved round by round, so
a machine that slows down (other jobs, thermal limits) slows both sides alike. Throughput is full
training steps (:func:`spectral_gpt.training.train_step`: forward, backward, clip, optimiser) on fixed
random token ids: the speed of a step does not depend on which ids it sees, and no corpus is needed.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import time
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import benchmark, result
from spectral_gpt import physics
from spectral_gpt.attention import build_attention
from spectral_gpt.config import ABLATIONS, BATCH_SIZES, ExperimentConfig, ModelConfig, TrainConfig, model_config_for
from spectral_gpt.flops import forward_flops, training_flops_per_token
from spectral_gpt.training import BatchFn, RunSpec, TrainState, train_step

Variant = tuple[ModelConfig, ExperimentConfig]
"""What one throughput measurement trains: the architecture and the ablation (optimiser, loss, lr)."""

PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
"""Dense bf16 tensor-core peaks (vendor data sheets) by device-name fragment, first match wins."""


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Sizes of one throughput measurement: quick for a smoke run, full for the published figure."""

    size: str
    batch: int
    warmup: int
    rounds: int
    steps: int
    """Timed steps per variant per round."""


def _plan(quick: bool, size: str | None = None) -> _Plan:
    """Quick: tiny; full: small. ``size`` measures another model size at its own default batch
    (BATCH_SIZES) on a GPU; on a CPU every size but tiny trains a batch of 8. Seven rounds, as rounds
    of the small model on 2 CPU cores vary by 10-15 % (one in eight by far more), which the median
    of three let through: the same code measured 0.65 and 0.73 for its worst wave variant."""
    if size is None:
        size = "tiny" if quick else "small"
    if size == "tiny":
        return _Plan(size="tiny", batch=16, warmup=3, rounds=5, steps=5)
    batch = (BATCH_SIZES[size] if size != "small" else 16) if torch.cuda.is_available() else 8
    return _Plan(size=size, batch=batch, warmup=2, rounds=7, steps=3)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _precision() -> str:
    """What a user trains with here: bf16 autocast on a GPU (tensor cores), float32 on a CPU (where
    bfloat16 matmuls are emulated and slower)."""
    return "bf16" if torch.cuda.is_available() else "fp32"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fixed_batch(vocab_size: int, batch: int, block_size: int) -> BatchFn:
    """The same random (x, y) for every step: step time does not depend on token values."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (batch, block_size + 1), generator=gen)
    return lambda step, rank, world_size: (x[:, :-1], x[:, 1:])


def _variant(size: str, experiment: ExperimentConfig, **changes: Any) -> Variant:
    """``experiment`` with ``changes`` (attention, optimiser...) and its model at ``size``, vocab 1024."""
    exp = dataclasses.replace(experiment, **changes)
    return model_config_for(size, exp, vocab_size=1024), exp


def _tokens_per_second(variants: dict[str, Variant], plan: _Plan,
                       train_changes: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """Median tokens/s of full training steps of each variant, measured in interleaved rounds; each
    trains at :func:`_precision`, eagerly, unless ``train_changes[name]`` sets other TrainConfig fields
    (``precision``, ``compile``). Warm-up steps include any compilation."""
    device = _device()
    states: dict[str, tuple[TrainState, BatchFn]] = {}
    for name, (cfg, exp) in variants.items():
        changes = {"precision": _precision(), **(train_changes or {}).get(name, {})}
        spec = RunSpec(cfg, exp, TrainConfig(steps=10**9, batch_size=plan.batch, **changes))
        states[name] = TrainState(spec, device), _fixed_batch(cfg.vocab_size, plan.batch, cfg.block_size)
        for _ in range(plan.warmup):
            train_step(*states[name])
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(plan.rounds):
        for name, (state, batch_fn) in states.items():
            _sync(device)
            started, tokens = time.perf_counter(), state.tokens_seen
            for _ in range(plan.steps):
                train_step(state, batch_fn)
            _sync(device)
            samples[name].append((state.tokens_seen - tokens) / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in samples.items()}


_NO_KERNEL_OPS = frozenset({"_unsafe_view", "alias", "detach", "lift_fresh", "empty", "empty_like", "empty_strided",
                            "scalar_tensor", "_local_scalar_dense", "promote_types", "_record_function_enter_new",
                            "_record_function_exit"})
"""Operators that reach the dispatcher but run no device kernel: views, allocations, host scalars."""


class _KernelOpCount(TorchDispatchMode):
    """Counts the operators of a step that run a kernel, as the dispatcher sees them below autograd:
    forward, backward and optimiser alike, one per ``_foreach_``/``_fused_`` call as on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: collections.Counter[str] = collections.Counter()

    @property
    def count(self) -> int:
        """All kernel-running operators seen so far."""
        return self.by_name.total()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if not func.is_view and func.overloadpacket.__name__ not in _NO_KERNEL_OPS:
            self.by_name[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _kernel_ops_per_step(variants: dict[str, Variant]) -> dict[str, collections.Counter[str]]:
    """Kernel-running operators of one bf16 training step of each variant, as this device trains it
    (the count does not depend on the batch, so batch 1). A model too small to fill a GPU is bound by
    kernel launches, not FLOPs: counted on an H200, the AdamW wave variants' inverse count ratios to
    the standard GPT (0.62, 0.49, 0.45, 0.82 for interference, quadratic, linear, softmax) were within
    0.05 of their measured tokens/s ratios (0.63, 0.54, 0.49, 0.87). Only a count on the GPU predicts
    the GPU: on a CPU, SDPA runs as its math path (about 30 operators, one fused kernel on a GPU) and
    dropout as the CPU mask, which inflates the standard GPT more than the wave model (a CPU count
    predicted 0.71 for interference). RGD stacks its matrices per FFT as on a GPU while counting (a
    CPU caps its batches to its caches, ``_GATE_BATCH_ELEMENTS``, and ran 30 transforms for the small
    model where a GPU runs 6). Each variant's count is by operator name."""
    counts = {}
    for name, (cfg, exp) in variants.items():
        state = TrainState(RunSpec(cfg, exp, TrainConfig(steps=10**9, batch_size=1, precision="bf16")), _device())
        batch_fn = _fixed_batch(cfg.vocab_size, 1, cfg.block_size)
        with mock.patch.dict(physics._GATE_BATCH_ELEMENTS, {"cpu": physics._GATE_BATCH_ELEMENTS_DEFAULT}):
            train_step(state, batch_fn)  # the optimiser state exists from the second step on
            with _KernelOpCount() as mode:
                train_step(state, batch_fn)
        counts[name] = mode.by_name
    return counts


def _ops_beyond(counts: collections.Counter[str], baseline: collections.Counter[str]) -> dict[str, int]:
    """Operators ``counts`` runs more (or fewer, negative) times than ``baseline``, largest first: where
    a variant's extra kernel launches come from."""
    diff = collections.Counter(counts)
    diff.subtract(baseline)
    return {op: n for op, n in sorted(diff.items(), key=lambda item: (-abs(item[1]), item[0])) if n}


def _plan_details(plan: _Plan, cfg: ModelConfig) -> dict[str, Any]:
    return {"model": {"size": plan.size, "d_model": cfg.d_model, "num_layers": cfg.num_layers,
                      "num_heads": cfg.num_heads, "num_waves": cfg.num_waves, "block_size": cfg.block_size,
                      "vocab_size": cfg.vocab_size},
            "batch": plan.batch, "timed_steps_per_round": plan.steps, "rounds": plan.rounds,
            "device": str(_device()), "precision": _precision()}


WAVE_ATTENTIONS = {
    "interference": dict(attention="interference"),
    "pure_quadratic": dict(attention="pure_wave", pure_wave_mode="quadratic"),
    "pure_linear": dict(attention="pure_wave", pure_wave_mode="linear"),
    "standard_attention": dict(attention="standard"),
}
"""The attention kinds a WaveGPT block can use, as changes to the ``wave_baseline`` ablation."""


@benchmark
def wave_vs_standard(quick: bool = False, size: str | None = None) -> dict[str, Any]:
    """Training tokens/s of WaveGPT (each attention kind, AdamW and RGD) / the standard GPT with AdamW.

    Same d_model, layers, heads, block size, batch and CE loss on every side. ``value`` is the worst
    wave variant (the goal must hold for all); ``details`` has every ratio, including the standard GPT
    trained with RGD, which shows what RGD alone costs.
    """
    plan = _plan(quick, size)
    wave, standard = ABLATIONS["wave_baseline"], ABLATIONS["standard_transformer"]
    variants = {"standard+adamw": _variant(plan.size, standard), "standard+rgd": _variant(
        plan.size, standard, optimizer="rgd", lr=ABLATIONS["rgd_only"].lr)}
    for kind, changes in WAVE_ATTENTIONS.items():
        for optimizer, lr in (("adamw", wave.lr), ("rgd", ABLATIONS["rgd_only"].lr)):
            variants[f"wave_{kind}+{optimizer}"] = _variant(plan.size, wave, optimizer=optimizer, lr=lr, **changes)
    speed = _tokens_per_second(variants, plan)
    baseline = speed["standard+adamw"]
    ratios = {name: tps / baseline for name, tps in speed.items() if name != "standard+adamw"}
    worst = min((name for name in ratios if name.startswith("wave_")), key=ratios.get)
    ops_by_name = _kernel_ops_per_step(variants)
    kernel_ops = {name: ops.total() for name, ops in ops_by_name.items()}
    return result("wave_vs_standard", speed[worst], "tokens/s", baseline, ">= 0.7",
                  headline=f"worst wave variant: {worst}", ratios=ratios,
                  wave_baseline_ratio=ratios["wave_interference+adamw"], tokens_per_sec=speed,
                  kernel_ops_per_step=kernel_ops,
                  launch_bound_ratios={name: kernel_ops["standard+adamw"] / ops for name, ops in kernel_ops.items()
                                       if name != "standard+adamw"},
                  kernel_ops_beyond_standard={name: _ops_beyond(ops, ops_by_name["standard+adamw"])
                                              for name, ops in ops_by_name.items() if name != "standard+adamw"},
                  **_plan_details(plan, variants[worst][0]))


@benchmark
def compile_speedup(quick: bool = False, size: str | None = None) -> dict[str, Any]:
    """Training tokens/s of WaveGPT under ``--compile`` (TorchInductor) / the same model eager.

    The wave model's step is many small elementwise wave terms; fusing them is what compilation is
    for, above all on a GPU, where each unfused term is a kernel launch. The standard GPT is measured
    the same way alongside, and ``wave_vs_standard_compiled`` is wave_vs_standard with both compiled
    (``wave``: the default interference attention); every other wave attention kind is measured too
    (AdamW), in ``wave_vs_standard_compiled_by_attention``. Compilation happens in the warm-up steps;
    its seconds are reported, not timed as training.
    """
    plan = _plan(quick, size)
    wave = ABLATIONS["wave_baseline"]
    models = {"wave" if kind == "interference" else f"wave_{kind}": _variant(plan.size, wave, **changes)
              for kind, changes in WAVE_ATTENTIONS.items()}
    models["standard"] = _variant(plan.size, ABLATIONS["standard_transformer"])
    variants = {f"{model}{suffix}": variant for model, variant in models.items() for suffix in ("", "@compile")}
    started = time.perf_counter()
    speed = _tokens_per_second(variants, plan, {name: {"compile": "default"} for name in variants
                                                if name.endswith("@compile")})
    speedups = {model: speed[f"{model}@compile"] / speed[model] for model in models}
    kinds = {kind: "wave" if kind == "interference" else f"wave_{kind}" for kind in WAVE_ATTENTIONS}
    return result("compile_speedup", speed["wave@compile"], "tokens/s", speed["wave"], "report",
                  speedups=speedups, tokens_per_sec=speed,
                  wave_vs_standard_eager=speed["wave"] / speed["standard"],
                  wave_vs_standard_compiled=speed["wave@compile"] / speed["standard@compile"],
                  wave_vs_standard_eager_by_attention={kind: speed[m] / speed["standard"] for kind, m in kinds.items()},
                  wave_vs_standard_compiled_by_attention={kind: speed[f"{m}@compile"] / speed["standard@compile"]
                                                          for kind, m in kinds.items()},
                  seconds_with_compilation=time.perf_counter() - started, compile_mode="default",
                  **_plan_details(plan, models["wave"][0]))


def _attention_seconds_per_token(cfg: ModelConfig, seq_len: int, batch: int, reps: int) -> float:
    """Median seconds per token of one attention module's forward + backward (input grads included)."""
    device = _device()
    torch.manual_seed(0)
    attn = build_attention(cfg).to(device)
    x = torch.randn(batch, seq_len, cfg.d_model, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    times = []
    for rep in range(reps + 2):  # two untimed warm-up passes
        _sync(device)
        started = time.perf_counter()
        attn(x).backward(grad)
        _sync(device)
        if rep >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times) / (batch * seq_len)


@benchmark
def linear_attention_scaling(quick: bool = False, size: str | None = None) -> dict[str, Any]:
    """Per-token time of linear pure-wave attention at T=2048 / at T=256 (quadratic mode alongside).

    Times the attention module alone (forward + backward, train mode), not the whole model: the
    embedding, MLP and head cost the same per token at any T and would only dilute the ratio. Both
    lengths see the same 2048 tokens (batch 8 x 256, batch 1 x 2048).
    """
    size = size or ("tiny" if quick else "small")
    reps, tokens, (short, long) = (5 if quick else 10), 2048, (256, 2048)
    per_token: dict[str, dict[int, float]] = {}
    for mode in ("linear", "quadratic"):
        cfg = model_config_for(size, "pure_wave_linear" if mode == "linear" else "pure_wave")
        per_token[mode] = {T: _attention_seconds_per_token(cfg, T, tokens // T, reps) for T in (short, long)}
    quadratic = per_token["quadratic"]
    return result("linear_attention_scaling", per_token["linear"][long], "s/token", per_token["linear"][short],
                  "<= 1.5", quadratic_ratio=quadratic[long] / quadratic[short],
                  seconds_per_token={mode: {str(T): s for T, s in v.items()} for mode, v in per_token.items()},
                  flops_ratio={mode: _mixing_flops_ratio(size, mode, short, long) for mode in per_token},
                  model_size=size, tokens_per_pass=tokens, reps=reps, device=str(_device()),
                  measured="the PureWaveAttention module alone, forward + backward")


def _mixing_flops_ratio(size: str, mode: str, short: int, long: int) -> float:
    """What the FLOP count predicts for the per-token ratio of the attention module."""
    cfg = model_config_for(size, "pure_wave_linear" if mode == "linear" else "pure_wave")
    per_token = [sum(forward_flops(cfg, T)[k] for k in ("attention_projections", "attention_mixing")) / T
                 for T in (short, long)]
    return per_token[1] / per_token[0]


def _matmul_flops_per_second(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best observed FLOP/s of an n x n matmul: what this device really does at its most favourable."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for rep in range(reps + 1):
        _sync(device)
        started = time.perf_counter()
        a @ b
        _sync(device)
        if rep:
            best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best


def _peak_flops(quick: bool) -> tuple[float, str, float]:
    """(peak FLOP/s, where it comes from, measured float32 matmul FLOP/s) of this device."""
    device = _device()
    measured_fp32 = _matmul_flops_per_second(device, torch.float32, 1024 if quick else 2048)
    if device.type == "cpu":
        return measured_fp32, "measured: best float32 matmul on this CPU at the training thread count", \
            measured_fp32
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_BF16_FLOPS:
        if fragment in name:
            return peak, f"data sheet: dense bf16 peak of {fragment}", measured_fp32
    bf16 = _matmul_flops_per_second(device, torch.bfloat16, 8192)
    return bf16, f"measured: best bf16 matmul on {name} (not in the data-sheet table)", measured_fp32


@benchmark
def mfu(quick: bool = False, size: str | None = None) -> dict[str, Any]:
    """Model FLOPs utilisation of WaveGPT (wave_baseline) and the standard GPT: achieved / peak FLOP/s.

    Achieved = training tokens/s x the analytic matmul FLOPs per token of spectral_gpt/flops.py
    (forward + backward). Peak = the best float32 matmul measured here on a CPU, the data-sheet dense
    bf16 peak on a known GPU. ``value`` is the wave model's MFU, ``baseline`` the standard GPT's, both
    training in bf16 autocast on a GPU (float32 alongside, ``NAME@fp32``) and in float32 on a CPU.
    """
    plan = _plan(quick, size)
    variants = {"wave_baseline": _variant(plan.size, ABLATIONS["wave_baseline"]),
                "standard_transformer": _variant(plan.size, ABLATIONS["standard_transformer"])}
    precisions = dict.fromkeys(variants, _precision())
    if _precision() != "fp32":  # on a GPU, float32 training alongside, for the contrast
        variants.update({f"{name}@fp32": variant for name, variant in list(variants.items())})
        precisions.update(dict.fromkeys((name for name in variants if name.endswith("@fp32")), "fp32"))
    speed = _tokens_per_second(variants, plan, {name: {"precision": p} for name, p in precisions.items()})
    peak, source, fp32 = _peak_flops(quick)
    models = {}
    for name, (cfg, _) in variants.items():
        per_token = training_flops_per_token(cfg)
        achieved = speed[name] * per_token
        models[name] = {"precision": precisions[name], "tokens_per_sec": speed[name],
                        "training_flops_per_token": per_token, "achieved_flops_per_sec": achieved,
                        "mfu": achieved / peak, "mfu_vs_measured_fp32_matmul": achieved / fp32}
    return result("mfu", models["wave_baseline"]["mfu"], "fraction of peak", models["standard_transformer"]["mfu"],
                  "report", peak_flops_per_sec=peak, peak_source=source, measured_fp32_matmul_flops_per_sec=fp32,
                  models=models, counted="matmul FLOPs only (spectral_gpt/flops.py)",
                  **_plan_details(plan, variants["wave_baseline"][0]))

