"""The fast float32 paths on every device this machine has, against float64 references on the CPU.

``DEVICES`` is the CPU plus CUDA when a GPU is visible, so CI (CPU only) checks the float32 code and a
GPU machine checks the same functions through cuFFT, cuBLAS and the CUDA kernels of the hand-written
backwards. Tolerances are relative (‖got − ref‖ / ‖ref‖); float32 lands far under 1e-3 (TF32 would not).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_model import VARIANTS
from test_physics import ReferenceRGD
from torch import nn

from spectral_gpt.config import get_ablation
from spectral_gpt.model import build_model_from_config
from spectral_gpt.physics import RGD, build_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
"""Every device a test here runs on; no test is skipped when there is no GPU, it simply has one fewer."""


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """‖got − ref‖ / ‖ref‖ in float64 on the CPU (NaN anywhere gives NaN, which fails any bound)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm())


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 matmuls (a GPU option, off by PyTorch's default) would loosen float32 to ~1e-3; keep it off."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_model_loss_and_gradients_match_float64_on_the_cpu(device: str, name: str) -> None:
    torch.manual_seed(0)
    model = build_model_from_config(VARIANTS[name]).eval()  # eval: dropout draws differ per device
    reference = copy.deepcopy(model).double()
    model = model.to(device)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model.cfg.vocab_size, (3, model.cfg.block_size), generator=g)
    targets = torch.randint(0, model.cfg.vocab_size, (3, model.cfg.block_size), generator=g)
    logits, loss = model(idx.to(device), targets.to(device))
    ref_logits, ref_loss = reference(idx, targets)
    loss.backward()
    ref_loss.backward()
    assert relative_error(logits, ref_logits) < 1e-4
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * ref_loss.item()
    pairs = list(zip(model.named_parameters(), reference.parameters(), strict=True))
    assert [n for (n, p), _ in pairs if p.grad is None] == [n for (n, _), r in pairs if r.grad is None]
    worst = max((relative_error(p.grad, r.grad), n) for (n, p), r in pairs if r.grad is not None and r.grad.norm() > 0)
    assert worst[0] < 1e-3, worst  # phases of waves (cos of t·ω) amplify float32 rounding a little


@pytest.mark.parametrize("device", DEVICES)
def test_qfe_value_and_gradient_match_float64_on_the_cpu(device: str) -> None:
    loss_fn = build_loss(get_ablation("full_physics"), vocab_size=300, seed=0)
    reference = copy.deepcopy(loss_fn).double()
    g = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(4, 16, 300, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 300, (4, 16), generator=g)
    ours = logits.detach().float().to(device).requires_grad_()
    got = loss_fn.to(device)(ours, targets.to(device))["total"]
    ref = reference(logits, targets)["total"]
    got.backward()
    ref.backward()
    assert abs(got.item() - ref.item()) < 1e-5 * abs(ref.item())
    assert relative_error(ours.grad, logits.grad) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_batched_rgd_trajectory_matches_the_float64_literal_reference(device: str) -> None:
    """Batched half-spectrum FFTs on ``device`` (float32) against spec 2.1 written out in float64."""
    shapes = [(300, 700)] * 3 + [(16, 24)] * 4 + [(24, 16), (16, 4, 6), (1, 40), (40,), (5, 1, 3)]
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(*s, generator=g) for s in shapes]
    ours = [nn.Parameter(t.clone().to(device)) for t in start]
    ref = [nn.Parameter(t.clone().double()) for t in start]
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    opt = RGD(ours, resonance_strength=0.7, warmup_steps=5, **hyper)
    ref_opt = ReferenceRGD(ref, strength=0.7, warmup=5, **hyper)
    for _ in range(12):
        grads = [torch.randn(*s, generator=g, dtype=torch.float64) * (1 + i) for i, s in enumerate(shapes)]
        for a, b, grad in zip(ours, ref, grads, strict=True):
            a.grad, b.grad = grad.float().to(device), grad.clone()
        opt.step()
        ref_opt.step()
    for i, (a, b, s) in enumerate(zip(ours, ref, start, strict=True)):
        assert a.device.type == device
        assert relative_error(a - s.to(device), b - s.double()) < 1e-4, f"parameter {i} {tuple(a.shape)}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["wave_baseline", "pure_wave", "pure_linear_exp", "standard_transformer"])
def test_bf16_autocast_loss_and_gradients_stay_near_float64(device: str, name: str) -> None:
    """``--precision bf16``: bfloat16 keeps ~3 significant digits, so the loss lands within 1e-2 and
    the gradients within a few 1e-2 of float64; a wrong cast or a broken backward lands far outside."""
    torch.manual_seed(0)
    model = build_model_from_config(VARIANTS[name]).eval()
    reference = copy.deepcopy(model).double()
    model = model.to(device)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.block_size), generator=g)
    targets = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.block_size), generator=g)
    with torch.autocast(device, dtype=torch.bfloat16):
        logits, loss = model(idx.to(device), targets.to(device))
    assert logits.dtype == torch.bfloat16
    _, ref_loss = reference(idx, targets)
    loss.backward()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-2 * ref_loss.item()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    ref_grads = torch.cat([p.grad.flatten() for p in reference.parameters() if p.grad is not None])
    assert relative_error(grads, ref_grads) < 5e-2
