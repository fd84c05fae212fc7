"""Rank 0's checkpoint snapshot: the state of one moment, in reused CPU buffers, on every device here."""

from __future__ import annotations

import pytest
import torch
from test_device_parity import DEVICES

from orchestrator.snapshot import CopiesLanded, snapshot


def _state(device: str, scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(4096, 4096, generator=g) * scale  # 64 MB: the copy takes long enough to race
    return {"model": {"w": big.to(device), "b": torch.arange(5.0).to(device)},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": big[:7].clone().to(device)}},
                          "param_groups": [{"lr": 0.1, "params": [0]}]},
            "step": 3}


@pytest.mark.parametrize("device", DEVICES)
def test_snapshot_holds_the_values_of_its_moment_while_training_updates_in_place(device):
    state = _state(device)
    expected = {k: v.cpu().clone() for k, v in state["model"].items()}
    copy = snapshot(state)
    landed = CopiesLanded(state)
    state["model"]["w"].mul_(-1.0).add_(7.0)  # the next optimiser step, queued right behind the copy
    state["model"]["b"].zero_()
    landed.synchronize()
    assert all(t.device.type == "cpu" for t in (copy["model"]["w"], copy["optimizer"]["state"][0]["exp_avg"]))
    assert torch.equal(copy["model"]["w"], expected["w"]) and torch.equal(copy["model"]["b"], expected["b"])
    assert copy["step"] == 3 and copy["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert copy["model"]["w"].is_pinned() == (device == "cuda")  # pinned: asynchronous copies from a GPU


@pytest.mark.parametrize("device", DEVICES)
def test_the_next_snapshot_reuses_the_buffers_of_the_last(device):
    first = snapshot(_state(device))
    CopiesLanded(_state(device)).synchronize()
    pointers = [first["model"]["w"].data_ptr(), first["optimizer"]["state"][0]["exp_avg"].data_ptr()]
    later_state = _state(device, scale=2.0)
    later_state["model"]["b"] = torch.zeros(6, device=device)  # a tensor that changed shape gets a new buffer
    second = snapshot(later_state, into=first)
    CopiesLanded(later_state).synchronize()
    assert [second["model"]["w"].data_ptr(), second["optimizer"]["state"][0]["exp_avg"].data_ptr()] == pointers
    assert torch.equal(second["model"]["w"], later_state["model"]["w"].cpu())
    assert second["model"]["b"].shape == (6,)
