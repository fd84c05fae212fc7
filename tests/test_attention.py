"""Attention variants against plain, written-out evaluations of spec 1.4, plus causality and dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spectral_gpt.attention import (
    KERNELS,
    CausalSelfAttention,
    InterferenceAttention,
    PureWaveAttention,
    _PureWaveWeights,
    _UnitRows,
)
from spectral_gpt.config import ModelConfig
from spectral_gpt.dropout import dropout_with_mask
from spectral_gpt.linear_attention import causal_linear_attention

B, T = 2, 37  # T deliberately not a multiple of any chunk size used below


def make_cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=50, d_model=24, num_layers=1, num_heads=3, num_waves=5, num_harmonics=2,
                block_size=64, dropout=0.0)
    return ModelConfig(**{**base, **overrides})


def perturb(module: torch.nn.Module) -> None:
    """Move every parameter off its init so tests also cover learned psi/tau/g (not only 0/1 values)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))


def split_heads(t: torch.Tensor, h: int) -> torch.Tensor:
    return t.view(t.size(0), t.size(1), h, -1).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).flatten(2)


def reference_wave_states(attn: PureWaveAttention, x: torch.Tensor):
    """Spec 1.4b's wave states written out independently of the module's code."""
    h, W = attn.num_heads, attn.num_waves
    q_f, k_f, q_p, k_p, v = (split_heads(lin(x), h) for lin in (
        attn.q_freq, attn.k_freq, attn.q_phase, attn.k_phase, attn.v_proj))
    pos = torch.arange(x.size(1), dtype=x.dtype).view(1, 1, -1, 1)
    q = torch.sin(q_f * pos + q_p)
    k = torch.sin(k_f * pos + k_p)
    q = q / q.norm(dim=-1, keepdim=True) * W ** 0.25
    k = k / k.norm(dim=-1, keepdim=True) * W ** 0.25
    return q, k, v


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_linear_mode_matches_naive_quadratic_time_evaluation(kernel: str) -> None:
    torch.manual_seed(0)
    attn = PureWaveAttention(make_cfg(pure_wave_kernel=kernel, pure_wave_mode="linear"), chunk_size=8)
    perturb(attn)
    attn.eval()
    x = torch.randn(B, T, 24)
    q, k, v = reference_wave_states(attn, x)
    fq, fk = KERNELS[kernel](q), KERNELS[kernel](k)
    expected = torch.empty_like(v)
    for p in range(T):  # out_p = φ(q_p)·S_p / (φ(q_p)·Z_p + 1e-6), sums over s <= p
        S = torch.einsum("bhsw,bhsd->bhwd", fk[:, :, :p + 1], v[:, :, :p + 1])
        Z = fk[:, :, :p + 1].sum(dim=2)
        num = torch.einsum("bhw,bhwd->bhd", fq[:, :, p], S)
        den = (fq[:, :, p] * Z).sum(-1, keepdim=True) + 1e-6
        expected[:, :, p] = num / den
    expected = attn.o_proj(merge_heads(expected))
    with torch.no_grad():
        got = attn(x)
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 5, 37, 64])
def test_causal_linear_attention_is_independent_of_chunk_size(chunk_size: int) -> None:
    torch.manual_seed(1)
    q, k = torch.rand(B, 2, T, 4), torch.rand(B, 2, T, 4)
    v = torch.randn(B, 2, T, 6)
    torch.testing.assert_close(causal_linear_attention(q, k, v, chunk_size),
                               causal_linear_attention(q, k, v, chunk_size=T), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_quadratic_mode_matches_spec_formula(kernel: str) -> None:
    torch.manual_seed(0)
    attn = PureWaveAttention(make_cfg(pure_wave_kernel=kernel))
    perturb(attn)
    attn.eval()
    x = torch.randn(B, T, 24)
    q, k, v = reference_wave_states(attn, x)
    A = torch.zeros(B, 3, T, T)
    for p in range(T):  # A[p, s] = κ(g_h q̂_p·k̂_s) / sqrt(p+1) for s <= p, 0 for s > p
        for s in range(p + 1):
            score = (q[:, :, p] * k[:, :, s]).sum(-1) * attn.head_scale
            A[:, :, p, s] = KERNELS[kernel](score) / math.sqrt(p + 1)
    expected = attn.o_proj(merge_heads(A @ v))
    with torch.no_grad():
        got = attn(x)
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)


