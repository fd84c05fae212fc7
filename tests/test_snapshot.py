"""Rank 0's checkpoint snapshot: the state of one moment, in reused CPU buffers, on every device here."""

from __future__ import annotations

import pytest
import torch
from test_device_parity import DEVICES

from orchestrator import snapshot as snapshot_module
from orchestrator.snapshot import CopiesLanded, snapshot, tensors_of


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
    copy = snapshot(state).state
    landed = CopiesLanded(state)
    state["model"]["w"].mul_(-1.0).add_(7.0)  # the next optimiser step, queued right behind the copy
    state["model"]["b"].zero_()
    landed.synchronize()
    assert all(t.device.type == "cpu" for t in (copy["model"]["w"], copy["optimizer"]["state"][0]["exp_avg"]))
    assert torch.equal(copy["model"]["w"], expected["w"]) and torch.equal(copy["model"]["b"], expected["b"])
    assert copy["step"] == 3 and copy["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert copy["model"]["w"].is_pinned() == (device == "cuda")  # pinned: asynchronous copies from a GPU


@pytest.mark.parametrize("device", DEVICES)
def test_the_next_snapshot_reuses_the_buffers_of_the_last_unless_a_tensor_changed(device):
    first = snapshot(_state(device))
    CopiesLanded(_state(device)).synchronize()
    pointers = {group: buffer.data_ptr() for group, buffer in first.buffers.items()}
    later_state = _state(device, scale=2.0)
    second = snapshot(later_state, into=first)
    CopiesLanded(later_state).synchronize()
    assert {group: buffer.data_ptr() for group, buffer in second.buffers.items()} == pointers
    assert torch.equal(second.state["model"]["w"], later_state["model"]["w"].cpu())
    later_state["model"]["b"] = torch.zeros(6, device=device)  # another shape: new buffers, the old stay intact
    third = snapshot(later_state, into=second)
    CopiesLanded(later_state).synchronize()
    assert third.state["model"]["b"].shape == (6,) and second.state["model"]["b"].shape == (5,)
    assert torch.equal(second.state["model"]["w"], third.state["model"]["w"])


@pytest.mark.parametrize("device", DEVICES)
def test_each_device_and_dtype_is_gathered_into_one_buffer_in_bounded_pieces(device, monkeypatch):
    monkeypatch.setattr(snapshot_module, "GATHER_BYTES", 4096)  # several gathers, and tensors larger than one
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(40, 30, generator=g).to(device), "t": torch.randn(30, 50, generator=g).to(device).t(),
             "half": torch.randn(300, generator=g).to(device, torch.bfloat16), "ids": torch.arange(9).to(device),
             "scalar": torch.tensor(1.5, device=device), "empty": torch.zeros(0, 3, device=device),
             "cpu_step": torch.tensor(7.0), "rows": [torch.randn(5, 3, generator=g).to(device) for _ in range(40)]}
    snap = snapshot(state)
    CopiesLanded(state).synchronize()
    groups = {(t.device, t.dtype) for t in tensors_of(state)}
    assert set(snap.buffers) == groups  # float32, bfloat16 and int64 on the device, float32 on the CPU
    for source, copy in zip(tensors_of(state), tensors_of(snap.state), strict=True):
        assert copy.device.type == "cpu" and copy.dtype == source.dtype and copy.shape == source.shape
        assert torch.equal(copy, source.cpu())
        assert copy.untyped_storage().data_ptr() == snap.buffers[(source.device, source.dtype)].data_ptr()
    assert sum(b.numel() for b in snap.buffers.values()) == sum(t.numel() for t in tensors_of(state))



def test_preparing_the_sink_puts_the_whole_snapshot_in_the_object_store_once(ray_session, monkeypatch):
    """The first checkpoint's hand-off would fault in the object store's memory; prepare does that once,
    in the background, with the snapshot's own arrays (one per dtype, as a checkpoint travels)."""
    from orchestrator import worker
    from orchestrator.wire import WireTensor

    puts, real_put = [], ray_session.put
    monkeypatch.setattr(worker.ray, "put", lambda value, **kw: puts.append(value) or real_put(value, **kw))
    sink = worker._Sink(actor=None, attempt=1)
    sink.prepare(_state("cpu"))
    sink.handoff.shutdown(wait=True)
    assert len(puts) == 1 and puts[0]["step"] == 3
    wired = [*puts[0]["model"].values(), puts[0]["optimizer"]["state"][0]["exp_avg"]]
    assert all(isinstance(w, WireTensor) for w in wired)
    assert {w.data.nbytes for w in wired} == {sink.buffers.buffers[(torch.device("cpu"), torch.float32)].nbytes}
