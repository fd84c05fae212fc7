"""Normalised causal linear attention in chunks, with a hand-written backward (linear pure-wave mode).

``out_p = q_p·S_p / (q_p·Z_p + eps)`` with ``S_p = Σ_{s≤p} k_s v_sᵀ`` and ``Z_p = Σ_{s≤p} k_s``, for
non-negative features q, k (B,h,T,W) and values v (B,h,T,D). T is cut into chunks of C positions:
inside a chunk the causal part is a small masked (C x C) product; across chunks the sums of all
earlier chunks (B,h,n,W,D) come from a prefix sum. So no (B,h,T,W,D) tensor is ever built (the
original's memory problem, spec "Performance").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Sums over the chunks before each chunk (dim 1): 0 for the first, exactly as a shifted cumsum."""
    out = torch.zeros_like(x)
    torch.cumsum(x[:, :-1], dim=1, out=out[:, 1:])
    return out


def _reverse_exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Sums over the chunks after each chunk (dim 1), the adjoint of :func:`_exclusive_cumsum`;
    exactly 0 for the last chunk, which no later chunk reads."""
    return x.flip(1).cumsum(1).flip(1).sub_(x)


class _ChunkedLinearAttention(torch.autograd.Function):
    """The chunked attention on (G,n,C,·) chunks (G = B·h), in float32 at least, autocast or not.

    Autograd through the plain expression ran 54 operators per call (its prefix sums alone are a
    pad, a slice and, backwards, a flip, a cumsum, a flip and a slice-backward each), 71 under
    autocast, which casts its inputs again for every product; the small wave models are
    launch-bound on a GPU, where each operator is a kernel. This runs about 40: every product is one
    batched matmul over all chunks, with the sum it feeds folded in (``baddbmm``), and the backward
    writes out the adjoint of each. tests/test_linear_attention.py checks both directions against
    autograd through a quadratic-time reference. The normaliser and the running sums stay float32
    under autocast, as autocast's own policy for sums keeps them.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
        G, n, C, W = q.shape
        dtype = torch.promote_types(q.dtype, torch.float32)
        q, k, v = (t.to(dtype).reshape(G * n, C, t.size(-1)) for t in (q, k, v))   # one batch of chunks
        with torch.autocast(q.device.type, enabled=False):
            kv = torch.bmm(k.transpose(1, 2), v)                               # (G·n,W,D)
            S = _exclusive_cumsum(kv.view(G, n, W, -1)).view_as(kv)            # state entering each chunk
            Z = _exclusive_cumsum(k.sum(dim=1).view(G, n, W)).view(G * n, W, 1)
            local = torch.bmm(q, k.transpose(1, 2)).tril_()                    # (G·n,C,C)
            num = torch.baddbmm(torch.bmm(q, S), local, v)                     # (G·n,C,D)
            den = torch.baddbmm(local.sum(dim=-1, keepdim=True), q, Z).add_(eps)
            out = num.div_(den)
        ctx.save_for_backward(q, k, v, local, S, Z, den, out)
        ctx.chunks = (G, n)
        return out.view(G, n, C, -1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, local, S, Z, den, out = ctx.saved_tensors
        G, n = ctx.chunks
        W = q.size(-1)
        with torch.autocast(q.device.type, enabled=False):
            grad_num = grad.to(q.dtype).reshape(out.shape) / den               # (G·n,C,D)
            grad_den = (grad_num * out).sum(dim=-1, keepdim=True).neg_()       # (G·n,C,1)
            grad_local = torch.baddbmm(grad_den, grad_num, v.transpose(1, 2)).tril_()
            grad_q = torch.baddbmm(torch.baddbmm(torch.bmm(grad_den, Z.transpose(1, 2)), grad_num,
                                                 S.transpose(1, 2)), grad_local, k)
            grad_kv = _reverse_exclusive_cumsum(torch.bmm(q.transpose(1, 2), grad_num).view(G, n, W, -1))
            grad_kv = grad_kv.view_as(S)
            grad_k_sum = _reverse_exclusive_cumsum(torch.bmm(q.transpose(1, 2), grad_den).view(G, n, W))
            grad_k = torch.baddbmm(torch.bmm(v, grad_kv.transpose(1, 2)), grad_local.transpose(1, 2), q)
            grad_k.add_(grad_k_sum.view(G * n, 1, W))
            grad_v = torch.baddbmm(torch.bmm(k, grad_kv), local.transpose(1, 2), grad_num)
        return tuple(t.view(G, n, *t.shape[1:]) for t in (grad_q, grad_k, grad_v)) + (None,)


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            chunk_size: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Normalised causal linear attention ``out_p = q_p·S_p / (q_p·Z_p + eps)`` in O(T) memory.

    q, k (B,h,T,W) must be non-negative features; v is (B,h,T,D); returns (B,h,T,D) in float32 at
    least. T is padded to a multiple of the chunk size: padded rows sit after every real position,
    so causality keeps them out of real outputs.
    """
    B, h, T, _ = q.shape
    C = min(chunk_size, T)
    pad = -T % C
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    n = (T + pad) // C
    q, k, v = (t.reshape(B * h, n, C, t.size(-1)) for t in (q, k, v))
    out = _ChunkedLinearAttention.apply(q, k, v, eps)
    return out.view(B, h, n * C, -1)[:, :, :T]
