"""TrainState and the step function: exact resume across processes, NaN stops, real learning."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from spectral_gpt.config import ConfigError, TrainConfig, get_ablation, model_config_for
from spectral_gpt.data import BatchSampler, TokenDataset, validation_batches
from spectral_gpt.physics import build_optimizer
from spectral_gpt.training import (
    NonFiniteLossError,
    RunSpec,
    TrainState,
    autocast,
    evaluate,
    step_seed,
    train_steps,
)

N = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return TokenDataset.prepare("python-docs", tmp_path_factory.mktemp("cache"), 1024)


def _spec(ablation: str, steps: int = 2 * N, **train) -> RunSpec:
    exp = get_ablation(ablation)
    model = model_config_for("tiny", exp, vocab_size=1024)
    return RunSpec(model, exp, TrainConfig(steps=steps, batch_size=8, eval_interval=4, **train))


def _sampler(spec: RunSpec, dataset: TokenDataset) -> BatchSampler:
    return BatchSampler(dataset.train, spec.model.block_size, spec.train.batch_size, spec.train.seed)


SECOND_HALF = textwrap.dedent("""
    import json, sys, torch
    from spectral_gpt.data import BatchSampler, TokenDataset
    from spectral_gpt.training import RunSpec, TrainState, train_steps
    state_path, cache, out = sys.argv[1:4]
    saved = torch.load(state_path, weights_only=True)
    state = TrainState(RunSpec.from_dict(saved["spec"]))
    state.load_state_dict(saved)
    ds = TokenDataset.prepare("python-docs", cache, 1024)
    spec = state.spec
    sampler = BatchSampler(ds.train, spec.model.block_size, spec.train.batch_size, spec.train.seed)
    losses = [r.loss for r in train_steps(state, sampler.batch, 100)]
    torch.save(state.model.state_dict(), out + ".pt")
    json.dump({"losses": losses, "step": state.step}, open(out + ".json", "w"))
