"""Normalised causal linear attention in chunks, with a hand-written backward (linear pure-wave mode).

``out_p = q_p·S_p / (q_p·Z_p + eps)`` with ``S_p = Σ_{s≤p} k_s v_sᵀ`` and ``Z_p = Σ_{s≤p} k_s``, for
non-negative features q, k (B,h,T,W) and values v (B,h,T,D). T is cut into chunks of C positions:
inside a chunk the causal part is a small masked (C x C) product; across chunks the sums of all
earlier chunks (B,h,n,W,D) come from a prefix sum. So no (B,h,T,W,D) tensor is ever built (the
original's memory problem, spec "Performance").

The values carry a column of ones, ``v1 = [v | 1]``: then ``k v1ᵀ`` holds both running sums
(``Z`` is its last column) and ``q S1 + local v1`` both the numerator and the normaliser, so one
product, one prefix sum and one gradient of each serve the two.
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
    """The chunked attention of a (2,B,h,n,C,W) query/key pair and (B,h,n,C,D) values, in float32 at
    least, autocast or not.

    Autograd through the plain expression ran 54 operators per call (its prefix sums alone are a
    pad, a slice and, backwards, a flip, a cumsum, a flip and a slice-backward each), 71 under
    autocast, which casts its inputs again for every product; the small wave models are
    launch-bound on a GPU, where each operator is a kernel. This runs 30: every product is one
    batched matmul over all B·h·n chunks, with the sum it feeds folded in (``baddbmm``), the
    values' column of ones folds the normaliser into the same products, and the backward writes
    out the adjoint of each. tests/test_linear_attention.py checks both directions against autograd
    through a quadratic-time reference. The normaliser and the running sums stay float32 under
    autocast, as autocast's own policy for sums keeps them.
    """

    @staticmethod
    def forward(ctx: Any, qk: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
        _, B, h, n, C, W = qk.shape
        D = v.size(-1)
        dtype = torch.promote_types(qk.dtype, torch.float32)
        q, k = qk.to(dtype).reshape(2, B * h * n, C, W).unbind(0)             # one batch of chunks
        v1 = torch.empty(B * h * n, C, D + 1, dtype=dtype, device=v.device)
        v1[..., D].fill_(1.0)
        v1.view(B, h, n, C, D + 1)[..., :D].copy_(v)                          # cast and layout in one
        with torch.autocast(qk.device.type, enabled=False):
            kv = torch.bmm(k.transpose(1, 2), v1)                              # (B·h·n,W,D+1): [k vᵀ | Σ k]
            S = _exclusive_cumsum(kv.view(B * h, n, W, -1)).view_as(kv)        # state entering each chunk
            local = torch.bmm(q, k.transpose(1, 2)).tril_()                    # (B·h·n,C,C)
            num = torch.baddbmm(torch.bmm(q, S), local, v1)                    # [numerator | normaliser]
            den = num[..., D:].add_(eps)
            out = (num[..., :D] / den).view(B, h, n, C, D)
        ctx.save_for_backward(q, k, v1, local, S, den, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v1, local, S, den, out = ctx.saved_tensors
        B, h, n, C, D = out.shape
        W = q.size(-1)
        with torch.autocast(q.device.type, enabled=False):
            grad_num = grad.to(q.dtype) / den.view(B, h, n, C, 1)              # in grad's layout, no copy
            grad_den = (grad_num * out).sum(dim=-1, keepdim=True).neg_()
            grad_num1 = torch.cat([grad_num, grad_den], dim=-1).view(v1.shape)  # (B·h·n,C,D+1)
            grad_local = torch.bmm(grad_num1, v1.transpose(1, 2)).tril_()
            grad_q = torch.baddbmm(torch.bmm(grad_num1, S.transpose(1, 2)), grad_local, k)
            grad_kv = _reverse_exclusive_cumsum(torch.bmm(q.transpose(1, 2), grad_num1).view(B * h, n, W, -1))
            grad_kv = grad_kv.view_as(S)
            grad_k = torch.baddbmm(torch.bmm(v1, grad_kv.transpose(1, 2)), grad_local.transpose(1, 2), q)
            grad_v1 = torch.baddbmm(torch.bmm(k, grad_kv), local.transpose(1, 2), grad_num1)
        grad_qk = torch.stack([grad_q, grad_k]).view(2, B, h, n, C, W)
        return grad_qk, grad_v1[..., :D].view(B, h, n, C, D), None


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            chunk_size: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Normalised causal linear attention ``out_p = q_p·S_p / (q_p·Z_p + eps)`` in O(T) memory.

    q, k (B,h,T,W) must be non-negative features; v is (B,h,T,D); returns (B,h,T,D) in float32 at
    least.
    """
    return causal_linear_attention_of_pair(torch.stack([q, k]), v, chunk_size, eps)


def causal_linear_attention_of_pair(qk: torch.Tensor, v: torch.Tensor, chunk_size: int = 64,
                                    eps: float = 1e-6) -> torch.Tensor:
    """:func:`causal_linear_attention` of the (2,B,h,T,W) query/key pair ``qk``. T is padded to a
    multiple of the chunk size: padded rows sit after every real position, so causality keeps them
    out of real outputs."""
    T = qk.size(3)
    C = min(chunk_size, T)
    pad = -T % C
    if pad:
        qk, v = F.pad(qk, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    out = _ChunkedLinearAttention.apply(qk.unflatten(3, (-1, C)), v.unflatten(2, (-1, C)), eps)
    return out.flatten(2, 3)[:, :, :T]
