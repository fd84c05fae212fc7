"""Analytic FLOPs of WaveGPT and StandardGPT, the numerator of model FLOPs utilisation (MFU).

The count follows the code in ``model.py``, ``attention.py`` and ``embedding.py`` term by term and,
as MFU is usually defined (PaLM, appendix B; nanoGPT's ``estimate_mfu``), counts only matrix
products: a (m x k) @ (k x n) product is ``2·m·k·n`` FLOPs; bias adds, LayerNorm, GELU, sines,
normalisations, masks and the loss are left out, as they are memory-bound and small next to the
products. Attention is counted over the full T x T square that the kernels we call compute (no halving
for causality), as ``torch.utils.flop_counter`` does. The backward pass of a product costs twice its
forward (one product for each input's gradient), so a training step is 3x the forward;
``tests/test_flops.py`` checks both against ``FlopCounterMode`` on small models of every kind.
"""

from __future__ import annotations

import math

from spectral_gpt.config import ModelConfig

LINEAR_ATTENTION_CHUNK = 64
"""Chunk length of linear pure-wave attention (``PureWaveAttention``'s default ``chunk_size``)."""


def _linear(tokens: int, fan_in: int, fan_out: int) -> int:
    """An ``nn.Linear(fan_in, fan_out)`` applied to ``tokens`` rows."""
    return 2 * tokens * fan_in * fan_out


def _softmax_attention(cfg: ModelConfig, T: int, qk_dim: int) -> int:
    """q·kᵀ (qk_dim per head) and weights·v (head_dim per head), over the T x T square."""
    return 2 * cfg.num_heads * T * T * (qk_dim + cfg.head_dim)


def _linear_attention(cfg: ModelConfig, T: int, chunk_size: int) -> int:
    """The products of :func:`spectral_gpt.linear_attention.causal_linear_attention` on padded chunks."""
    h, W, D = cfg.num_heads, cfg.num_waves, cfg.head_dim
    C = min(chunk_size, T)
    padded = math.ceil(T / C) * C
    chunk_kv = 2 * padded * W * (D + 1)      # kᵀ [v | 1] per chunk: the running sums S and Z together
    local_scores = 2 * padded * C * W        # q kᵀ inside a chunk
    local_values = 2 * padded * C * (D + 1)  # local @ [v | 1]: values and the normaliser's local part
    carried = 2 * padded * W * (D + 1)       # q @ [S | Z] (earlier chunks)
    return h * (chunk_kv + local_scores + local_values + carried)


def _attention(cfg: ModelConfig, T: int, chunk_size: int) -> tuple[int, int]:
    """(projections, token mixing) of one attention layer of ``cfg``'s kind, for one sequence."""
    d, hW = cfg.d_model, cfg.num_heads * cfg.num_waves
    if cfg.model_type == "standard" or cfg.attention == "standard":
        return _linear(T, d, 3 * d) + _linear(T, d, d), _softmax_attention(cfg, T, cfg.head_dim)
    if cfg.attention == "interference":
        projections = 2 * _linear(T, d, hW) + 2 * _linear(T, d, d)
        return projections, _softmax_attention(cfg, T, cfg.num_waves)
    projections = 4 * _linear(T, d, hW) + 2 * _linear(T, d, d)  # q/k frequency and phase, v, o
    if cfg.pure_wave_mode == "linear":
        return projections, _linear_attention(cfg, T, chunk_size)
    return projections, _softmax_attention(cfg, T, cfg.num_waves)


def forward_flops(cfg: ModelConfig, seq_len: int | None = None,
                  chunk_size: int = LINEAR_ATTENTION_CHUNK) -> dict[str, int]:
    """Forward matmul FLOPs of one sequence of ``seq_len`` tokens (default block_size), by model part.

    Keys: ``embedding`` (the wave projection 2WK -> d; lookup tables are gathers, 0 FLOPs),
    ``attention_projections`` and ``attention_mixing`` (all layers), ``mlp`` and ``head``.
    """
    T = cfg.block_size if seq_len is None else seq_len
    d, L = cfg.d_model, cfg.num_layers
    wave = cfg.model_type == "wave"
    projections, mixing = _attention(cfg, T, chunk_size)
    return {
        "embedding": _linear(T, 2 * cfg.num_waves * cfg.num_harmonics, d) if wave else 0,
        "attention_projections": L * projections,
        "attention_mixing": L * mixing,
        "mlp": L * (_linear(T, d, 4 * d) + _linear(T, 4 * d, d)),
        "head": _linear(T, d, cfg.vocab_size),
    }


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None,
                             chunk_size: int = LINEAR_ATTENTION_CHUNK) -> float:
    """Forward + backward matmul FLOPs per trained token (3x the forward), at sequence length ``seq_len``."""
    T = cfg.block_size if seq_len is None else seq_len
    return 3 * sum(forward_flops(cfg, T, chunk_size).values()) / T
