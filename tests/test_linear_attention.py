"""Chunked causal linear attention's hand-written backward against autograd through a plain reference."""

from __future__ import annotations

import pytest
import torch

from spectral_gpt.linear_attention import causal_linear_attention

EPS = 1e-6


def quadratic_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out_p = Σ_{s≤p} (q_p·k_s) v_s / (Σ_{s≤p} q_p·k_s + eps)`` with the whole (T x T) matrix."""
    weights = (q @ k.transpose(-1, -2)).tril()
    return (weights @ v) / (weights.sum(dim=-1, keepdim=True) + EPS)


def inputs(T: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(2, 3, T, 4, generator=g, dtype=dtype, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 3, T, 5, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("T,chunk_size", [(13, 4), (13, 13), (16, 4), (7, 1), (5, 64)])
def test_output_and_gradients_match_autograd_through_the_quadratic_reference(T: int, chunk_size: int) -> None:
    q, k, v = inputs(T)
    grad = torch.randn(2, 3, T, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    got = causal_linear_attention(q, k, v, chunk_size, EPS)
    want = quadratic_reference(q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    for name, g, w in zip("qkv", got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=name)


def test_backward_passes_gradcheck() -> None:
    assert torch.autograd.gradcheck(lambda q, k, v: causal_linear_attention(q, k, v, 3, EPS), inputs(8))


def test_the_last_chunk_gets_no_gradient_through_the_running_sums() -> None:
    """Keys and values of the last chunk only reach outputs inside it: their gradient from a loss on
    earlier outputs is exactly zero."""
    q, k, v = inputs(12)
    causal_linear_attention(q, k, v, 4, EPS)[:, :, :8].sum().backward()
    assert torch.count_nonzero(k.grad[:, :, 8:]) == 0 and torch.count_nonzero(v.grad[:, :, 8:]) == 0
    assert torch.count_nonzero(k.grad[:, :, :8]) > 0


def test_autocast_leaves_it_in_float32() -> None:
    """Sums and the normaliser stay float32 under bf16 autocast: the result is the float32 one."""
    q, k, v = inputs(10, torch.float32)
    plain = causal_linear_attention(q, k, v, 4, EPS)
    plain_grads = torch.autograd.grad(plain.sum(), (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = causal_linear_attention(q, k, v, 4, EPS)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    for g, w in zip(torch.autograd.grad(mixed.sum(), (q, k, v)), plain_grads, strict=True):
        assert torch.equal(g, w)
