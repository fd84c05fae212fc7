"""``--compile``: training through torch.compile (TorchInductor, real C++ kernels on this CPU).

A compiled step must compute the eager step's mathematics, leave checkpoints an eager run can load,
resume exactly, and work under Ray Train's DDP wrapper. The model-core tests use a one-layer model,
since every compilation costs tens of seconds on two cores however small the model.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from runs import TWO_WORKER_STEPS, final_weights, run_settings

from orchestrator.monitoring import MetricsLogger
from orchestrator.run import run_training
from spectral_gpt.config import ConfigError, TrainConfig, get_ablation, model_config_for
from spectral_gpt.model import build_model_from_config
from spectral_gpt.training import RunSpec, TrainState, train_steps

VOCAB, BLOCK, BATCH = 64, 16, 4


def _spec(compile_mode: str | None, dropout: float) -> RunSpec:
    """One pure-wave layer: its hand-written autograd Function and its wave terms are what compiles
    least readily, and what the GPU needs fused most."""
    exp = get_ablation("pure_wave")
    model = dataclasses.replace(model_config_for("tiny", exp, vocab_size=VOCAB), d_model=32, num_layers=1,
                                num_heads=2, num_waves=4, block_size=BLOCK, dropout=dropout)
    return RunSpec(model, exp, TrainConfig(steps=100, batch_size=BATCH, compile=compile_mode))


def _batch(step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (BATCH, BLOCK + 1), generator=torch.Generator().manual_seed(step))
    return ids[:, :-1], ids[:, 1:]


def _round_trip(state: TrainState) -> dict:
    """The state as a checkpoint holds it: saved, then loaded with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_compiled_step_computes_the_eager_steps_mathematics():
    eager, fused = TrainState(_spec(None, dropout=0.0)), TrainState(_spec("default", dropout=0.0))
    assert fused.forward_module is not fused.model  # the step really runs the compiled module
    eager_losses = [r.loss for r in train_steps(eager, _batch, 3)]
    fused_losses = [r.loss for r in train_steps(fused, _batch, 3)]
    assert fused_losses == pytest.approx(eager_losses, rel=1e-5)
    fused_weights, eager_weights = fused.model.state_dict(), eager.model.state_dict()
    assert fused_weights.keys() == eager_weights.keys()  # no "_orig_mod." prefix in checkpoints
    assert all(torch.allclose(fused_weights[k], eager_weights[k], atol=1e-5) for k in eager_weights)


def test_a_compiled_run_resumes_exactly_and_its_checkpoint_loads_eagerly():
    spec = _spec("default", dropout=0.1)
    uninterrupted = TrainState(spec)
    reference = [r.loss for r in train_steps(uninterrupted, _batch, 4)]

    first = TrainState(spec)
    losses = [r.loss for r in train_steps(first, _batch, 2)]
    saved = _round_trip(first)
    resumed = TrainState(spec)
    resumed.load_state_dict(saved)
    losses += [r.loss for r in train_steps(resumed, _batch, 2)]
    # Dropout included: the compiled draws follow the seeded generator too. Not bit for bit: the
    # compiled embedding backward adds rows with atomics across threads, in no fixed order (~4e-9),
    # where a lost data position or RNG state would move the loss by ~1e-2.
    assert losses == pytest.approx(reference, rel=1e-6, abs=0)
    expected = uninterrupted.model.state_dict()
    assert all(torch.allclose(w, expected[k], rtol=0, atol=1e-6) for k, w in resumed.model.state_dict().items())

    eager = TrainState(dataclasses.replace(spec, train=dataclasses.replace(spec.train, compile=None)))
    eager.load_state_dict(saved)  # the checkpoint holds the plain model: it loads without compilation
    assert eager.step == 2 and train_steps(eager, _batch, 1)[0].step == 2


@pytest.mark.parametrize("overrides", [dict(attention="interference"), dict(attention="pure_wave"),
                                       dict(attention="pure_wave", pure_wave_mode="linear"),
                                       dict(model_type="standard", attention="standard")],
                         ids=["interference", "pure-quadratic", "pure-linear", "standard"])
def test_every_model_compiles_to_one_graph_with_dropout_on(overrides):
    """A graph break splits the model where Inductor cannot fuse across; the CPU dropout mask's in-place
    random_ made one per dropout before dropout went to PyTorch's own kernel under compilation."""
    exp = get_ablation("wave_baseline")
    cfg = dataclasses.replace(model_config_for("tiny", exp, vocab_size=VOCAB), num_layers=1, block_size=BLOCK,
                              dropout=0.1, **overrides)
    model = build_model_from_config(cfg)
    idx = torch.randint(0, VOCAB, (2, BLOCK))
    explained = torch._dynamo.explain(model)(idx, idx)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_an_unknown_compile_mode_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"compile='fast' is not one of: default, reduce-overhead, max-autotune"):
        TrainConfig(compile="fast")


def test_a_compiled_two_worker_ddp_run_trains_like_the_eager_one(two_worker_reference, token_cache, tmp_path):
    """Ray Train's DDP wrapper under torch.compile, in two real worker processes. Dropout draws differ
    from eager ones (Inductor generates its own), so the curve matches to 1e-2, not bit for bit."""
    outcome = run_training(run_settings(tmp_path, token_cache, "compiled", workers=2, steps=TWO_WORKER_STEPS,
                                        compile_mode="default"))
    assert outcome.status == "completed", outcome.error
    rows = MetricsLogger(outcome.run_dir / "logs").load_metrics()
    reference = MetricsLogger(two_worker_reference.run_dir / "logs").load_metrics()
    assert [r["step"] for r in rows] == list(range(TWO_WORKER_STEPS))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], abs=1e-2)
    assert outcome.final_metrics["val_loss"] == pytest.approx(two_worker_reference.final_metrics["val_loss"], abs=1e-2)
    weights, reference_weights = final_weights(outcome.run_dir), final_weights(two_worker_reference.run_dir)
    assert weights.keys() == reference_weights.keys()
