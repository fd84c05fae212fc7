"""The kernel-operator counter of wave_vs_standard, and the fused paths it was built to guard."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.model_speed import _fixed_batch, _kernel_ops_per_step, _KernelOpCount, _ops_beyond, _variant
from spectral_gpt import physics
from spectral_gpt.attention import _project, _UnitRows
from spectral_gpt.config import ABLATIONS, TrainConfig
from spectral_gpt.physics import _resonance_gates
from spectral_gpt.training import RunSpec, TrainState, train_step


def kernel_ops(fn, x: torch.Tensor, *params: torch.Tensor) -> int:
    """Operators that run a kernel in ``fn(x).sum()`` and its gradients (fresh, nothing accumulated)."""
    with _KernelOpCount() as mode:
        torch.autograd.grad(fn(x).sum(), (x, *params))
    return mode.count


def test_views_and_allocations_are_not_counted_and_a_foreach_call_is_one():
    x = torch.randn(4, 6)
    with _KernelOpCount() as mode:
        y = x.view(6, 4).t().transpose(0, 1).reshape(24)  # views only
        torch.empty(3)
        z = y + 1.0                                          # 1
        torch._foreach_mul_([z, x, y.clone()], 2.0)          # clone 1, foreach 1
    assert mode.count == 3


def test_unit_rows_run_fewer_kernels_than_the_plain_expression():
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    offset = torch.zeros(1, 3, 1, 4, requires_grad=True)
    tau = torch.tensor(2.0, requires_grad=True)
    plain = kernel_ops(lambda x: F.normalize(x + offset, dim=-1, eps=1e-12) / tau, x, offset, tau)
    fused = kernel_ops(lambda x: _UnitRows.apply(x, offset, tau, 1e-12, None), x, offset, tau)
    assert fused < plain, (fused, plain)


def test_stacked_projections_run_fewer_kernels_than_separate_ones():
    linears = [torch.nn.Linear(8, n) for n in (8, 8, 16)]
    x = torch.randn(2, 5, 8, requires_grad=True)
    params = [p for lin in linears for p in lin.parameters()]
    separate = kernel_ops(lambda x: torch.cat([lin(x) for lin in linears], dim=-1), x, *params)
    stacked = kernel_ops(lambda x: torch.cat(_project(x, tuple(linears[:2]), linears[2:]), dim=-1), x, *params)
    assert stacked < separate, (stacked, separate)


def test_the_resonance_gate_transforms_weights_and_updates_of_one_shape_together():
    g = torch.Generator().manual_seed(0)
    thetas = [torch.randn(6, 4, generator=g) for _ in range(3)] + [torch.randn(4, 6, generator=g)]
    updates = [torch.randn(t.shape, generator=g) for t in thetas]
    with _KernelOpCount() as mode:
        gated = _resonance_gates(thetas, updates, 0.5, 1e-8)
    assert [t.shape for t in gated] == [t.shape for t in updates]
    assert mode.by_name["_fft_r2c"] == 2 and mode.by_name["_fft_c2r"] == 2  # one of each per shape


def test_rgd_is_counted_with_its_transforms_batched_as_on_a_gpu(monkeypatch):
    """A CPU caps RGD's FFT batches to its caches (the small model's MLP weights go one by one; here
    a cap of 4096 elements splits the tiny model's the same way); the count stacks them as a GPU
    does, then leaves the CPU's cap as it was."""
    monkeypatch.setitem(physics._GATE_BATCH_ELEMENTS, "cpu", 1 << 12)
    cap = dict(physics._GATE_BATCH_ELEMENTS)
    cfg, exp = _variant("tiny", ABLATIONS["standard_transformer"], optimizer="rgd")
    counted = _kernel_ops_per_step({"rgd": (cfg, exp)})["rgd"].total()
    assert physics._GATE_BATCH_ELEMENTS == cap
    state = TrainState(RunSpec(cfg, exp, TrainConfig(steps=100, batch_size=1, precision="bf16")))
    batch_fn = _fixed_batch(cfg.vocab_size, 1, cfg.block_size)
    train_step(state, batch_fn)
    with _KernelOpCount() as mode:
        train_step(state, batch_fn)
    assert counted < mode.count, (counted, mode.count)


def test_a_variants_extra_operators_are_listed_by_name_against_the_baseline():
    cfg, exp = _variant("tiny", ABLATIONS["standard_transformer"])
    wave_cfg, wave_exp = _variant("tiny", ABLATIONS["wave_baseline"])
    counts = _kernel_ops_per_step({"standard": (cfg, exp), "wave": (wave_cfg, wave_exp)})
    beyond = _ops_beyond(counts["wave"], counts["standard"])
    assert sum(beyond.values()) == counts["wave"].total() - counts["standard"].total()
    assert all(counts["wave"][op] - counts["standard"][op] == n != 0 for op, n in beyond.items())
    assert beyond["sin"] > 0 and beyond["cos"] > 0  # the wave embedding's and MLP's sinusoids
    assert [abs(n) for n in beyond.values()] == sorted((abs(n) for n in beyond.values()), reverse=True)