""")


@pytest.mark.parametrize("ablation", ["full_physics", "standard_transformer", "pure_wave_linear"])
def test_resume_in_a_fresh_process_is_exact(ablation, dataset, tmp_path):
    spec = _spec(ablation)
    whole = TrainState(spec)
    whole_losses = [r.loss for r in train_steps(whole, _sampler(spec, dataset).batch, 2 * N)]

    half = TrainState(spec)
    first = [r.loss for r in train_steps(half, _sampler(spec, dataset).batch, N)]
    torch.save(half.state_dict(), tmp_path / "state.pt")
    cache = str(dataset.directory.parent)
    out = str(tmp_path / "second")
    subprocess.run([sys.executable, "-c", SECOND_HALF, str(tmp_path / "state.pt"), cache, out], check=True)
    second = json.loads(open(out + ".json").read())

    assert first + second["losses"] == whole_losses  # atol = 0
    assert second["step"] == 2 * N
    resumed = torch.load(out + ".pt", weights_only=True)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed[name], tensor), name


def test_a_linear_pure_wave_run_saved_with_its_old_head_scale_resumes_exactly(dataset, tmp_path):
    """Linear pure-wave attention once had a ``head_scale`` it never used (DDP refused it). A run
    interrupted before it was dropped holds it in its weights and in the optimiser's numbering; the
    checkpoint still loads, and the run goes on as if it had never had it."""
    spec = _spec("pure_wave_linear")
    whole = TrainState(spec)
    whole_losses = [r.loss for r in train_steps(whole, _sampler(spec, dataset).batch, 2 * N)]

    old = TrainState(spec)  # the model as it was: one head_scale per block, registered before its Linears
    for block in old.model.blocks:
        block.attn.head_scale = torch.nn.Parameter(torch.ones(block.attn.num_heads))
    old.optimizer = build_optimizer(old.model, spec.experiment)
    first = [r.loss for r in train_steps(old, _sampler(spec, dataset).batch, N)]
    torch.save(old.state_dict(), tmp_path / "old.pt")
    saved = torch.load(tmp_path / "old.pt", weights_only=True)
    assert sum(k.endswith(".attn.head_scale") for k in saved["model"]) == spec.model.num_layers
    assert len(saved["optimizer"]["param_groups"][0]["params"]) == len(list(whole.model.parameters())) + 2

    resumed = TrainState(spec)
    resumed.load_state_dict(saved)
    second = [r.loss for r in train_steps(resumed, _sampler(spec, dataset).batch, N)]
    assert first + second == whole_losses  # atol = 0: the optimiser's moments went to the right tensors
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_state_refuses_a_different_model(dataset):
    state = TrainState(_spec("wave_baseline"))
    other = TrainState(_spec("rgd_only"))
    with pytest.raises(ConfigError, match="different experiment config"):
        other.load_state_dict(state.state_dict())


def test_nan_stops_with_a_clear_error_and_keeps_the_weights(dataset):
    spec = _spec("wave_baseline")
    state = TrainState(spec)
    train_steps(state, _sampler(spec, dataset).batch, 2)
    with torch.no_grad():
        state.model.head.proj.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="training diverged at step 2"):
        train_steps(state, _sampler(spec, dataset).batch, 1)
    assert state.step == 2
    after = state.model.state_dict()
    assert all(torch.allclose(before[k], after[k], rtol=0, atol=0, equal_nan=True) for k in before)


def test_step_seed_separates_steps_and_ranks():
    seeds = {step_seed(1, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200
    assert step_seed(1, 3, 0) == step_seed(1, 3, 0)


def test_wave_ratio_follows_the_schedule(dataset):
    # Over a 10k-step horizon the target stays ~0.5 for 40 steps and the LR is still warming up,
    # so r = sigmoid(0.5) = 0.622 decays by the EMA alone: 0.5 + 0.122 * 0.99**40.
    spec = _spec("wave_baseline", steps=10_000)
    state = TrainState(spec)
    start = state.wave_ratio
    train_steps(state, _sampler(spec, dataset).batch, 40)
    assert math.isclose(start, 1 / (1 + math.exp(-0.5)), rel_tol=1e-6)
    expected = 0.5 + (start - 0.5) * 0.99**40
    assert state.wave_ratio == pytest.approx(expected, abs=0.005)

    off = _spec("wave_baseline", steps=10_000)
    off = RunSpec(off.model, dataclasses.replace(off.experiment, wave_ratio_schedule=False), off.train)
    learned = TrainState(off)
    train_steps(learned, _sampler(off, dataset).batch, 40)
    assert learned.wave_ratio == pytest.approx(start, abs=0.005)


def test_tiny_model_learns_on_the_offline_corpus(dataset):
    spec = _spec("wave_baseline", steps=200)
    spec = RunSpec(spec.model, spec.experiment, TrainConfig(steps=200, batch_size=16, eval_interval=100))
    state = TrainState(spec)
    val = validation_batches(dataset.val, spec.model.block_size, spec.train.batch_size, 8)
    before = evaluate(state, val)
    train_steps(state, _sampler(spec, dataset).batch, 200)
    after = evaluate(state, val)
    uniform = math.log(spec.model.vocab_size)
    assert before == pytest.approx(uniform, abs=0.3)
    assert after < uniform - 1.0, (before, after)


@pytest.mark.parametrize("ablation", ["full_physics", "pure_wave", "pure_wave_linear"])
def test_bf16_autocast_trains_close_to_fp32_with_float32_weights(ablation, dataset):
    """bf16 runs forward passes in bfloat16 (checked on the head's logits), keeps every weight and
    optimiser moment in float32, and follows the fp32 run's losses to bfloat16 rounding."""
    runs = {}
    for precision in ("fp32", "bf16"):
        spec = _spec(ablation, precision=precision)
        state = TrainState(dataclasses.replace(spec, train=dataclasses.replace(spec.train, batch_size=2)))
        losses = [r.loss for r in train_steps(state, _sampler(state.spec, dataset).batch, 3)]
        val = evaluate(state, validation_batches(dataset.val, state.spec.model.block_size, 2, 1))
        runs[precision] = (state, losses, val)
    state, losses, val = runs["bf16"]
    x = torch.zeros(1, 8, dtype=torch.long)
    with autocast(state):
        assert state.model(x)[0].dtype == torch.bfloat16
    assert state.model(x)[0].dtype == torch.float32  # outside the step, the model is plain float32
    assert all(p.dtype == torch.float32 for p in state.model.parameters())
    assert all(t.dtype == torch.float32 for s in state.optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())
    assert all(math.isfinite(v) for v in [*losses, val])
    fp32_losses, fp32_val = runs["fp32"][1], runs["fp32"][2]
    assert max(abs(a - b) for a, b in zip(losses, fp32_losses, strict=True)) < 0.05
    assert abs(val - fp32_val) < 0.05
    assert (losses, val) != (fp32_losses, fp32_val)  # bfloat16 really ran


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"precision='fp16' is not one of: fp32, bf16"):
        TrainConfig(precision="fp16")
