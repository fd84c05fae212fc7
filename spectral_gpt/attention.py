"""Causal self-attention variants of spec 1.4 (D2): standard, interference and pure wave.

Shapes: x is (B,T,d); wave queries/keys are (B,h,T,W) with W = num_waves per head; values are
(B,h,T,D) with D = d/h. Every variant is causal: position p never sees positions > p.
Where a variant is softmax attention (standard, interference) it runs through
``F.scaled_dot_product_attention`` so it gets fused kernels (:func:`causal_softmax_attention`);
pure-wave attention is not a softmax and is written out (its quadratic mode as one autograd Function
that works in place on the T x T matrix).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from spectral_gpt.config import ModelConfig
from spectral_gpt.dropout import dropout_with_mask
from spectral_gpt.linear_attention import causal_linear_attention_of_pair


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B,T,h*E) -> (B,h,T,E)."""
    B, T, _ = t.shape
    return t.view(B, T, num_heads, -1).transpose(1, 2)


def _head_pairs(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B,T,2*h*E) -> (2,B,h,T,E): a query/key pair side by side, so one kernel serves both."""
    B, T, _ = t.shape
    return t.view(B, T, 2, num_heads, -1).permute(2, 0, 3, 1, 4)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B,h,T,E) -> (B,T,h*E)."""
    B, h, T, E = t.shape
    return t.transpose(1, 2).reshape(B, T, h * E)


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast computes in on ``t``'s device, or None outside autocast."""
    return torch.get_autocast_dtype(t.device.type) if torch.is_autocast_enabled(t.device.type) else None


def _buffer_like(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """An ``out=`` tensor of ``dtype`` in ``t``'s memory layout; None under torch.compile, where
    Inductor chooses layouts and fuses casts itself (and Dynamo refuses a non-contiguous ``out=``)."""
    return None if torch.compiler.is_compiling() else torch.empty_like(t, dtype=dtype)


def _project(x: torch.Tensor, *groups: tuple[nn.Linear, ...]) -> tuple[torch.Tensor, ...]:
    """``tuple(torch.cat([linear(x) for linear in group], -1) for group in groups)`` as one product
    with the stacked weights.

    The projections stay separate Parameters: RGD gates each weight tensor by its own 2-D spectrum
    (spec 2.1) and checkpoints keep their names. Stacking them only for the product turns k
    matmuls, bias adds and autocast casts, and the backward's k-1 sums of input gradients, into one
    of each (nanoGPT packs q, k and v for the same reason); each output is a view of the product,
    and a group (a query/key pair) is one view, for :func:`_head_pairs`.
    """
    linears = [linear for group in groups for linear in group]
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears])
    widths = [sum(linear.out_features for linear in group) for group in groups]
    return F.linear(x, weight, bias).split(widths, dim=-1)