def reference_quadratic(attn: PureWaveAttention, x: torch.Tensor) -> torch.Tensor:
    """Spec 1.4b as one plain autograd expression (the module's original code): every step on the full
    (B,h,T,T) matrix, the models' dropout drawn on the scaled weights."""
    q, k, v = reference_wave_states(attn, x)
    t = x.size(1)
    scores = (q @ k.transpose(-1, -2)) * attn.head_scale.view(1, -1, 1, 1)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    weights = KERNELS[attn.kernel_name](scores) / torch.arange(1, t + 1).sqrt()[:, None]
    if attn.training and attn.dropout > 0:
        weights = dropout_with_mask(weights, attn.dropout)[0]
    return attn.o_proj(merge_heads(weights @ v))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_quadratic_mode_trains_exactly_like_the_plain_expression(kernel: str) -> None:
    """The in-place forward and hand-written backward give the plain expression's output and gradients
    (inputs and every parameter) to float32 rounding, with the same dropout mask for the same seed."""
    torch.manual_seed(0)
    attn = PureWaveAttention(make_cfg(pure_wave_kernel=kernel, dropout=0.3))
    perturb(attn)
    x = torch.randn(B, T, 24, requires_grad=True)
    probe = torch.randn(B, T, 24)
    runs = []
    for forward in (attn, lambda t: reference_quadratic(attn, t)):
        attn.zero_grad(set_to_none=True)
        x.grad = None
        torch.manual_seed(7)
        out = forward(x)
        (out * probe).sum().backward()
        runs.append({"output": out.detach(), "input": x.grad,
                     **{name: p.grad for name, p in attn.named_parameters()}})
    got, want = runs
    for name in want:
        scale = want[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5 * scale, msg=name)
    with torch.no_grad():
        assert not torch.allclose(got["output"], attn.eval()(x), atol=1e-3)  # dropout was on


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_pure_wave_weights_backward_passes_gradcheck(kernel: str) -> None:
    """Float64 finite differences, with the dropout mask fixed by reseeding before every evaluation."""
    g = torch.Generator().manual_seed(1)
    qk = torch.randn(2, 1, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scales = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    rows = torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.5

    def weights_with_fixed_mask(qk, scales, v):
        torch.manual_seed(3)
        return _PureWaveWeights.apply(qk, scales, v, rows, kernel, 0.4)

    assert torch.autograd.gradcheck(weights_with_fixed_mask, (qk, scales, v))
    assert torch.autograd.gradcheck(lambda *a: _PureWaveWeights.apply(*a, rows, kernel, 0.0), (qk, scales, v))


def plain_unit_rows(x, offset, divisor, eps):
    """What _UnitRows replaces, through autograd."""
    unit = F.normalize(x if offset is None else x + offset, dim=-1, eps=eps)
    return unit if divisor is None else unit / divisor


UNIT_ROW_CASES = [pytest.param(True, "learned", id="offset-learned-divisor"),
                  pytest.param(True, "pair", id="query-key-pair"),  # interference: q̂ / tau, k̂ / 1
                  pytest.param(True, None, id="offset-only"), pytest.param(False, "constant", id="constant-divisor")]


def unit_row_inputs(with_offset: bool, divisor_kind: str | None, dtype: torch.dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 3, 5, 4, generator=g, dtype=dtype, requires_grad=True)
    offset = torch.randn(2, 1, 3, 1, 4, generator=g, dtype=dtype, requires_grad=True) if with_offset else None
    divisor = {"learned": lambda: torch.tensor(1.7, dtype=dtype, requires_grad=True),
               "pair": lambda: torch.tensor([1.7, 1.0], dtype=dtype).view(2, 1, 1, 1, 1).requires_grad_(),
               "constant": lambda: 0.6, None: lambda: None}[divisor_kind]()
    return x, offset, divisor


@pytest.mark.parametrize("with_offset,divisor_kind", UNIT_ROW_CASES)
def test_unit_rows_forward_is_bit_for_bit_the_plain_expression(with_offset: bool, divisor_kind: str | None) -> None:
    x, offset, divisor = unit_row_inputs(with_offset, divisor_kind, torch.float32)
    with torch.no_grad():
        want = plain_unit_rows(x, offset, divisor, 1e-12)
        assert torch.equal(_UnitRows.apply(x, offset, divisor, 1e-12, None), want)
        assert torch.equal(_UnitRows.apply(x, offset, divisor, 1e-12, torch.bfloat16), want.to(torch.bfloat16))


@pytest.mark.parametrize("with_offset,divisor_kind", UNIT_ROW_CASES)
def test_unit_rows_backward_passes_gradcheck(with_offset: bool, divisor_kind: str | None) -> None:
    inputs = unit_row_inputs(with_offset, divisor_kind, torch.float64)
    assert torch.autograd.gradcheck(lambda *a: _UnitRows.apply(*a, 1e-12, None), inputs)


@pytest.mark.parametrize("with_offset,divisor_kind", UNIT_ROW_CASES)
def test_unit_rows_written_in_bfloat16_backpropagate_in_float32(with_offset: bool, divisor_kind: str | None) -> None:
    """Under autocast the result is written in bf16 and the bf16 gradient that comes back is used
    as it is, with float32 arithmetic: the same gradients as autograd through the plain expression
    followed by a cast, to float32 rounding."""
    inputs = unit_row_inputs(with_offset, divisor_kind, torch.float32)
    grad = torch.randn(inputs[0].shape).to(torch.bfloat16)
    wants = [p for p in inputs if isinstance(p, torch.Tensor)]
    got = torch.autograd.grad(_UnitRows.apply(*inputs, 1e-12, torch.bfloat16), wants, grad)
    want = torch.autograd.grad(plain_unit_rows(*inputs, 1e-12).to(torch.bfloat16), wants, grad)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_unit_rows_give_a_head_view_its_gradient_in_its_own_layout() -> None:
    """x is a (2,B,h,T,W) view of a (B,T,2·h·W) projection; a gradient in x's layout flows back
    through the view without a copy."""
    projection = torch.randn(2, 5, 2 * 3 * 4, requires_grad=True)
    x = projection.view(2, 5, 2, 3, 4).permute(2, 0, 3, 1, 4)
    seen = []
    x.register_hook(seen.append)
    _UnitRows.apply(x, None, 0.6, 1e-12, None).sum().backward()
    assert seen[0].permute(1, 3, 0, 2, 4).is_contiguous()


def test_unit_rows_gradient_matches_autograd_where_the_norm_is_clamped() -> None:
    """Rows of norm 0 and of norm below eps: the norm is a constant there, as F.normalize's clamp makes it."""
    x, offset, divisor = unit_row_inputs(True, "learned", torch.float64)
    with torch.no_grad():
        x[0, 0, 0, 0] = -offset[0, 0, 0, 0]           # norm exactly 0
        x[0, 0, 1, 2] = -offset[0, 0, 1, 0] + 0.01    # norm 0.02 < eps
    grad = torch.randn(x.shape, dtype=torch.float64)
    want = torch.autograd.grad(plain_unit_rows(x, offset, divisor, 0.5), (x, offset, divisor), grad)
    got = torch.autograd.grad(_UnitRows.apply(x, offset, divisor, 0.5, None), (x, offset, divisor), grad)
    for name, g, w in zip(("x", "offset", "divisor"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)
    assert torch.count_nonzero(got[0][0, 0, 0, 0]) > 0


def test_linear_and_quadratic_modes_are_different_functions() -> None:
    torch.manual_seed(0)
    quad = PureWaveAttention(make_cfg(pure_wave_mode="quadratic")).eval()
    lin = PureWaveAttention(make_cfg(pure_wave_mode="linear")).eval()
    missing, unexpected = lin.load_state_dict(quad.state_dict(), strict=False)
    assert (missing, unexpected) == ([], ["head_scale"])  # linear mode has no scores for g_h to scale
    x = torch.randn(B, T, 24)
    with torch.no_grad():
        assert not torch.allclose(quad(x), lin(x), atol=1e-4)


def test_interference_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    attn = InterferenceAttention(make_cfg())
    perturb(attn)
    attn.eval()
    x = torch.randn(B, T, 24)
    q = split_heads(attn.q_proj(x), 3) + attn.psi_q
    k = split_heads(attn.k_proj(x), 3) + attn.psi_k
    v = split_heads(attn.v_proj(x), 3)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    scores = q @ k.transpose(-1, -2) / attn.tau
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    expected = attn.o_proj(merge_heads(torch.softmax(scores, dim=-1) @ v))
    with torch.no_grad():
        got = attn(x)
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)


def test_standard_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    attn = CausalSelfAttention(make_cfg()).eval()
    perturb(attn)
    x = torch.randn(B, T, 24)
    q, k, v = (split_heads(t, 3) for t in attn.qkv(x).chunk(3, dim=-1))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    expected = attn.o_proj(merge_heads(torch.softmax(scores, dim=-1) @ v))
    with torch.no_grad():
        got = attn(x)
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)


