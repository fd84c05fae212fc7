"""RGD and QFE against literal re-implementations of spec 2.1 / 2.2, AdamW, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectral_gpt.config import ABLATIONS, ConfigError
from spectral_gpt.physics import RGD, QFELoss, _resonance_gate, build_loss, build_optimizer

VOCAB = 37


class TinyNet(nn.Module):
    """Small model with 1-D, 2-D and 3-D parameters (like the wave embedding's harmonic table)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 12)
        self.harmonics = nn.Parameter(0.1 * torch.randn(VOCAB, 4, 3))
        self.fc = nn.Linear(12, 20)
        self.ln = nn.LayerNorm(20)
        self.extra = nn.Linear(20, 20)
        self.head = nn.Linear(20, VOCAB)

    def forward(self, idx: torch.Tensor, use_extra: bool = True) -> torch.Tensor:
        x = self.emb(idx) + self.harmonics[idx].flatten(-2)
        h = self.ln(F.gelu(self.fc(x)))
        if use_extra:
            h = h + self.extra(h)
        return self.head(h)


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (3, 9), generator=g), torch.randint(0, VOCAB, (3, 9), generator=g))
            for _ in range(n)]


def train(model: TinyNet, opt, data, start: int = 0) -> None:
    """Plain steps; ``extra`` gets no gradient on steps divisible by 3 (per-parameter step counts)."""
    for step, (x, y) in enumerate(data, start):
        opt.zero_grad(set_to_none=True)
        logits = model(x, use_extra=step % 3 != 0)
        F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)).backward()
        opt.step()


class ReferenceRGD:
    """Spec 2.1 written out literally, one tensor at a time, with full complex 2-D FFTs."""

    def __init__(self, params, lr, betas, eps, weight_decay, strength, warmup):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.strength, self.warmup, self.t = strength, warmup, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.k = [0 for _ in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        alpha = min(1.0, self.t / self.warmup) * self.strength if self.warmup > 0 else self.strength
        b1, b2, eps, lr = *self.betas, self.eps, self.lr
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad
            p.copy_(p * (1 - lr * self.wd))
            self.k[i] += 1
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_hat = self.m[i] / (1 - b1 ** self.k[i])
            v_hat = self.v[i] / (1 - b2 ** self.k[i])
            u = m_hat / (torch.sqrt(v_hat) + eps)
            if p.dim() >= 2 and alpha > 0:
                theta_f = torch.fft.fft2(p.reshape(p.shape[0], -1))
                u_f = torch.fft.fft2(u.reshape(p.shape[0], -1))
                theta_n = theta_f.abs() / (theta_f.abs().max() + eps)
                u_n = u_f.abs() / (u_f.abs().max() + eps)
                rho = alpha * torch.sqrt(theta_n * u_n + eps) + (1 - alpha)
                u = torch.fft.ifft2(u_f * rho).real.reshape(p.shape)
            p.copy_(p - lr * u)


def dft2(x: torch.Tensor) -> torch.Tensor:
    """The 2-D DFT from its definition, in float64, independent of torch.fft."""
    m, n = x.shape
    fm = torch.exp(-2j * math.pi * torch.outer(torch.arange(m), torch.arange(m)).double() / m)
    fn = torch.exp(-2j * math.pi * torch.outer(torch.arange(n), torch.arange(n)).double() / n)
    return fm @ x.to(torch.complex128) @ fn


@pytest.mark.parametrize("shape", [(7, 5), (8, 6), (9, 1), (1, 10), (6, 4, 3), (5, 2, 3, 2)])
def test_half_spectrum_gate_equals_the_full_fft_formula(shape):
    g = torch.Generator().manual_seed(sum(shape))
    theta, u = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g,
                                                                                  dtype=torch.float64)
    alpha, eps = 0.3, 1e-8
    t2, u2 = theta.reshape(shape[0], -1), u.reshape(shape[0], -1)
    theta_f, u_f = dft2(t2), dft2(u2)
    rho = alpha * torch.sqrt(theta_f.abs() / (theta_f.abs().max() + eps)
                             * u_f.abs() / (u_f.abs().max() + eps) + eps) + (1 - alpha)
    full = torch.fft.ifft2(u_f * rho)
    assert full.imag.abs().max() < 1e-10  # the gated spectrum is conjugate-symmetric
    got = _resonance_gate(theta, u, alpha, eps)
    torch.testing.assert_close(got, full.real.reshape(shape), atol=1e-12, rtol=1e-10)
    assert (got - u).abs().max() > 1e-3  # the gate really changed the update
    got32 = _resonance_gate(theta.float(), u.float(), alpha, eps)
    torch.testing.assert_close(got32, full.real.reshape(shape).float(), atol=2e-6, rtol=1e-5)


