"""WaveGPT / StandardGPT: every ablation and variant trains and samples, counts match spec 1.9,
init follows spec 1.6 and is seed-exact, and the model is causal."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.model_speed import _KernelOpCount
from spectral_gpt.attention import InterferenceAttention, PureWaveAttention
from spectral_gpt.config import ABLATIONS, ConfigError, ModelConfig, get_model_size, model_config_for
from spectral_gpt.embedding import PhysicsWaveEmbedding, WavePacketEmbedding, wave_features
from spectral_gpt.model import (
    StandardGPT,
    WaveGPT,
    _GeluPlusSin,
    build_model,
    build_model_from_config,
    count_parameters,
)

TINY = get_model_size("tiny")


def tiny(**overrides) -> ModelConfig:
    return dataclasses.replace(TINY, **overrides)


VARIANTS = {
    **{name: model_config_for("tiny", name) for name in ABLATIONS},
    "wave_standard_attention": tiny(attention="standard"),
    "pure_linear_sigmoid": tiny(attention="pure_wave", pure_wave_mode="linear", pure_wave_kernel="sigmoid"),
    "pure_linear_exp": tiny(attention="pure_wave", pure_wave_mode="linear", pure_wave_kernel="exp"),
    "v2_interference": tiny(embedding="v2"),
    "v2_pure_quadratic": tiny(embedding="v2", attention="pure_wave"),
    "v2_pure_linear": tiny(embedding="v2", attention="pure_wave", pure_wave_mode="linear"),
    "v2_standard_attention": tiny(embedding="v2", attention="standard"),
}


def expected_parameters(cfg: ModelConfig) -> int:
    """Spec 1.3-1.5 counted by hand: which parameters exist, independent of the model code."""
    V, d, L, h, W, K = (cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.num_waves,
                        cfg.num_harmonics)

    def linear(i: int, o: int, bias: bool = True) -> int:
        return i * o + (o if bias else 0)

    norm, mlp = 2 * d, linear(d, 4 * d) + linear(4 * d, d)
    softmax_attn = linear(d, 3 * d) + linear(d, d)
    if cfg.model_type == "standard":
        return V * d + cfg.block_size * d + L * (2 * norm + softmax_attn + mlp) + norm + linear(d, V, False)
    attn = {"standard": softmax_attn,
            "interference": 2 * linear(d, h * W) + 2 * linear(d, d) + 2 * h * W + 1,
            "pure_wave": 4 * linear(d, h * W) + 2 * linear(d, d) + (h if cfg.pure_wave_mode == "quadratic" else 0),
            }[cfg.attention]
    embedding = linear(2 * W * K, d) + V * d + norm + V * W + W       # projection, table, LN, phases, pos
    if cfg.embedding == "v1":
        embedding += V * W + V * W * K + 1                            # learnable freqs, amps, ratio
    return embedding + L * (2 * norm + attn + mlp) + norm + norm + linear(d, V)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_builds_trains_one_step_and_generates(name: str) -> None:
    cfg = VARIANTS[name]
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    assert isinstance(model, StandardGPT if cfg.model_type == "standard" else WaveGPT)
    assert count_parameters(model) == expected_parameters(cfg)
    x = torch.randint(0, cfg.vocab_size, (3, 16))
    y = torch.randint(0, cfg.vocab_size, (3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, cfg.vocab_size)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5  # near-uniform prediction at init
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    # v2 blends its lookup table in only while annealing (standard_embed_ratio > 0); v2 is no ablation.
    idle = {"embedding.simple_embed.weight"} if cfg.embedding == "v2" else set()
    no_gradient = [n for n, p in model.named_parameters() if p.grad is None and n not in idle]
    assert not no_gradient, f"DDP (--workers 2+) refuses parameters that take no part in the loss: {no_gradient}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert model(x, y)[1].item() < loss.item()  # same batch, one step later
    out = model.generate(x[:, :5], max_new_tokens=7, generator=torch.Generator().manual_seed(1))
    assert out.shape == (3, 12) and torch.equal(out[:, :5], x[:, :5])
    assert out.min() >= 0 and out.max() < cfg.vocab_size


def test_wave_activation_equals_the_plain_expression_in_value_and_gradient() -> None:
    """The hand-written backward of GELU(h) + 0.1·sin(h): values bit for bit, gradients to float32
    rounding against autograd through the plain expression, and float64 finite differences."""
    g = torch.Generator().manual_seed(0)
    h = (3 * torch.randn(4, 9, 32, generator=g)).requires_grad_()
    probe = torch.randn(4, 9, 32, generator=g)
    plain = torch.add(F.gelu(h), torch.sin(h), alpha=0.1)
    fused = _GeluPlusSin.apply(h)
    assert torch.equal(fused, plain)
    want, = torch.autograd.grad((plain * probe).sum(), h)
    got, = torch.autograd.grad((fused * probe).sum(), h)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    h64 = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(_GeluPlusSin.apply, (h64,))


def test_tiny_counts_of_the_nine_ablations() -> None:
    counts = {name: count_parameters(build_model("tiny", name)) for name in ABLATIONS}
    assert counts["standard_transformer"] == 235_264
    assert {counts[n] for n in ("wave_baseline", "rgd_only", "full_physics", "qfe_only")} == {277_579}
    assert {counts[n] for n in ("pure_wave", "pure_wave_sigmoid", "pure_wave_exp")} == {285_777}
    assert counts["pure_wave_linear"] == 285_777 - 2 * 4  # no g_h (one per head, 4 heads, 2 layers)


@pytest.mark.parametrize("ablation,overrides,expected", [
    pytest.param("standard_transformer", {}, 52_892_160, id="standard"),
    pytest.param("wave_baseline", {}, 67_473_706, id="v1-interference"),
    pytest.param("pure_wave", {}, 69_833_058, id="v1-pure"),
    pytest.param("wave_baseline", {"embedding": "v2"}, 55_412_025, id="v2-interference"),
])
def test_small_parameter_counts_match_spec(ablation: str, overrides: dict, expected: int) -> None:
    cfg = dataclasses.replace(model_config_for("small", ablation, vocab_size=50257), **overrides)
    assert expected_parameters(cfg) == expected
    with torch.device("meta"):  # shapes only: the count does not need 67 M real floats
        model = build_model_from_config(cfg)
    assert count_parameters(model) == expected


def test_build_model_small_constructs_for_real() -> None:
    torch.manual_seed(0)
    model = build_model("small", "wave_baseline")
    assert count_parameters(model) == 67_473_706
    assert model.embedding.simple_embed.weight.std().item() == pytest.approx(0.02, rel=0.02)


def test_same_seed_same_init_and_other_seed_differs() -> None:
    def init(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model("tiny", "pure_wave").state_dict()

    a, b, c = init(0), init(0), init(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embedding.base_freqs"], c["embedding.base_freqs"])


def test_init_follows_spec() -> None:
    torch.manual_seed(0)
    cfg = tiny(vocab_size=4096, num_waves=16)
    model = build_model_from_config(cfg)
    emb = model.embedding
    assert isinstance(emb, WavePacketEmbedding)
    torch.testing.assert_close(emb.base_freqs.mean(0), torch.linspace(0.5, 5.0, 16), atol=0.01, rtol=0)
    assert (emb.base_freqs - torch.linspace(0.5, 5.0, 16)).std().item() == pytest.approx(0.1, rel=0.05)
    assert emb.phases.min() >= 0 and emb.phases.max() < 2 * math.pi
    assert emb.phases.mean().item() == pytest.approx(math.pi, rel=0.02)
    assert emb.harmonic_amps.std().item() == pytest.approx(0.5 / math.sqrt(4 * 16), rel=0.02)
    assert emb.wave_ratio == pytest.approx(1 / (1 + math.exp(-0.5)))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert torch.count_nonzero(module.bias) == 0
    assert model.blocks[0].ln1.weight.eq(1).all() and model.blocks[0].ln1.bias.eq(0).all()
    pure = build_model("tiny", "pure_wave")
    assert all(b.attn.head_scale.eq(1).all() for b in pure.blocks)


@pytest.mark.parametrize("name", ["standard_transformer", "wave_standard_attention"])
def test_packed_qkv_of_softmax_attention_keeps_xavier_uniform_as_in_multihead_attention(name: str) -> None:
    """Spec 1.6: the original's nn.MultiheadAttention in-projection is not re-initialised, so the
    control's q/k/v start at Xavier-uniform (std sqrt(1/(2d)), 0.036 at d=384), not N(0, 0.02²)."""
    torch.manual_seed(0)
    model = build_model_from_config(dataclasses.replace(VARIANTS[name], d_model=384, num_heads=6))
    bound = math.sqrt(6 / (384 + 3 * 384))
    for block in model.blocks:
        weight = block.attn.qkv.weight
        assert weight.abs().max().item() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
        assert torch.count_nonzero(block.attn.qkv.bias) == 0
        assert block.attn.o_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_v1_embedding_matches_spec_formula_element_by_element() -> None:
    torch.manual_seed(0)
    V, W, K, d, T = 7, 3, 2, 8, 5
    emb = WavePacketEmbedding(tiny(vocab_size=V, d_model=d, num_heads=2, num_waves=W, num_harmonics=K))
    idx = torch.tensor([[3, 0, 6, 3, 1]])
    feats = torch.zeros(1, T, 2 * W * K)
    for p in range(T):
        i = idx[0, p].item()
        for w in range(W):
            for n in range(1, K + 1):
                theta = (2 * math.pi * n * emb.base_freqs[i, w] + emb.phases[i, w]
                         + p * emb.pos_freq[w])
                amp = emb.harmonic_amps[i, w, n - 1]
                feats[0, p, w * K + n - 1] = amp * torch.sin(theta)           # all sines first,
                feats[0, p, W * K + w * K + n - 1] = amp * torch.cos(theta)   # then all cosines
    r = torch.sigmoid(emb.wave_ratio_logit)
    expected = emb.norm(r * emb.wave_proj(feats) + (1 - r) * emb.simple_embed(idx))
    torch.testing.assert_close(emb(idx), expected, atol=1e-5, rtol=1e-5)