ALL_KINDS = [
    pytest.param("standard", {}, id="standard"),
    pytest.param("interference", {}, id="interference"),
    *[pytest.param("pure_wave", {"pure_wave_kernel": kn, "pure_wave_mode": mode}, id=f"{kn}-{mode}")
      for kn in sorted(KERNELS) for mode in ("quadratic", "linear")],
]


def build(kind: str, **overrides) -> torch.nn.Module:
    cfg = make_cfg(attention=kind, **overrides)
    return {"standard": CausalSelfAttention, "interference": InterferenceAttention,
            "pure_wave": PureWaveAttention}[kind](cfg)


@pytest.mark.parametrize("kind,overrides", ALL_KINDS)
def test_future_positions_do_not_change_earlier_outputs(kind: str, overrides: dict) -> None:
    torch.manual_seed(0)
    attn = build(kind, **overrides).eval()
    x = torch.randn(B, T, 24)
    changed = x.clone()
    changed[:, 20:] = torch.randn(B, T - 20, 24) * 10
    with torch.no_grad():
        a, b = attn(x), attn(changed)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("kind,overrides", ALL_KINDS)
def test_earlier_outputs_get_exactly_zero_gradient_from_future_inputs(kind: str, overrides: dict) -> None:
    torch.manual_seed(0)
    attn = build(kind, **overrides)
    perturb(attn)
    x = torch.randn(B, T, 24, requires_grad=True)
    attn(x)[:, :20].sum().backward()
    assert torch.count_nonzero(x.grad[:, 20:]) == 0
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad[:, :20]) > 0