def test_rgd_matches_the_literal_reference_and_differs_from_adamw():
    hyper = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    data = batches(10)
    ours, ref, adamw = make_model(), make_model(), make_model()
    train(ours, RGD(ours.parameters(), resonance_strength=0.5, warmup_steps=4, **hyper), data)
    train(ref, ReferenceRGD(ref.parameters(), strength=0.5, warmup=4, **hyper), data)
    train(adamw, torch.optim.AdamW(adamw.parameters(), **hyper), data)
    gap = 0.0
    for (name, a), b, c in zip(ours.named_parameters(), ref.parameters(), adamw.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
        gap = max(gap, (a - c).abs().max().item())
    assert gap > 1e-4  # the resonance gate made a visible difference


def test_batched_rgd_trajectory_matches_the_literal_reference():
    """Same-shape matrices share one FFT call (and a batch that outgrows the CPU cap is split) while the
    literal reference transforms every tensor alone with full complex FFTs: 12 steps of given
    gradients must agree to float32 rounding (1e-6 on weights of size ~1, after lr=1e-2 steps)."""
    shapes = [(300, 700)] * 3 + [(16, 24)] * 4 + [(24, 16), (16, 4, 6), (1, 40), (40,), (5, 1, 3)]
    assert 2 * 3 * 300 * 700 > 1 << 20  # the three 300x700 matrices do not fit in one CPU batch
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(*s, generator=g) for s in shapes]
    ours = [nn.Parameter(t.clone()) for t in start]
    ref = [nn.Parameter(t.clone()) for t in start]
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    opt = RGD(ours, resonance_strength=0.7, warmup_steps=5, **hyper)
    ref_opt = ReferenceRGD(ref, strength=0.7, warmup=5, **hyper)
    for step in range(12):
        grads = [torch.randn(*s, generator=g) * (1 + i) for i, s in enumerate(shapes)]
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            has_grad = not (i == 4 and step % 4 == 1)  # one matrix of a batch sits some steps out
            a.grad = grads[i].clone() if has_grad else None
            b.grad = grads[i].clone() if has_grad else None
        opt.step()
        ref_opt.step()
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=f"parameter {i} {tuple(a.shape)}")
    moved = [(a - s).abs().max().item() for a, s in zip(ours, start, strict=True)]
    assert min(moved) > 1e-2
    state = opt.state_dict()  # the checkpoint format other code relies on
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["state"][0]["step"] == 12 and state["state"][4]["step"] == 9
    assert state["param_groups"][0]["rgd_step"] == 12


@pytest.mark.parametrize("foreach", [False, True])
def test_rgd_with_zero_strength_is_adamw_step_for_step(foreach):
    hyper = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    rgd_model, adamw_model = make_model(), make_model()
    rgd = RGD(rgd_model.parameters(), resonance_strength=0.0, warmup_steps=3, **hyper)
    adamw = torch.optim.AdamW(adamw_model.parameters(), foreach=foreach, **hyper)
    for step, batch in enumerate(batches(20)):
        train(rgd_model, rgd, [batch], start=step)
        train(adamw_model, adamw, [batch], start=step)
        for a, b in zip(rgd_model.parameters(), adamw_model.parameters(), strict=True):
            assert torch.equal(a, b)
    assert rgd.state[rgd_model.extra.weight]["step"] == 13  # skipped when it had no gradient
    assert rgd.state[rgd_model.fc.weight]["step"] == 20


def test_the_adamw_ablation_takes_torchs_adamw_steps_in_its_fused_kernel():
    exp = ABLATIONS["wave_baseline"]
    hyper = dict(lr=exp.lr, weight_decay=exp.weight_decay)
    ours, plain = make_model(), make_model()
    fused = build_optimizer(ours, exp)
    assert fused.param_groups[0]["fused"] is True
    train(ours, fused, batches(20))
    train(plain, torch.optim.AdamW(plain.parameters(), foreach=False, **hyper), batches(20))
    moved = 0.0
    for (name, a), b, start in zip(ours.named_parameters(), plain.parameters(), make_model().parameters(),
                                   strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        moved = max(moved, (a - start).abs().max().item())
    assert moved > 1e-3  # twenty real steps, not a comparison of two untouched models


def test_rgd_state_dict_round_trip_resumes_exactly(tmp_path):
    hyper = dict(lr=1e-2, weight_decay=0.1, resonance_strength=0.5, warmup_steps=10)
    data = batches(12)
    straight = make_model()
    train(straight, RGD(straight.parameters(), **hyper), data)

    first = make_model()
    opt = RGD(first.parameters(), **hyper)
    train(first, opt, data[:6])
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)

    resumed = make_model(seed=99)
    opt2 = RGD(resumed.parameters(), **hyper)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["rgd_step"] == 6
    train(resumed, opt2, data[6:], start=6)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)

    # Control: the same resume with the counter lost (the original's bug B12) does not match.
    lost = make_model(seed=99)
    opt3 = RGD(lost.parameters(), **hyper)
    lost.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    opt3.param_groups[0]["rgd_step"] = 0
    train(lost, opt3, data[6:], start=6)
    assert not all(torch.equal(a, b) for a, b in zip(straight.parameters(), lost.parameters(), strict=True))