def plain_wave_features(freqs, phases, amps, pos_freq):
    """What _WaveFeatures replaces, through autograd (the spec formula above, vectorised)."""
    T, K = freqs.size(1), amps.size(-1)
    positions = torch.arange(T, dtype=freqs.dtype)
    harmonics = torch.arange(1, K + 1, dtype=freqs.dtype)
    theta = (2 * math.pi * harmonics * freqs.unsqueeze(-1) + phases.unsqueeze(-1)
             + (positions[:, None] * pos_freq).unsqueeze(-1))
    return torch.cat([(amps * torch.sin(theta)).flatten(-2), (amps * torch.cos(theta)).flatten(-2)], dim=-1)


def wave_feature_inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 7, 3), (2, 7, 3), (2, 7, 3, 4), (3,)]
    return [torch.randn(s, generator=g, dtype=dtype, requires_grad=True) for s in shapes]


def test_wave_features_gradients_match_autograd_through_the_plain_expression() -> None:
    inputs = wave_feature_inputs(torch.float64)
    assert torch.autograd.gradcheck(wave_features, inputs)
    grad = torch.randn(2, 7, 24, dtype=torch.float64)
    got = torch.autograd.grad(wave_features(*inputs), inputs, grad)
    want = torch.autograd.grad(plain_wave_features(*inputs), inputs, grad)
    for name, g, w in zip(("freqs", "phases", "amps", "pos_freq"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=name)


def test_wave_features_run_fewer_kernels_than_the_plain_expression() -> None:
    inputs = wave_feature_inputs(torch.float32)
    counts = []
    for features in (wave_features, plain_wave_features):
        with _KernelOpCount() as mode:
            torch.autograd.grad(features(*inputs).sum(), inputs)
        counts.append(mode.count)
    assert counts[0] < counts[1], counts


def test_wave_ratio_round_trip_and_effect() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", "wave_baseline").eval()
    x = torch.randint(0, 1024, (2, 10))
    emb = model.embedding
    assert emb.wave_ratio == pytest.approx(0.6225, abs=1e-4)
    before = model(x)[0]
    emb.set_wave_ratio(0.9)
    assert emb.wave_ratio == pytest.approx(0.9, abs=1e-6)
    assert not torch.allclose(model(x)[0], before)
    emb.set_wave_ratio(1.0)
    assert emb.wave_ratio == pytest.approx(0.99, abs=1e-6)
    emb.set_wave_ratio(-3.0)
    assert emb.wave_ratio == pytest.approx(0.01, abs=1e-6)
    assert emb.wave_ratio_logit.requires_grad and emb.wave_ratio_logit.grad is None


def test_attention_temperatures_one_per_interference_layer() -> None:
    model = build_model("tiny", "full_physics")
    assert model.attention_temperatures() == pytest.approx([math.sqrt(TINY.num_waves)] * TINY.num_layers)
    with torch.no_grad():
        model.blocks[1].attn.tau.fill_(1.5)
    assert model.attention_temperatures()[1] == pytest.approx(1.5)
    assert build_model("tiny", "pure_wave_exp").attention_temperatures() == []
    assert build_model("tiny", "standard_transformer").attention_temperatures() == []


@pytest.mark.parametrize("size,ablation,bad", [("tiny", "no_such_ablation", "no_such_ablation"),
                                               ("huge", "wave_baseline", "huge")])
def test_unknown_names_raise_config_error(size: str, ablation: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        build_model(size, ablation)


def test_baseline_alias_and_vocab_override() -> None:
    model = build_model("tiny", "baseline", vocab_size=300)
    assert isinstance(model, WaveGPT) and model.embedding.base_freqs.shape == (300, TINY.num_waves)
    assert model(torch.randint(0, 300, (1, 4)))[0].shape == (1, 4, 300)


CAUSAL_VARIANTS = ["standard_transformer", "wave_baseline", "pure_wave", "pure_wave_linear",
                   "pure_wave_sigmoid", "pure_wave_exp", "wave_standard_attention", "v2_pure_quadratic"]


@pytest.mark.parametrize("name", CAUSAL_VARIANTS)
def test_changing_a_future_token_leaves_earlier_logits_unchanged(name: str) -> None:
    torch.manual_seed(0)
    model = build_model_from_config(VARIANTS[name]).eval()
    x = torch.randint(0, 1024, (2, 24))
    changed = x.clone()
    changed[:, 15] = (x[:, 15] + 1) % 1024
    with torch.no_grad():
        a, b = model(x)[0], model(changed)[0]
    assert torch.equal(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_v2_embedding_has_fixed_spectrum_and_uses_standard_embed_ratio() -> None:
    torch.manual_seed(0)
    model = build_model_from_config(tiny(embedding="v2")).eval()
    emb = model.embedding
    assert isinstance(emb, PhysicsWaveEmbedding)
    params = dict(model.named_parameters())
    assert "embedding.base_freqs" not in params and "embedding.harmonic_amps" not in params
    torch.testing.assert_close(emb.base_freqs[8], torch.full((TINY.num_waves,), 3.0))
    torch.testing.assert_close(emb.harmonic_amps[5, 0], torch.tensor([1, 1 / 2, 1 / 3, 1 / 4]))
    x = torch.randint(0, 1024, (2, 8))
    pure, mixed = model(x)[0], model(x, standard_embed_ratio=0.5)[0]
    assert not torch.allclose(pure, mixed)
    assert torch.equal(pure, model(x, standard_embed_ratio=0.0)[0])


def test_v1_and_standard_ignore_standard_embed_ratio() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 1024, (2, 8))
    for name in ("wave_baseline", "standard_transformer"):
        model = build_model("tiny", name).eval()
        assert torch.equal(model(x)[0], model(x, standard_embed_ratio=0.7)[0])


def test_generate_restores_mode_is_reproducible_and_crops_context() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", "wave_baseline")
    model.train()
    prompt = torch.randint(0, 1024, (2, TINY.block_size + 5))  # longer than the context: must crop
    a = model.generate(prompt, 4, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(3))
    assert model.training
    b = model.generate(prompt, 4, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, TINY.block_size + 9)
    model.eval()
    greedy = model.generate(prompt[:, :6], 3, top_k=1)
    assert not model.training
    expected = prompt[:, :6]
    for _ in range(3):
        nxt = model(expected)[0][:, -1].argmax(-1, keepdim=True)
        expected = torch.cat([expected, nxt], dim=1)
    assert torch.equal(greedy, expected)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"top_k": 0}])
def test_generate_rejects_bad_sampling_settings(kwargs: dict) -> None:
    model = build_model("tiny", "standard_transformer")
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 1, **kwargs)


def test_sequence_longer_than_block_size_is_rejected() -> None:
    model = build_model("tiny", "wave_baseline")
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))


def test_dropout_follows_the_global_rng() -> None:
    model = build_model("tiny", "pure_wave")
    x = torch.randint(0, 1024, (2, 16))

    def loss_with_seed(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return model(x, x)[1]

    assert torch.equal(loss_with_seed(5), loss_with_seed(5))
    assert not torch.equal(loss_with_seed(5), loss_with_seed(6))


def test_attention_module_types_follow_config() -> None:
    assert all(isinstance(b.attn, InterferenceAttention) for b in build_model("tiny", "qfe_only").blocks)
    linear = build_model("tiny", "pure_wave_linear").blocks[0].attn
    assert isinstance(linear, PureWaveAttention) and linear.mode == "linear"
