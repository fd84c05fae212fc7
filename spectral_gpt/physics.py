"""The legacy "physics" of the Wave GPT: Resonant Gradient Descent and the QFE loss (spec 2.1, 2.2).

Both are rebuilt exactly as the reported physics runs used them, with the original's reproducibility
bugs fixed: RGD keeps its warmup counter in its state_dict (B12) and QFE draws its projection from the
run's seed and stores it as a buffer (B18), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_gpt.config import ConfigError, ExperimentConfig

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def resonance_alpha(step: int, strength: float, warmup_steps: int) -> float:
    """Weight of the spectral gate at global step ``step`` (1-based): ramps 0 -> strength over warmup.

    The ramp avoids the bootstrap problem of spec 2.1: frequencies that start weak would stay weak if
    the gate were fully on from the first step.
    """
    if warmup_steps <= 0:
        return strength
    return min(1.0, step / warmup_steps) * strength


_GATE_BATCH_ELEMENTS = {"cpu": 1 << 20}
"""Most elements (weights and updates together) one batched FFT call may stack, by device type.

Batching same-shape matrices into one call saves per-call overhead (and, on GPUs, kernel launches)
for the many small matrices of a model; on CPUs a batch larger than the caches is slower than
separate calls (measured on the small model's 1536x384 MLP weights), hence the CPU cap. Other
devices use :data:`_GATE_BATCH_ELEMENTS_DEFAULT`.
"""
_GATE_BATCH_ELEMENTS_DEFAULT = 1 << 24


def _normalised_power(spectra: Tensor, eps: float) -> Tensor:
    """``(|X| / (max|X| + eps))²`` of every matrix in ``spectra`` (k, m, n'), max taken per matrix.

    Squared magnitudes ``re² + im²`` cost a fraction of the complex ``abs`` (a hypot per element),
    and normalising before :func:`_gate` multiplies two of them keeps the product from overflowing.
    """
    parts = torch.view_as_real(spectra)
    power = parts[..., 0] * parts[..., 0]
    power.addcmul_(parts[..., 1], parts[..., 1])
    peak = power.amax(dim=(-2, -1), keepdim=True).sqrt_().add_(eps).square_()
    return power.div_(peak)


def _gate(pairs: Tensor, alpha: float, eps: float) -> Tensor:
    """Spec 2.1's ``Re(ifft2(F2(u) * rho))`` for k matrices at once: pairs (2k, m, n), the k thetas then
    their k updates, -> the k gated updates (k, m, n).

    Computed on the half spectrum: theta and u are real, so their spectra are conjugate-symmetric, rho
    is symmetric under the conjugate index map and ``irfft2`` of the gated half equals the real part of
    the full inverse (half the FFT work of the original, whose 2-D FFTs dominated its step time, spec 8
    "Performance"). Weights and updates go through one transform and one power computation, half the
    kernel launches of two. ``rho = alpha * sqrt(sqrt(P_theta * P_u) + eps) + (1 - alpha)`` with the
    normalised powers P of :func:`_normalised_power` is the spec's ``alpha * sqrt(|Θ|n |U|n + eps) +
    (1 - alpha)`` up to rounding (tests/test_physics.py checks it against a float64 DFT of the literal
    formula).
    """
    k = pairs.size(0) // 2
    spectra = torch.fft.rfft2(pairs)
    power = _normalised_power(spectra, eps)
    rho = power[:k].mul_(power[k:]).sqrt_().add_(eps).sqrt_().mul_(alpha).add_(1.0 - alpha)
    updates = spectra[k:]
    torch.view_as_real(updates).mul_(rho.unsqueeze(-1))  # complex * real, without promoting rho
    return torch.fft.irfft2(updates, s=pairs.shape[-2:])


def _as_matrices(tensors: list[Tensor], rows: int, cols: int) -> Tensor:
    """``tensors`` stacked as one (k, rows, cols) tensor, in float32 at least."""
    work = torch.float32 if tensors[0].dtype in _LOW_PRECISION else tensors[0].dtype
    return torch.stack([t.reshape(rows, cols) for t in tensors]).to(work)


def _resonance_gate(theta: Tensor, update: Tensor, alpha: float, eps: float) -> Tensor:
    """Spec 2.1's gated update of one tensor of >= 2 dims (seen as first dim x rest), shaped like ``update``."""
    return _resonance_gates([theta], [update], alpha, eps)[0]


def _resonance_gates(thetas: list[Tensor], updates: list[Tensor], alpha: float, eps: float) -> list[Tensor]:
    """:func:`_resonance_gate` of every (theta, update) pair, batching same-shape matrices into one FFT."""
    batches: dict[tuple[Any, ...], list[list[int]]] = {}
    for i, theta in enumerate(thetas):
        cap = _GATE_BATCH_ELEMENTS.get(theta.device.type, _GATE_BATCH_ELEMENTS_DEFAULT)
        key = (theta.shape[0], theta[0].numel(), theta.dtype, theta.device)
        chunks = batches.setdefault(key, [[]])
        if chunks[-1] and 2 * (len(chunks[-1]) + 1) * theta.numel() > cap:
            chunks.append([])
        chunks[-1].append(i)
    gated = list(updates)
    for (rows, cols, _, _), chunks in batches.items():
        for chunk in chunks:
            out = _gate(_as_matrices([thetas[i] for i in chunk] + [updates[i] for i in chunk], rows, cols),
                        alpha, eps)
            for j, i in enumerate(chunk):
                gated[i] = out[j].view(updates[i].shape).to(updates[i].dtype)
    return gated


class RGD(torch.optim.Optimizer):
    """Legacy Resonant Gradient Descent (spec 2.1): AdamW whose update spectrum is gated by resonance.

    It is the optimiser behind every reported physics result, so it is kept exactly: decoupled weight
    decay, bias-corrected Adam direction ``u``, then for every tensor of >= 2 dims a 2-D Fourier gate
    ``rho = alpha * sqrt(|Theta|n * |U|n + eps) + (1 - alpha)`` that damps the update where the weight
    and the update spectra are both weak. With ``resonance_strength=0`` it is AdamW step for step.

    The global step counter that drives the warmup of ``alpha`` lives in each param group as
    ``rgd_step``, so ``state_dict()`` carries it and a resumed run gates exactly like an
    uninterrupted one (the original kept it outside the state dict, spec B12).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, resonance_strength: float = 0.5,
                 warmup_steps: int = 1000) -> None:
        if not lr >= 0:
            raise ConfigError(f"lr={lr!r} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ConfigError(f"betas={betas!r} must be two numbers in [0, 1)")
        if not eps >= 0:
            raise ConfigError(f"eps={eps!r} must be >= 0")
        if not weight_decay >= 0:
            raise ConfigError(f"weight_decay={weight_decay!r} must be >= 0")
        if not 0.0 <= resonance_strength <= 1.0:
            raise ConfigError(f"resonance_strength={resonance_strength!r} must be in [0, 1]")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        resonance_strength=resonance_strength, warmup_steps=warmup_steps, rgd_step=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One RGD update of every parameter that has a gradient; advances the global counter once."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        group["rgd_step"] += 1
        alpha = resonance_alpha(group["rgd_step"], group["resonance_strength"], group["warmup_steps"])
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("RGD does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        # The same operations, in the same order, as torch.optim.AdamW's single-tensor path, so that
        # strength 0 reproduces AdamW bit for bit; the foreach calls only batch the kernel launches.
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        bias1 = [1 - beta1**s for s in steps]
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, [(1 - beta2**s) ** 0.5 for s in steps])
        torch._foreach_add_(denoms, eps)
        gated = [alpha > 0 and p.dim() >= 2 for p in params]
        plain = [i for i, g in enumerate(gated) if not g]
        if plain:
            torch._foreach_addcdiv_([params[i] for i in plain], [exp_avgs[i] for i in plain],
                                    [denoms[i] for i in plain], [-lr / bias1[i] for i in plain])
        spectral = [i for i, g in enumerate(gated) if g]
        if spectral:
            updates = torch._foreach_div([exp_avgs[i] for i in spectral], [bias1[i] for i in spectral])
            torch._foreach_div_(updates, [denoms[i] for i in spectral])
            weights = [params[i] for i in spectral]
            torch._foreach_add_(weights, _resonance_gates(weights, updates, alpha, eps), alpha=-lr)


class QFELoss(nn.Module):
    """Legacy Quantum Field Entanglement loss (spec 2.2): cross-entropy plus a spectral phase penalty.

    The penalty compares, frequency by frequency along the sequence axis, the phase of the predicted
    distribution with the phase of the targets, weighted by both amplitudes and gated where either is
    weak. Large vocabularies are first projected to ``projection_dim`` by a fixed Gaussian matrix; it
    is drawn from ``seed`` and kept as a persistent buffer, so the loss is reproducible and a resumed
    run uses the same matrix (the original's was unseeded and unsaved, spec B18).
    """

    def __init__(self, vocab_size: int, lambda_coherence: float = 0.05, amplitude_threshold: float = 0.01,
                 temperature: float = 1.0, projection_dim: int = 256, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"vocab_size={vocab_size!r} must be an integer >= 1")
        if not isinstance(projection_dim, int) or projection_dim < 1:
            raise ConfigError(f"projection_dim={projection_dim!r} must be an integer >= 1")
        if not temperature > 0:
            raise ConfigError(f"temperature={temperature!r} must be > 0")
        self.vocab_size = vocab_size
        self.lambda_coherence = lambda_coherence
        self.amplitude_threshold = amplitude_threshold
        self.temperature = temperature
        self.projection_dim = projection_dim
        projection = None
        if vocab_size > projection_dim:
            generator = torch.Generator().manual_seed(seed)
            projection = torch.randn(vocab_size, projection_dim, generator=generator)
            projection = projection / math.sqrt(projection_dim)
        self.projection: Tensor | None
        self.register_buffer("projection", projection, persistent=True)

    def coherence(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Unweighted phase-coherence penalty L_coh of spec 2.2 (>= 0, 0 when phases agree)."""
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 up, float64 kept
        scaled = logits if self.temperature == 1.0 else logits / self.temperature  # x/1 == x
        return self._coherence_of(F.softmax(scaled, dim=-1), targets)

    def _coherence_of(self, prob: Tensor, targets: Tensor) -> Tensor:
        if self.projection is None:
            signal_out = prob
            signal_tgt = F.one_hot(targets, self.vocab_size).to(prob.dtype)
        else:
            signal_out = prob @ self.projection
            signal_tgt = F.embedding(targets, self.projection)  # = one_hot(targets) @ R, without the one-hot
        spec_out = torch.fft.rfft(signal_out, dim=1)
        spec_tgt = torch.fft.rfft(signal_tgt, dim=1)
        amp_out, amp_tgt = spec_out.abs(), spec_tgt.abs()
        mask = (amp_out > self.amplitude_threshold) & (amp_tgt > self.amplitude_threshold)
        # A_o A_t (1 - cos(phi_o - phi_t)) == A_o A_t - Re(Y_o conj(Y_t)): the same value without
        # torch.angle, whose gradient is undefined at zero amplitude; clamped at 0 against rounding.
        penalty = (amp_out * amp_tgt - (spec_out * spec_tgt.conj()).real).clamp_min(0.0)
        penalty = torch.where(mask, penalty, torch.zeros_like(penalty))
        return penalty.sum() / (mask.sum() + 1e-8)

    def forward(self, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Loss parts for logits (B, T, V), targets (B, T): ``total`` (to backprop), ``ce``, ``coherence``."""
        if logits.dim() != 3 or logits.size(-1) != self.vocab_size:
            raise ValueError(f"logits of shape {tuple(logits.shape)} must be (B, T, {self.vocab_size})")
        flat_targets = targets.reshape(-1)
        if self.temperature == 1.0 and logits.dtype == torch.float32:
            # One log-softmax serves both terms: CE reads it (as F.cross_entropy does) and the penalty
            # its exp, the softmax to rounding; the plain form ran both over the whole (B,T,V) logits.
            log_prob = F.log_softmax(logits, dim=-1)
            ce = F.nll_loss(log_prob.reshape(-1, self.vocab_size), flat_targets)
            coherence = self._coherence_of(log_prob.exp(), targets)
        else:
            ce = F.cross_entropy(logits.reshape(-1, self.vocab_size), flat_targets)
            coherence = self.coherence(logits, targets)
        return {"total": ce + self.lambda_coherence * coherence, "ce": ce, "coherence": coherence}


FUSED_ADAMW_DEVICES = ("cpu", "cuda")
"""Where PyTorch has a fused AdamW kernel: one pass over each tensor instead of one per term of the
update. Same update, to float rounding; the small model's optimiser step went from 48 to 13 ms on 2
CPU cores (about 4 % of its step), and on a GPU it is one launch per batch of tensors, as nanoGPT
chooses it."""


def build_optimizer(model: nn.Module, exp: ExperimentConfig) -> torch.optim.Optimizer:
    """The ablation's optimiser over all of ``model``'s parameters (spec 3.4: decay on every tensor)."""
    if exp.optimizer == "rgd":
        return RGD(model.parameters(), lr=exp.lr, weight_decay=exp.weight_decay,
                   resonance_strength=exp.rgd_strength, warmup_steps=exp.rgd_warmup_steps)
    fused = all(p.device.type in FUSED_ADAMW_DEVICES for p in model.parameters())
    return torch.optim.AdamW(model.parameters(), lr=exp.lr, weight_decay=exp.weight_decay, fused=fused or None)


def build_loss(exp: ExperimentConfig, vocab_size: int, seed: int) -> nn.Module | None:
    """The ablation's loss module, or None when the model's own cross-entropy is the loss."""
    if exp.loss == "qfe":
        return QFELoss(vocab_size, lambda_coherence=exp.qfe_lambda, amplitude_threshold=exp.qfe_threshold,
                       projection_dim=exp.qfe_projection_dim, seed=seed)
    return None
