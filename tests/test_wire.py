"""The checkpoint hand-off format: every tensor kind a training state holds survives the trip exactly."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import torch

from orchestrator.snapshot import snapshot
from orchestrator.wire import from_wire, to_wire
from spectral_gpt.config import TrainConfig, get_ablation, model_config_for
from spectral_gpt.training import RunSpec, TrainState


def _roundtrip(state):
    buffers = []
    payload = pickle.dumps(to_wire(snapshot(state)), protocol=5, buffer_callback=buffers.append)
    return from_wire(pickle.loads(payload, buffers=buffers)), buffers


def test_every_dtype_shape_and_nesting_comes_back_bit_for_bit():
    state = {
        "f32": torch.randn(3, 5), "bf16": torch.randn(4, 2).to(torch.bfloat16), "i64": torch.arange(7),
        "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "rng": torch.get_rng_state(),
        "transposed": torch.randn(6, 3).t(), "nested": [torch.ones(2), (torch.zeros(1, 1), 3)], "step": 11,
        "name": "x",
    }
    back, buffers = _roundtrip(state)
    # Every tensor went out-of-band, i.e. without pickling its bytes in-line: one buffer per dtype.
    assert len(buffers) == 5
    for key in ("f32", "bf16", "i64", "bool", "scalar", "rng", "transposed"):
        assert back[key].dtype == state[key].dtype and back[key].shape == state[key].shape
        assert torch.equal(back[key], state[key])
        assert back[key].untyped_storage().nbytes() == back[key].nbytes  # saving one writes only its bytes
    assert torch.equal(back["nested"][0], torch.ones(2)) and isinstance(back["nested"][1], tuple)
    assert back["step"] == 11 and back["name"] == "x"


def test_a_real_training_state_restores_identically_through_the_wire():
    spec = RunSpec(model_config_for("tiny", "full_physics", vocab_size=64), get_ablation("full_physics"),
                   TrainConfig(steps=3, batch_size=2))
    state = TrainState(spec)
    back, _ = _roundtrip(state.state_dict())
    other = TrainState(spec)
    other.load_state_dict(back)
    assert other.state_dict().keys() == state.state_dict().keys()
    for a, b in zip(state.model.parameters(), other.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_module_state_dict_keeps_its_type_and_the_versions_load_state_dict_reads():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    back, _ = _roundtrip({"model": model.state_dict(), "plain": {"w": torch.ones(1)}})
    assert type(back["model"]) is OrderedDict and type(back["plain"]) is dict
    assert back["model"]._metadata == model.state_dict()._metadata
    assert back["model"]._metadata["1"]["version"] == 2  # BatchNorm's, which its loader migrates by
    model.load_state_dict(back["model"])