def causal_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float,
                             scale: float | None = None) -> torch.Tensor:
    """``dropout(softmax(q kᵀ · scale, causal)) v``, scale 1/sqrt(E) when None, on (B,h,T,·) heads.

    ``F.scaled_dot_product_attention`` wherever it has a fused kernel. On a CPU with dropout it has
    none: its math path draws the mask with ``bernoulli_``, one double at a time, which was 31 % of
    an interference layer's training time on 2 cores (profiled). There, in float32 (a CPU's
    precision), the same expression is written out with the models' own CPU mask
    (:func:`spectral_gpt.dropout.dropout_with_mask`). Under bf16 autocast a CPU keeps SDPA, whose
    math path computes in float32 where written-out products would run emulated bf16 matmuls.
    """
    if dropout == 0.0 or q.device.type != "cpu" or q.dtype != torch.float32 or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale)
    T = q.size(-2)
    scores = (q @ k.transpose(-1, -2)).mul_(q.size(-1) ** -0.5 if scale is None else scale)
    scores.masked_fill_(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return dropout_with_mask(torch.softmax(scores, dim=-1), dropout)[0] @ v


class _UnitRows(torch.autograd.Function):
    """``F.normalize(x + offset, dim=-1, eps=eps) / divisor``, returned as ``dtype``, with a hand-written backward.

    Both wave attentions turn their queries and keys into unit vectors over each head's W waves:
    interference shifts them by its learned phase offsets first and divides queries by its learned
    temperature (the pair by [tau, 1], a broadcast tensor), pure-wave scales both by a constant. A
    small wave model on a GPU is bound by kernel launches, not FLOPs: on an H200 its tokens/s ratios
    to the standard GPT matched their kernel-count ratios within 0.05 (benchmarks/model_speed.py). So
    interference's query/key pair under autocast, forward and backward, runs 36 fewer operators here
    than autograd through the two plain expressions and their casts (normalize alone is 17 a call,
    with its clamp and zero-norm masks):

    * the result is written in ``dtype`` (what the next kernel reads, e.g. bf16 for SDPA under
      autocast), so no separate cast runs forward, nor its mirror backward;
    * the gradient of ``x`` is written in x's dtype and memory layout: x is a head view of a
      projection, and a gradient in another layout would be copied once more to flow back.

    The arithmetic is float32 at least throughout (the norm, the unit rows kept for the backward and
    every gradient sum); tests/test_attention.py checks the forward bit for bit against the plain
    expression and the gradients against autograd, including rows whose norm is below ``eps``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, offset: torch.Tensor | None, divisor: torch.Tensor | float | None,
                eps: float, dtype: torch.dtype | None) -> torch.Tensor:
        shifted = x if offset is None else x + offset
        norm = torch.linalg.vector_norm(shifted, dim=-1, keepdim=True)
        clamped = norm.clamp_min(eps)
        unit = shifted / clamped
        ctx.offset_shape = None if offset is None else offset.shape
        ctx.x_dtype, ctx.eps = x.dtype, eps
        ctx.constant_divisor = divisor if not isinstance(divisor, torch.Tensor) else None
        ctx.save_for_backward(unit, norm, clamped, divisor if isinstance(divisor, torch.Tensor) else None)
        dtype = dtype or unit.dtype
        if divisor is None:
            return unit.to(dtype)
        return torch.div(unit, divisor, out=_buffer_like(unit, dtype)).to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        unit, norm, clamped, learned_divisor = ctx.saved_tensors
        if learned_divisor is not None:  # viewed with grad's dims, not 0-dim, so a bf16 grad is promoted to float32
            grad = grad / learned_divisor.view((1,) * (grad.dim() - learned_divisor.dim()) + learned_divisor.shape)
        along = (grad * unit).sum(dim=-1, keepdim=True)
        grad_divisor = None
        if ctx.needs_input_grad[2]:  # d(unit / τ)/dτ = -unit / τ², so Σ grad·unit / -τ² = -Σ along / τ
            grad_divisor = along.sum_to_size(learned_divisor.shape).div(learned_divisor).neg()
        along.mul_(norm >= ctx.eps)  # where the norm was clamped, the divisor of x was a constant
        # (grad - unit·along) / clamped, in unit's (that is x's) memory layout; a constant divisor c
        # was left out of grad and along alike, so it joins clamped: one small product, not a pass.
        grad_x = torch.addcmul(grad, unit, along, value=-1.0, out=_buffer_like(unit, unit.dtype))
        grad_x.div_(clamped if ctx.constant_divisor is None else clamped * ctx.constant_divisor)
        grad_offset = None if ctx.offset_shape is None else grad_x.sum_to_size(ctx.offset_shape)
        return grad_x.to(ctx.x_dtype), grad_offset, grad_divisor, None, None


class CausalSelfAttention(nn.Module):
    """GPT-2 causal multi-head attention, the control's attention (spec 1.4d) on fused SDPA.

    Packed q/k/v projection plus output projection, both with bias: the same 4d²+4d parameters and
    (3d, d) packed weight as the original's ``nn.MultiheadAttention``, so RGD sees the same tensors.
    Dropout acts on attention probabilities only, as there.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,T,d) -> (B,T,d)."""
        q, k, v = (_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        y = causal_softmax_attention(q, k, v, self.dropout if self.training else 0.0)
        return self.o_proj(_merge_heads(y))


class InterferenceAttention(nn.Module):
    """The wave model's default "hybrid" attention (spec 1.4a; the original's WaveInterferenceAttention).

    Cosine-similarity softmax attention: q and k (W per head, shifted by learned phase offsets
    ``psi_q``/``psi_k``) are L2-normalised, so scores lie in [-1/tau, 1/tau] with one learned
    temperature ``tau`` per layer shared by all heads (init sqrt(W): attention starts near uniform).
    Dividing q̂ by tau before SDPA (scale 1) keeps tau a learnable tensor with no host sync.
    q/k/v stay separate Linears (not one packed matrix) because RGD gates each weight tensor by its own
    2-D spectrum (spec 2.1): packing them would change the optimiser's update. They are stacked only
    for the product (:func:`_project`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, W, d = cfg.num_heads, cfg.num_waves, cfg.d_model
        self.num_heads, self.num_waves, self.dropout = h, W, cfg.dropout
        self.q_proj = nn.Linear(d, h * W)
        self.k_proj = nn.Linear(d, h * W)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.psi_q = nn.Parameter(torch.zeros(1, h, 1, W))
        self.psi_k = nn.Parameter(torch.zeros(1, h, 1, W))
        self.tau = nn.Parameter(torch.tensor(math.sqrt(W)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,T,d) -> (B,T,d)."""
        qk, v = _project(x, (self.q_proj, self.k_proj), (self.v_proj,))
        # Queries and keys are normalised together, as a (2,B,h,T,W) pair: q̂ / tau, k̂ / 1 (exact).
        offsets = torch.stack([self.psi_q, self.psi_k])
        divisors = torch.stack([self.tau, torch.ones_like(self.tau)]).view(2, 1, 1, 1, 1)
        dtype = _autocast_dtype(x)  # SDPA's: q̂ and k̂ are written in it, not cast to it
        q, k = _UnitRows.apply(_head_pairs(qk, self.num_heads), offsets, divisors, 1e-12, dtype).unbind(0)
        v = _heads(v, self.num_heads)
        y = causal_softmax_attention(q, k, v, self.dropout if self.training else 0.0, scale=1.0)
        return self.o_proj(_merge_heads(y))


KERNELS = {
    "elu_plus_one": lambda s: F.elu(s) + 1.0,
    "sigmoid": torch.sigmoid,
    "exp": torch.exp,
}
"""Pure-wave kernels: each maps -inf to exactly 0, which is how future positions are dropped."""

_KERNELS_INPLACE = {
    "elu_plus_one": lambda s: F.elu_(s).add_(1.0),
    "sigmoid": torch.sigmoid_,
    "exp": torch.exp_,
}
"""The same kernels, overwriting their input (the (B,h,T,T) scores are not needed again)."""

_KERNEL_SLOPES = {
    "elu_plus_one": lambda y: y.clamp(max=1.0),   # 1 where s > 0 (y = s + 1 > 1), else e^s = y
    "sigmoid": lambda y: y * (1.0 - y),
    "exp": lambda y: y,
}
"""κ'(s) of each kernel written as a function of its output y = κ(s), which is what the backward keeps;
each is exactly 0 where y = κ(-inf) = 0, so future positions get zero gradient."""


class _PureWaveWeights(torch.autograd.Function):
    """``dropout(κ(causal((q·g) kᵀ))) v · rows`` for a (2,B,h,T,W) query/key pair, per-head scales
    g (h,), (B,h,T,D) v and (T,1) row factors, with a hand-written backward.

    Autograd through the plain expression allocates a fresh (B,h,T,T) tensor for every elementwise
    step and keeps four of them for the backward; on CPUs, where the allocation of such a tensor costs
    more than the arithmetic on it, that dominated pure-wave attention. Here the scores are masked
    and passed through the kernel in place, and the backward keeps only the kernel output, the
    dropped-out weights and the dropout mask. The mask is the models' own
    (:func:`spectral_gpt.dropout.dropout_with_mask`), so tests/test_attention.py can check outputs
    and gradients against the plain expression with dropout on, drawing the same mask. Under
    autocast the queries are scaled and cast in one kernel, the row factors scale the product in
    its own dtype and place, and the gradients come back in float32 without separate casts.
    """

    @staticmethod
    def forward(ctx: Any, qk: torch.Tensor, scales: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                kernel: str, dropout: float) -> torch.Tensor:
        dtype = _autocast_dtype(qk) or qk.dtype  # one dtype for the hand-written backward too
        unit_q, k = qk.unbind(0)
        scales = scales.view(1, -1, 1, 1)
        q = torch.mul(unit_q, scales, out=_buffer_like(unit_q, dtype)).to(dtype)
        k, v = k.to(dtype), v.to(dtype)
        T = q.size(2)
        scores = q @ k.transpose(-1, -2)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        # -inf before the kernel: exactly 0 weight and 0 gradient, even where exp would overflow.
        kernel_out = _KERNELS_INPLACE[kernel](scores.masked_fill_(future, float("-inf")))
        weights, keep = kernel_out, None
        if dropout > 0.0:
            weights, keep = dropout_with_mask(kernel_out, dropout)
        ctx.kernel, ctx.dropout = kernel, dropout
        ctx.save_for_backward(unit_q, scales, q, k, v, rows, kernel_out, weights, keep)
        return (weights @ v).mul_(rows)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        unit_q, scales, q, k, v, rows, kernel_out, weights, keep = ctx.saved_tensors
        grad = torch.mul(grad, rows, out=_buffer_like(grad, grad.dtype)).to(grad.dtype)
        grad_v = weights.transpose(-1, -2) @ grad
        grad_scores = grad @ v.transpose(-1, -2)
        if keep is not None:
            grad_scores.mul_(keep).mul_(1.0 / (1.0 - ctx.dropout))
        grad_scores.mul_(_KERNEL_SLOPES[ctx.kernel](kernel_out))
        grad_q = grad_scores @ k  # of the scaled queries; its products with the float32 ones are float32
        grad_scales = (grad_q * unit_q).sum(dim=(0, 2, 3)) if ctx.needs_input_grad[1] else None
        grad_qk = torch.stack([grad_q * scales, grad_scores.transpose(-1, -2) @ q])
        return grad_qk, grad_scales, grad_v, None, None, None


class PureWaveAttention(nn.Module):
    """Softmax-free "pure wave" attention (spec 1.4b) with a kernel and a mode.

    Queries/keys are waves of the position: ``sin(f·p + phase)`` with f and phase projected from x,
    L2-normalised over W and scaled by W^(1/4) (so q̂·k̂ = sqrt(W)·cosine).

    * ``quadratic`` (spec 1.4b exactly): ``A[p,s] = κ(g_h · q̂_p·k̂_s) / sqrt(p+1)`` for s ≤ p, else 0;
      rows are NOT normalised; dropout on A; ``out = A v``.
    * ``linear``: normalised causal linear attention with feature map κ applied to q̂, k̂
      (:func:`causal_linear_attention`). This is a DIFFERENT function from quadratic mode, not a faster
      copy of it: it ignores ``g`` and the 1/sqrt(p+1) factor and divides by the running normaliser
      (spec B3/D2). It has no attention matrix, hence no attention dropout.
    """

    def __init__(self, cfg: ModelConfig, chunk_size: int = 64) -> None:
        super().__init__()
        h, W, d = cfg.num_heads, cfg.num_waves, cfg.d_model
        self.num_heads, self.num_waves, self.dropout = h, W, cfg.dropout
        self.kernel_name, self.mode, self.chunk_size = cfg.pure_wave_kernel, cfg.pure_wave_mode, chunk_size
        self.kernel = KERNELS[cfg.pure_wave_kernel]
        # Separate Linears, as in the original, so RGD's per-tensor spectral gating is unchanged
        # (stacked only for the product, :func:`_project`).
        self.q_freq = nn.Linear(d, h * W)
        self.k_freq = nn.Linear(d, h * W)
        self.q_phase = nn.Linear(d, h * W)
        self.k_phase = nn.Linear(d, h * W)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        # g_h only scales quadratic mode's scores: in linear mode it would be a parameter with no
        # gradient, which DDP refuses ("parameters that were not used in producing loss").
        self.head_scale = nn.Parameter(torch.ones(h)) if self.mode == "quadratic" else None

    def extra_repr(self) -> str:
        """Shows kernel and mode when the model is printed, since they change the function computed."""
        return f"kernel={self.kernel_name}, mode={self.mode}"

    def wave_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised wave queries and keys (B,h,T,W), scaled by W^(1/4), and values (B,h,T,D)."""
        pair, v = self._wave_pair(x)
        return *pair.unbind(0), v

    def _wave_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`wave_states` with queries and keys as one (2,B,h,T,W) pair: each kernel runs once
        for both (a small model on a GPU is bound by kernel launches)."""
        h = self.num_heads
        p = torch.arange(x.size(1), device=x.device, dtype=x.dtype)[:, None]   # (T,1)
        inverse_scale = self.num_waves ** -0.25
        waves_of = ((self.q_freq, self.k_freq), (self.q_phase, self.k_phase))
        if torch.is_autocast_enabled(x.device.type):
            # The position multiplies the frequency: bf16's 8-bit mantissa would turn into a phase
            # error of about p/256 rad (0.4 relative at p=240), so the waves are made in float32.
            with torch.autocast(x.device.type, enabled=False):
                freqs, phases = _project(x.float(), *waves_of)
            (v,) = _project(x, (self.v_proj,))
        else:
            freqs, phases, v = _project(x, *waves_of, (self.v_proj,))
        waves = torch.sin(_head_pairs(freqs, h) * p + _head_pairs(phases, h))
        return _UnitRows.apply(waves, None, inverse_scale, 1e-12, None), _heads(v, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,T,d) -> (B,T,d)."""
        pair, v = self._wave_pair(x)
        if self.mode == "linear":
            y = causal_linear_attention_of_pair(self.kernel(pair), v, self.chunk_size)
        else:
            y = self._quadratic(pair, v)
        return self.o_proj(_merge_heads(y))

    def _quadratic(self, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # A = dropout(κ(g_h q̂·k̂) / sqrt(p+1)) and out = A v, rearranged so that only the unavoidable
        # passes touch the (B,h,T,T) matrix: g_h scales q (B,h,T,W) before the product, and the row
        # factor 1/sqrt(p+1) scales the output rows (B,h,T,D) after it (dropout's mask is elementwise,
        # so it commutes with both). Same function up to float rounding (tests/test_attention.py).
        rows = torch.arange(1, qk.size(3) + 1, device=qk.device, dtype=qk.dtype).rsqrt()[:, None]
        dropout = self.dropout if self.training else 0.0
        return _PureWaveWeights.apply(qk, self.head_scale, v, rows, self.kernel_name, dropout)


def build_attention(cfg: ModelConfig) -> nn.Module:
    """The attention module named by ``cfg.attention`` for one wave block."""
    if cfg.attention == "interference":
        return InterferenceAttention(cfg)
    if cfg.attention == "pure_wave":
        return PureWaveAttention(cfg)
    return CausalSelfAttention(cfg)
