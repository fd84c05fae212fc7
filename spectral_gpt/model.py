"""WaveGPT and the GPT-2 control it is compared against (spec 1.2-1.7), plus the builders.

    idx (B,T) -> embedding -> L x block -> ln_f -> head -> logits (B,T,V) [-> mean cross-entropy]

WaveGPT: wave embedding (v1 or v2), pre-LN blocks (attention by ``cfg.attention``, GELU + 0.1·sin
MLP), ln_f, CollapseHead (its own LayerNorm + biased Linear). StandardGPT: token + position table,
pre-LN blocks with causal SDPA attention and a GELU MLP, ln_f, bias-free head. No weight tying
anywhere, as in the original, so parameter counts match spec 1.9.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from spectral_gpt.attention import CausalSelfAttention, InterferenceAttention, build_attention
from spectral_gpt.config import ConfigError, ModelConfig, model_config_for
from spectral_gpt.cpu_math import settle_vml_dispatch
from spectral_gpt.dropout import Dropout
from spectral_gpt.embedding import StandardEmbedding, build_wave_embedding


class StandardMLP(nn.Module):
    """GPT-2 MLP of the control: Linear 4x, GELU, Linear, dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,T,d) -> (B,T,d)."""
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class _GeluPlusSin(torch.autograd.Function):
    """``GELU(h) + 0.1·sin(h)`` with a hand-written backward ``GELU'(h) + 0.1·cos(h)``.

    The values are bit for bit those of ``torch.add(F.gelu(h), torch.sin(h), alpha=0.1)``; autograd
    through that expression allocates three (B,T,4d) tensors in the forward and five in the backward,
    this function two in each, and on CPUs such an allocation costs about as much as the arithmetic
    on it. tests/test_model.py checks values and gradients against the plain expression.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h)
        return F.gelu(h).add_(torch.sin(h), alpha=0.1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, h).addcmul_(grad, torch.cos(h), value=0.1)


class WaveResonanceMLP(StandardMLP):
    """The wave block's MLP: ``GELU(h) + 0.1·sin(h)`` (what the original code does, not its docs),
    with dropout after the activation too, as in the original."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,T,d) -> (B,T,d)."""
        h = self.dropout(_GeluPlusSin.apply(self.fc(x)))
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-LN residual block shared by both models; they differ only in the attention and MLP they pass."""

    def __init__(self, d_model: int, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = attn
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,T,d) -> (B,T,d)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CollapseHead(nn.Module):
    """WaveGPT's output head: LayerNorm then Linear(d -> V) with bias (the original's double LN)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,T,d) -> logits (B,T,V)."""
        return self.proj(self.norm(x))


class _LanguageModel(nn.Module):
    """What both models share: spec 1.6 init, the loss, sampling and introspection."""

    cfg: ModelConfig

    def _init_weights(self, module: nn.Module) -> None:
        # Spec 1.6: every Linear and Embedding N(0, 0.02²), biases 0. Wave parameters, LayerNorms,
        # psi/tau/g are set by their own modules and are left alone here. The packed q/k/v of softmax
        # attention stands for the original's nn.MultiheadAttention, whose in-projection kept PyTorch's
        # Xavier-uniform: ``apply`` reaches that module after its Linear, so its init is the last.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, CausalSelfAttention):
            nn.init.xavier_uniform_(module.qkv.weight)

    def _check_length(self, idx: torch.Tensor) -> None:
        if idx.size(1) > self.cfg.block_size:
            raise ValueError(f"sequence length {idx.size(1)} exceeds block_size={self.cfg.block_size}; "
                             "crop the context (generate() does this)")

    @staticmethod
    def _loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        if targets is None:
            return None
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def attention_temperatures(self) -> list[float]:
        """The learned tau of every interference layer (spec 1.4a); [] when the model has none."""
        return [float(m.tau.detach()) for m in self.modules() if isinstance(m, InterferenceAttention)]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` ids after ``idx`` (B,T) -> (B, T + max_new_tokens) (spec 1.7).

        Runs in eval mode (no dropout) with the pure wave embedding (standard_embed_ratio 0) and
        restores the previous train/eval mode; ``generator`` (on idx's device) makes samples
        reproducible.
        """
        if temperature <= 0:
            raise ConfigError(f"temperature={temperature!r} must be > 0")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k={top_k!r} must be None or an integer >= 1")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits, _ = self(idx[:, -self.cfg.block_size:])
                logits = logits[:, -1, :] / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        finally:
            self.train(was_training)
        return idx


class WaveGPT(_LanguageModel):
    """The Wave GPT of spec 1.2: wave embedding, pre-LN blocks, ln_f and CollapseHead."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = build_wave_embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg.d_model, build_attention(cfg), WaveResonanceMLP(cfg))
                                    for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = CollapseHead(cfg)
        self.apply(self._init_weights)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                standard_embed_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B,T,V) for ids (B,T) and, given targets, the mean cross-entropy over all positions.

        ``standard_embed_ratio`` blends the lookup table into the v2 embedding (annealing); v1 ignores it.
        """
        self._check_length(idx)
        x = self.embedding(idx, standard_embed_ratio)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, self._loss(logits, targets)


class StandardGPT(_LanguageModel):
    """The GPT-2-style control of spec 1.8 (the ``standard_transformer`` ablation).

    It always uses causal softmax attention and the standard embedding; ``cfg.attention`` and
    ``cfg.embedding`` are wave-model choices it does not read.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = StandardEmbedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg.d_model, CausalSelfAttention(cfg), StandardMLP(cfg))
                                    for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                standard_embed_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as :meth:`WaveGPT.forward`; ``standard_embed_ratio`` is accepted and ignored."""
        self._check_length(idx)
        x = self.embedding(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, self._loss(logits, targets)


def build_model_from_config(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``cfg``: StandardGPT for model_type "standard", else WaveGPT.

    Init draws from the global torch RNG, so ``torch.manual_seed(s)`` right before makes it exact.
    Every process that builds a model gets MKL's kernels settled first (:mod:`spectral_gpt.cpu_math`),
    so its first step computes what every later one would.
    """
    settle_vml_dispatch()
    return StandardGPT(cfg) if cfg.model_type == "standard" else WaveGPT(cfg)


def build_model(size: str, ablation: str, vocab_size: int | None = None) -> nn.Module:
    """The model of ``ablation`` at ``size`` (names from config); unknown names raise ConfigError."""
    return build_model_from_config(model_config_for(size, ablation, vocab_size))


def count_parameters(model: nn.Module) -> int:
    """Number of learnable scalars (buffers such as v2's fixed spectrum excluded), as spec 1.9 counts."""
    return sum(p.numel() for p in model.parameters())
