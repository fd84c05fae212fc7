"""Token embeddings: the wave-packet embeddings of WaveGPT (spec 1.3) and the GPT-2 control's table.

A wave embedding describes every token by ``W`` waves with ``K`` harmonics each, evaluates them once
(there is no time axis, spec 1.3), shifts each wave's phase by a learned per-wave rate times the
position, and projects the ``2·W·K`` sine/cosine values to ``d_model``. Two versions exist:

* v1 (:class:`WavePacketEmbedding`, canonical, D1): frequencies, phases and harmonic amplitudes are
  learned per token and mixed with a plain lookup table by a learnable ratio.
* v2 (:class:`PhysicsWaveEmbedding`, optional): a fixed Zipf spectrum (``sqrt(i+1)``, amplitudes
  ``1/n``) where only the phases are learned per token; the lookup table is annealed in from outside.

Both are vectorised: one gather per table, harmonics and positions by broadcasting (no Python loops).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from spectral_gpt.config import ModelConfig
from spectral_gpt.dropout import Dropout

TWO_PI = 2.0 * math.pi


def wave_features(freqs: torch.Tensor, phases: torch.Tensor, amps: torch.Tensor,
                  pos_freq: torch.Tensor) -> torch.Tensor:
    """The ``2·W·K`` sinusoid values of spec 1.3, shared by both versions so they cannot drift apart.

    ``freqs``/``phases`` are the gathered (B,T,W) rows, ``amps`` the gathered (B,T,W,K) rows and
    ``pos_freq`` the (W,) positional phase rate. Returns (B,T,2WK): all sines (wave-major, then
    harmonic) followed by all cosines::

        θ[b,t,w,k] = 2π·k·freqs[b,t,w] + phases[b,t,w] + t·pos_freq[w]      (k = 1..K)
        out = [amps·sin θ, amps·cos θ]
    """
    return _WaveFeatures.apply(freqs, phases, amps, pos_freq)


class _WaveFeatures(torch.autograd.Function):
    """:func:`wave_features` with a hand-written backward: 19 kernel operators a step where autograd
    through the plain expression ran 29. A small wave model on a GPU is bound by kernel launches,
    not FLOPs (benchmarks/model_speed.py), and this runs once per step on every token.
    tests/test_model.py checks values and gradients against the plain expression."""

    @staticmethod
    def forward(ctx: Any, freqs: torch.Tensor, phases: torch.Tensor, amps: torch.Tensor,
                pos_freq: torch.Tensor) -> torch.Tensor:
        T, K = freqs.size(1), amps.size(-1)
        positions = torch.arange(T, device=freqs.device, dtype=freqs.dtype)
        two_pi_k = torch.arange(1, K + 1, device=freqs.device, dtype=freqs.dtype).mul_(TWO_PI)
        offset = torch.addcmul(phases, positions[:, None], pos_freq)                         # (B,T,W)
        theta = torch.addcmul(offset.unsqueeze(-1), freqs.unsqueeze(-1), two_pi_k)         # (B,T,W,K)
        trig = torch.stack([torch.sin(theta), torch.cos(theta)], dim=-3)                   # (B,T,2,W,K)
        ctx.save_for_backward(amps, trig, positions, two_pi_k)
        ctx.pos_freq_shape = pos_freq.shape
        return (trig * amps.unsqueeze(-3)).flatten(-3)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        amps, trig, positions, two_pi_k = ctx.saved_tensors
        grad = grad.unflatten(-1, trig.shape[-3:])
        grad_amps = (grad * trig).sum(dim=-3) if ctx.needs_input_grad[2] else None  # v2's amplitudes are fixed
        sin, cos = trig.unbind(dim=-3)
        grad_sin, grad_cos = grad.unbind(dim=-3)
        # dθ = amps·(grad_sin·cos θ - grad_cos·sin θ); θ is linear in freqs, phases and pos_freq.
        grad_theta = torch.addcmul(grad_sin * cos, grad_cos, sin, value=-1.0).mul_(amps)
        grad_offset = grad_theta.sum(dim=-1)
        grad_freqs = (grad_theta * two_pi_k).sum(dim=-1) if ctx.needs_input_grad[0] else None
        grad_pos_freq = None
        if ctx.needs_input_grad[3]:
            grad_pos_freq = (grad_offset * positions[:, None]).sum_to_size(ctx.pos_freq_shape)
        return grad_freqs, grad_offset, grad_amps, grad_pos_freq


def _gather(idx: torch.Tensor, freqs: torch.Tensor, phases: torch.Tensor,
            amps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the (V,W), (V,W) and (V,W,K) tables for ids (B,T), via the embedding-lookup kernel."""
    amps_rows = F.embedding(idx, amps.flatten(1)).unflatten(-1, amps.shape[1:])
    return F.embedding(idx, freqs), F.embedding(idx, phases), amps_rows


