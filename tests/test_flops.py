"""The analytic FLOP count of spectral_gpt/flops.py against PyTorch's own FlopCounterMode (tier 0).

FlopCounterMode counts exactly the ops the analytic count counts (mm/addmm/bmm and attention kernels,
2 FLOPs per multiply-add) and nothing else, so the two must agree to the FLOP: any difference means
the count no longer follows the model code. SDPA runs on its MATH backend here because the CPU flash
kernel has no FlopCounterMode formula (it would count 0); the MATH path computes the same T x T products.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from spectral_gpt.config import ModelConfig
from spectral_gpt.flops import forward_flops, training_flops_per_token
from spectral_gpt.model import build_model_from_config

KINDS = {
    "standard_gpt": dict(model_type="standard", attention="standard"),
    "wave_interference_v1": dict(),
    "wave_interference_v2": dict(embedding="v2"),
    "wave_pure_quadratic": dict(attention="pure_wave"),
    "wave_pure_linear": dict(attention="pure_wave", pure_wave_mode="linear"),
    "wave_standard_attention": dict(attention="standard"),
}


def _config(**kind) -> ModelConfig:
    return ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_waves=6, num_harmonics=3,
                       block_size=100, **kind)


def _counted(fn) -> int:
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


# T=100 pads linear attention's last 64-token chunk; T=40 makes it a single 40-token chunk.
CASES = [(kind, 100) for kind in KINDS] + [("wave_pure_linear", 40), ("wave_interference_v1", 40)]


@pytest.mark.parametrize("kind, seq_len", CASES)
def test_forward_and_backward_match_flop_counter(kind, seq_len):
    cfg = _config(**KINDS[kind])
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, seq_len))
    out: dict[str, torch.Tensor] = {}

    def forward() -> None:
        out["loss"] = model(idx, idx)[1]

    forward_counted = _counted(forward)
    backward_counted = _counted(lambda: out["loss"].backward())
    analytic = 2 * sum(forward_flops(cfg, seq_len).values())
    assert forward_counted == analytic
    assert backward_counted == 2 * analytic
    assert training_flops_per_token(cfg, seq_len) * seq_len * 2 == forward_counted + backward_counted


def test_standard_gpt_matches_the_6n_plus_attention_rule():
    """Independent check: the usual 6N + 12·L·T·d per token, N = weights of every matrix product."""
    cfg = _config(model_type="standard", attention="standard")
    model = build_model_from_config(cfg)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    T = cfg.block_size
    assert training_flops_per_token(cfg) == 6 * n + 12 * cfg.num_layers * T * cfg.d_model


def test_linear_attention_grows_linearly_and_quadratic_does_not():
    linear = _config(attention="pure_wave", pure_wave_mode="linear")
    quadratic = _config(attention="pure_wave")
    per_token = {name: [forward_flops(c, T)["attention_mixing"] / T for T in (256, 2048)]
                 for name, c in (("linear", linear), ("quadratic", quadratic))}
    assert per_token["linear"][1] == per_token["linear"][0]
    assert per_token["quadratic"][1] == 8 * per_token["quadratic"][0]