def test_rgd_steps_low_precision_parameters():
    layer = nn.Linear(16, 24).to(torch.bfloat16)
    before = layer.weight.detach().clone()
    layer(torch.randn(4, 16, dtype=torch.bfloat16)).square().sum().backward()
    RGD(layer.parameters(), lr=1e-2, resonance_strength=0.5, warmup_steps=0).step()
    assert layer.weight.dtype == torch.bfloat16 and torch.isfinite(layer.weight).all()
    assert not torch.equal(layer.weight, before)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(betas=(0.9, 1.0)), dict(weight_decay=-0.1),
                                    dict(resonance_strength=1.5), dict(warmup_steps=-1)])
def test_rgd_rejects_bad_hyper_parameters(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        RGD(nn.Linear(2, 2).parameters(), **kwargs)


def reference_qfe(logits, targets, projection, lam, tau, temperature=1.0):
    """Spec 2.2 written out literally: one-hot targets, angles and cosines."""
    vocab = logits.shape[-1]
    prob = torch.softmax(logits / temperature, dim=-1)
    onehot = F.one_hot(targets, vocab).float()
    y_out, y_tgt = (prob, onehot) if projection is None else (prob @ projection, onehot @ projection)
    f_out, f_tgt = torch.fft.rfft(y_out, dim=1), torch.fft.rfft(y_tgt, dim=1)
    a_out, a_tgt = f_out.abs(), f_tgt.abs()
    mask = ((a_out > tau) & (a_tgt > tau)).float()
    coh = (a_out * a_tgt * (1 - torch.cos(torch.angle(f_out) - torch.angle(f_tgt))) * mask).sum() / (
        mask.sum() + 1e-8)
    ce = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    return ce + lam * coh, ce, coh


@pytest.mark.parametrize("vocab,proj_dim,temperature", [(300, 16, 1.0), (12, 16, 1.0), (300, 16, 2.0)])
def test_qfe_matches_the_literal_reference_in_value_and_gradient(vocab, proj_dim, temperature):
    """Temperature 1 shares one log-softmax between CE and the penalty; other temperatures cannot."""
    g = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(2, 17, vocab, generator=g)).requires_grad_()
    targets = torch.randint(0, vocab, (2, 17), generator=g)
    loss = QFELoss(vocab, lambda_coherence=0.1, projection_dim=proj_dim, seed=3, temperature=temperature)
    parts = loss(logits, targets)
    assert set(parts) == {"total", "ce", "coherence"}
    assert (loss.projection is None) == (vocab <= proj_dim)
    total, ce, coh = reference_qfe(logits, targets, loss.projection, 0.1, 0.01, temperature)
    assert coh.item() > 0 and parts["coherence"].item() > 0
    torch.testing.assert_close(parts["coherence"], coh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["total"], parts["ce"] + 0.1 * parts["coherence"])
    ours_grad, = torch.autograd.grad(parts["total"], logits)
    ref_grad, = torch.autograd.grad(total, logits)
    assert torch.isfinite(ours_grad).all()
    torch.testing.assert_close(ours_grad, ref_grad, atol=1e-6, rtol=1e-4)


def test_qfe_coherence_is_zero_for_perfect_predictions_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 50, (2, 16), generator=g)
    loss = QFELoss(50, projection_dim=8, seed=0)
    perfect = 1e4 * F.one_hot(targets, 50).float()
    assert loss(perfect, targets)["coherence"].item() == pytest.approx(0.0, abs=1e-4)
    for _ in range(3):
        random = torch.randn(2, 16, 50, generator=g)
        assert loss(random, targets)["coherence"].item() > 1e-3


def test_qfe_projection_is_seeded_saved_and_restored():
    a, b, c = QFELoss(500, seed=7), QFELoss(500, seed=7), QFELoss(500, seed=8)
    assert a.projection.shape == (500, 256)
    assert torch.equal(a.projection, b.projection) and not torch.equal(a.projection, c.projection)
    assert a.projection.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.05)
    assert "projection" in a.state_dict()
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.projection, a.projection)
    with pytest.raises(ValueError, match="must be"):
        a(torch.randn(2, 4, 499), torch.zeros(2, 4, dtype=torch.long))


def test_build_optimizer_and_loss_follow_the_ablation():
    model = make_model()
    for exp in ABLATIONS.values():
        opt = build_optimizer(model, exp)
        group = opt.param_groups[0]
        assert group["lr"] == exp.lr and group["weight_decay"] == exp.weight_decay
        if exp.optimizer == "rgd":
            assert isinstance(opt, RGD)
            assert group["resonance_strength"] == exp.rgd_strength
            assert group["warmup_steps"] == exp.rgd_warmup_steps
        else:
            assert type(opt) is torch.optim.AdamW and group["fused"] is True
        loss = build_loss(exp, 1024, seed=11)
        if exp.loss == "qfe":
            assert isinstance(loss, QFELoss) and loss.lambda_coherence == exp.qfe_lambda
            assert loss.amplitude_threshold == exp.qfe_threshold
            assert torch.equal(loss.projection, QFELoss(1024, seed=11).projection)
        else:
            assert loss is None
