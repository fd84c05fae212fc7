"""The models' dropout: a Bernoulli(1 - p) mask with inverted scaling, seeded by the global RNG."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.model_speed import _KernelOpCount
from spectral_gpt.attention import causal_softmax_attention
from spectral_gpt.dropout import Dropout, dropout_with_mask
from spectral_gpt.model import build_model


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_mask_keeps_each_element_with_probability_one_minus_p(p: float) -> None:
    torch.manual_seed(0)
    n = 1 << 20
    x = torch.full((n,), 2.0)
    out, keep = dropout_with_mask(x, p)
    kept = keep.double().mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # five standard errors
    assert torch.equal(out[keep], torch.full_like(out[keep], 2.0 / (1 - p)))
    assert torch.equal(out[~keep], torch.zeros_like(out[~keep]))
    halves = keep.view(2, -1).double().mean(dim=1)  # no drift along the tensor
    assert abs(halves[0] - halves[1]).item() < 10 * math.sqrt(p * (1 - p) / n)


def test_the_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    out, keep = dropout_with_mask(x, 0.3)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, keep.float() / 0.7)


def test_the_same_seed_draws_the_same_mask_and_another_seed_another() -> None:
    x = torch.ones(4096)
    masks = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        masks.append(dropout_with_mask(x, 0.2)[1])
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_the_module_acts_only_in_training_and_every_model_dropout_is_it() -> None:
    layer, x = Dropout(0.5), torch.ones(1000)
    assert not torch.equal(layer(x), x)
    assert layer.eval()(x) is x and Dropout(0.0)(x) is x
    for ablation in ("wave_baseline", "standard_transformer"):
        modules = list(build_model("tiny", ablation).modules())
        assert any(isinstance(m, Dropout) for m in modules)
        assert not any(isinstance(m, nn.Dropout) for m in modules)


@pytest.mark.parametrize("ablation", ["standard_transformer", "wave_baseline", "pure_wave", "pure_wave_linear"])
def test_a_cpu_training_step_of_every_model_draws_no_bernoulli_mask(ablation: str) -> None:
    """SDPA's CPU math path would draw the attention dropout with ``bernoulli_`` (slow); no dropout
    of any model does, attention included."""
    torch.manual_seed(0)
    model = build_model("tiny", ablation).train()
    assert model.cfg.dropout > 0
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    with _KernelOpCount() as mode:
        model(idx, idx)[1].backward()
    assert mode.by_name["bernoulli_"] == 0 and mode.by_name["random_"] > 0, dict(mode.by_name)


@pytest.mark.parametrize("scale", [None, 1.0])
def test_cpu_attention_dropout_is_softmax_attention_with_the_models_mask(scale: float | None) -> None:
    """The written-out CPU path: SDPA's function (checked without dropout) with dropout_with_mask's
    mask on the probabilities (checked against that mask drawn under the same seed)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 4, generator=g, requires_grad=True) for _ in range(3))
    scores = (q @ k.transpose(-1, -2)) * (0.5 if scale is None else scale)
    probs = torch.softmax(scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
    torch.manual_seed(4)
    want = dropout_with_mask(probs, 0.4)[0] @ v
    torch.manual_seed(4)
    got = causal_softmax_attention(q, k, v, 0.4, scale)
    torch.testing.assert_close(got, want)
    grads = [torch.autograd.grad(out.sum(), (q, k, v)) for out in (got, want)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    torch.testing.assert_close(probs @ v, sdpa)
