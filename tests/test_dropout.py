"""The models' dropout: a Bernoulli(1 - p) mask with inverted scaling, seeded by the global RNG."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

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