class WavePacketEmbedding(nn.Module):
    """v1 "learnable spectrum" embedding (spec 1.3 v1): the one that produced every reported result.

    Each token owns learnable frequencies ``base_freqs`` (V,W), phases ``phases`` (V,W) and harmonic
    amplitudes ``harmonic_amps`` (V,W,K); ``pos_freq`` (W,) turns position into a phase shift.
    The wave vector is mixed with a plain table ``simple_embed`` by ``r = sigmoid(wave_ratio_logit)``,
    which the training loop steers with the wave-ratio schedule (spec 3.3) via :meth:`set_wave_ratio`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        V, W, K = cfg.vocab_size, cfg.num_waves, cfg.num_harmonics
        # Wave index, not token, sets the rough frequency at init; the noise breaks token symmetry.
        spread = torch.linspace(0.5, 5.0, W).expand(V, W)
        self.base_freqs = nn.Parameter(spread + 0.1 * torch.randn(V, W))
        self.phases = nn.Parameter(torch.rand(V, W) * TWO_PI)
        self.harmonic_amps = nn.Parameter(torch.randn(V, W, K) * (0.5 / math.sqrt(K * W)))
        self.pos_freq = nn.Parameter(0.1 * torch.randn(W))
        self.wave_ratio_logit = nn.Parameter(torch.tensor(0.5))
        self.wave_proj = nn.Linear(2 * W * K, cfg.d_model)
        self.simple_embed = nn.Embedding(V, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)

    @property
    def wave_ratio(self) -> float:
        """Current mixing weight r of the wave part (0.622 at init); logged and scheduled each step."""
        return float(torch.sigmoid(self.wave_ratio_logit.detach()))

    @torch.no_grad()
    def set_wave_ratio(self, ratio: float) -> None:
        """Overwrite r in place (spec 3.3 schedule); clamped to [0.01, 0.99] so the logit stays finite."""
        r = min(max(float(ratio), 0.01), 0.99)
        self.wave_ratio_logit.fill_(math.log(r / (1.0 - r)))

    def forward(self, idx: torch.Tensor, standard_embed_ratio: float = 0.0) -> torch.Tensor:
        """Embed ids (B,T) -> (B,T,d); ``standard_embed_ratio`` is a v2 knob that v1 ignores."""
        feats = wave_features(*_gather(idx, self.base_freqs, self.phases, self.harmonic_amps),
                              self.pos_freq)
        r = torch.sigmoid(self.wave_ratio_logit)
        return self.norm(r * self.wave_proj(feats) + (1.0 - r) * self.simple_embed(idx))


class PhysicsWaveEmbedding(nn.Module):
    """v2 "physics" embedding (spec 1.3 v2): a fixed Zipf spectrum, learnable phases only.

    Token mass ``m_i = 1/(i+1)`` gives the base frequency ``sqrt(i+1)`` for all W waves and
    amplitudes ``1/n``; both are buffers (not parameters), kept with the same shapes as v1's tables so
    plots and diagnostics read either version alike. The lookup table is blended in only when the
    caller passes ``standard_embed_ratio > 0`` (the 3000-step annealing of spec 3.3).
    Note spec B7: the Zipf assumption (id = frequency rank) does not hold for BPE vocabularies.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        V, W, K = cfg.vocab_size, cfg.num_waves, cfg.num_harmonics
        rank = torch.arange(1, V + 1, dtype=torch.float32)
        self.register_buffer("base_freqs", rank.sqrt()[:, None].expand(V, W).contiguous())
        inv_n = 1.0 / torch.arange(1, K + 1, dtype=torch.float32)
        self.register_buffer("harmonic_amps", inv_n.expand(V, W, K).contiguous())
        self.phases = nn.Parameter(torch.rand(V, W) * TWO_PI)
        self.pos_freq = nn.Parameter(0.1 * torch.randn(W))
        self.wave_proj = nn.Linear(2 * W * K, cfg.d_model)
        self.simple_embed = nn.Embedding(V, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, idx: torch.Tensor, standard_embed_ratio: float = 0.0) -> torch.Tensor:
        """Embed ids (B,T) -> (B,T,d), blending in the lookup table by ``standard_embed_ratio``."""
        feats = wave_features(*_gather(idx, self.base_freqs, self.phases, self.harmonic_amps),
                              self.pos_freq)
        wave = self.wave_proj(feats)
        s = float(standard_embed_ratio)
        if s > 0.0:
            wave = (1.0 - s) * wave + s * self.simple_embed(idx)
        return self.norm(wave)


class StandardEmbedding(nn.Module):
    """GPT-2 control embedding (spec 1.5): token table + learned absolute positions, then dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position = nn.Embedding(cfg.block_size, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Embed ids (B,T) -> (B,T,d); T must not exceed block_size (the position table's size)."""
        positions = torch.arange(idx.size(1), device=idx.device)
        return self.dropout(self.token(idx) + self.position(positions))


def build_wave_embedding(cfg: ModelConfig) -> nn.Module:
    """The wave embedding named by ``cfg.embedding`` (``v1`` or ``v2``)."""
    return WavePacketEmbedding(cfg) if cfg.embedding == "v1" else PhysicsWaveEmbedding(cfg)