@pytest.mark.parametrize("kind,overrides", [k for k in ALL_KINDS if "linear" not in k.id])
def test_dropout_only_in_training(kind: str, overrides: dict) -> None:
    torch.manual_seed(0)
    attn = build(kind, dropout=0.5, **overrides)
    x = torch.randn(B, T, 24)
    with torch.no_grad():
        assert not torch.equal(attn(x), attn(x))
        attn.eval()
        assert torch.equal(attn(x), attn(x))


def test_interference_temperature_is_learned_and_starts_at_sqrt_w() -> None:
    torch.manual_seed(0)
    attn = InterferenceAttention(make_cfg(num_waves=7))
    assert attn.tau.item() == pytest.approx(math.sqrt(7))
    assert torch.equal(attn.psi_q, torch.zeros(1, 3, 1, 7)) and torch.equal(attn.psi_k, attn.psi_q)
    perturb(attn)
    attn(torch.randn(B, T, 24)).pow(2).sum().backward()
    assert attn.tau.grad is not None and attn.tau.grad.abs().item() > 0
    assert attn.psi_q.grad.abs().sum().item() > 0


def test_linear_mode_memory_does_not_hold_a_per_position_state() -> None:
    """Autograd keeps nothing near the size of a (B,h,T,W,D) running state (the original's cost)."""
    torch.manual_seed(0)
    b, h, t, w, d = 1, 2, 512, 16, 64
    q, k = torch.rand(b, h, t, w, requires_grad=True), torch.rand(b, h, t, w, requires_grad=True)
    v = torch.randn(b, h, t, d, requires_grad=True)
    saved: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        causal_linear_attention(q, k, v, chunk_size=64).sum().backward()
    per_position_state = b * h * t * w * d
    assert max(saved) <= b * h * t * (d + 1)  # the values and their column of ones: 1/w of such a state
    assert sum(saved) < per_position_state // 2
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("mode", ["quadratic", "linear"])
def test_pure_wave_states_under_bf16_autocast_keep_their_phase_at_late_positions(mode: str) -> None:
    """``--precision bf16``: the position multiplies the projected frequency, so frequencies rounded
    to bf16 put the waves of late positions ~1 rad off (0.4 relative error at p=240); the waves are
    made in float32 and late positions come out as accurate as early ones."""
    torch.manual_seed(0)
    attn = PureWaveAttention(make_cfg(pure_wave_mode=mode, block_size=256))
    x = F.layer_norm(torch.randn(2, 256, 24), (24,))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = attn.wave_states(x)
        want = attn.double().wave_states(x.double())
    assert v.dtype == torch.bfloat16  # the value projection stays under autocast
    for got, ref in ((q, want[0]), (k, want[1])):
        error = (got.double() - ref).norm(dim=-1) / ref.norm(dim=-1)
        assert error[..., 240:].max() < 1e-3, error[..., 240:].max()  # float32 rounding of f·p

